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


class PgSeenMsgIds(SqlSeenMsgIds):
    """MsgIds seen, with the turn's asked ahead (:meth:`ahead`): one round trip for
    every authenticated frame of a reactor turn, after which remembering one of them
    only queues its insert.  The active gateway is the only writer of the table (§12
    fencing), so nothing but this store changes it between; a purge or the end of the
    turn forgets what was asked."""

    def __init__(self, uow: PgUnitOfWork) -> None:
        super().__init__(uow)
        self._pg = uow
        self._known: dict[tuple[str, str], bool] = {}
        uow.turn_listeners.append(self._known.clear)

    def ahead(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Ask whether each (sender, MsgId) was seen, all in one round trip."""
        pairs = [p for p in dict.fromkeys(pairs) if p not in self._known]
        if not pairs:
            return
        senders, msg_ids = [s for s, _ in pairs], [m for _, m in pairs]
        seen = {(str(s), str(m)) for s, m in self._uow.read(
            "SELECT sender, msg_id FROM seen_msg_id WHERE (sender, msg_id) IN"
            " (SELECT * FROM unnest(?::text[], ?::text[]))", (senders, msg_ids))}
        for pair in pairs:
            self._known[pair] = pair in seen

    def remember(self, sender: str, msg_id: str, seen_at: float) -> bool:
        known = self._known.pop((sender, msg_id), None)
        if known is None:  # not asked ahead, or remembered once already this turn
            return super().remember(sender, msg_id, seen_at)
        if known:
            return False
        self._uow.write("INSERT INTO seen_msg_id (sender, msg_id, seen_at) VALUES (?,?,?)"
                        " ON CONFLICT DO NOTHING", (sender, msg_id, seen_at))
        return True

    def purge(self, older_than: float) -> int:
        self._known.clear()
        return super().purge(older_than)


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
        self.seen = PgSeenMsgIds(self.uow)
        self.records = SqlRecords(self.uow)
        self.agreements = SqlAgreements(self.uow)
        self.reversals = SqlReversals(self.uow)
        self.alerts = SqlAlerts(self.uow)
        self.monitoring = SqlMonitoring(self.uow)
        self.suspensions = SqlSuspensions(self.uow)

    def read_ahead(self, reads: Sequence[tuple[str, tuple[object, ...]]]) -> None:
        """Fetch the store reads named in ``reads`` (``("record", (key,))``,
        ``("same_bizsn", …)``, ``("binds", …)``, ``("seen", (sender, msg_id))``: a store
        method's name
        and arguments) in one round trip; the methods then answer from it."""
        seen = [args for name, args in reads if name == "seen"]
        if seen:
            self.seen.ahead(seen)  # type: ignore[arg-type]
        self.uow.prefetch([_READS[name](*args)  # type: ignore[operator]
                           for name, args in reads if name != "seen"])

    @property
    def schema_version(self) -> int:
        return schema_version(self.uow.connection)

    def close(self) -> None:
        self.uow.close()


def _conforms(store: PgStore) -> Store:
    """mypy holds the PostgreSQL store to the interfaces (never called)."""
    return store
