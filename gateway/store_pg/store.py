""":class:`PgStore`: every store of the shared PostgreSQL journal over one connection
and one unit of work (gateway.store.interfaces.Store)."""
from __future__ import annotations

from collections.abc import Sequence

from gateway.store.interfaces import Store

from ..store.sqlstores import (
    SqlAgreements,
    SqlAlerts,
    SqlMessages,
    SqlMonitoring,
    SqlRecords,
    SqlReversals,
    SqlSeenMsgIds,
    SqlSuspensions,
)
from .schema import schema_version
from .uow import SLOW_COMMIT_SECONDS, PgUnitOfWork, open_connection

#: What :meth:`PgStore.read_ahead` can be asked: the query of each store read by name.
_READS = {"record": SqlRecords.get_query, "same_bizsn": SqlRecords.same_bizsn_query,
          "binds": SqlAgreements.binds_query}


class PgStore:
    """The journal in the PostgreSQL database at ``url`` (migrated when opened, unless
    ``read_only``: then it must be of the current schema).  Its commits are fenced once
    ``uow.grant`` names the lease this gateway holds (PROTOCOL §12)."""

    def __init__(self, url: str, slow_commit_seconds: float = SLOW_COMMIT_SECONDS, *,
                 read_only: bool = False) -> None:
        self.url = url
        self.uow = PgUnitOfWork(open_connection(url, read_only=read_only),
                                slow_commit_seconds)
        self.messages = SqlMessages(self.uow)
        self.seen = SqlSeenMsgIds(self.uow)
        self.records = SqlRecords(self.uow)
        self.agreements = SqlAgreements(self.uow)
        self.reversals = SqlReversals(self.uow)
        self.alerts = SqlAlerts(self.uow)
        self.monitoring = SqlMonitoring(self.uow)
        self.suspensions = SqlSuspensions(self.uow)

    def read_ahead(self, reads: Sequence[tuple[str, tuple[object, ...]]]) -> None:
        """Fetch the store reads named in ``reads`` (``("record", (key,))``,
        ``("same_bizsn", …)``, ``("binds", …)``: a store method's name
        and arguments) in one round trip; the methods then answer from it."""
        self.uow.prefetch([_READS[name](*args) for name, args in reads])  # type: ignore[operator]

    @property
    def schema_version(self) -> int:
        return schema_version(self.uow.connection)

    def close(self) -> None:
        self.uow.close()


def _conforms(store: PgStore) -> Store:
    """mypy holds the PostgreSQL store to the interfaces (never called)."""
    return store
