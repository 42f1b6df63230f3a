""":class:`PgStore`: every store of the shared PostgreSQL journal over one connection
and one unit of work (gateway.store.interfaces.Store)."""
from __future__ import annotations

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

    @property
    def schema_version(self) -> int:
        return schema_version(self.uow.connection)

    def close(self) -> None:
        self.uow.close()


def _conforms(store: PgStore) -> Store:
    """mypy holds the PostgreSQL store to the interfaces (never called)."""
    return store
