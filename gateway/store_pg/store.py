""":class:`PgStore`: every store of the shared PostgreSQL journal over one connection
and one unit of work (gateway.store.interfaces.Store)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gateway.store.interfaces import Store
from gateway.store.model import Agreement, Record

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
from .uow import SLOW_COMMIT_SECONDS, Connection, PgUnitOfWork, open_connection

Key = tuple[str, str, str]


class PgSeenMsgIds(SqlSeenMsgIds):
    """MsgIds seen, with the turn's asked ahead (:meth:`PgStore.read_ahead`): after
    that one round trip, remembering one of them only queues its insert.  The active
    gateway is the only writer of the table (§12 fencing), so nothing but this store
    changes it between; a purge or the end of the turn forgets what was asked."""

    def __init__(self, uow: PgUnitOfWork) -> None:
        super().__init__(uow)
        self.known: dict[tuple[str, str], bool] = {}
        uow.turn_listeners.append(self.known.clear)

    QUERY = ("SELECT sender, msg_id FROM seen_msg_id WHERE (sender, msg_id) IN"
             " (SELECT * FROM unnest(?::text[], ?::text[]))")

    def learn(self, pairs: Sequence[tuple[str, str]], rows: Sequence[Any]) -> None:
        seen = {(str(s), str(m)) for s, m in rows}
        for pair in pairs:
            self.known[pair] = pair in seen

    def remember(self, sender: str, msg_id: str, seen_at: float) -> bool:
        known = self.known.pop((sender, msg_id), None)
        if known is None:  # not asked ahead, or remembered once already this turn
            return super().remember(sender, msg_id, seen_at)
        if known:
            return False
        self._uow.write("INSERT INTO seen_msg_id (sender, msg_id, seen_at) VALUES (?,?,?)"
                        " ON CONFLICT DO NOTHING", (sender, msg_id, seen_at))
        return True

    def purge(self, older_than: float) -> int:
        self.known.clear()
        return super().purge(older_than)


class PgRecords(SqlRecords):
    """Records, with a request's reads asked ahead (:meth:`PgStore.read_ahead`): the
    record under a key and the same-BizSn probe of §6 are answered from what was read
    until a write could change the answer — an insert or update of that key, an insert
    of that BizSn — or the turn ends."""

    def __init__(self, uow: PgUnitOfWork) -> None:
        super().__init__(uow)
        self.got: dict[Key, Record | None] = {}
        self.same: dict[tuple[Any, ...], Record | None] = {}
        uow.turn_listeners += [self.got.clear, self.same.clear]

    def get(self, key: Key) -> Record | None:
        if key in self.got:
            return self.got[key]
        return super().get(key)

    def same_bizsn_between(self, biz_sn: str, biz_types: tuple[str, ...],
                           parties: tuple[str, str], trade_date: str) -> Record | None:
        args = (biz_sn, biz_types, parties, trade_date)
        if args in self.same:
            return self.same[args]
        return super().same_bizsn_between(*args)

    def insert(self, rec: Record, now: float) -> None:
        self.got.pop((rec.origin, rec.biz_type, rec.biz_sn), None)
        for args in [a for a in self.same if a[0] == rec.biz_sn]:
            del self.same[args]
        super().insert(rec, now)

    def update(self, key: Key, now: float, **changes: object) -> None:
        self.got.pop(tuple(key), None)  # type: ignore[arg-type]
        super().update(key, now, **changes)


class PgAgreements(SqlAgreements):
    """Agreements, with a transfer's binding probe asked ahead (forgotten at any
    agreement write and at the end of the turn)."""

    def __init__(self, uow: PgUnitOfWork) -> None:
        super().__init__(uow)
        self.bound: dict[tuple[Any, ...], bool] = {}
        uow.turn_listeners.append(self.bound.clear)

    def binds(self, fund_acct: str | None, wallet_id: str | None,
              parties: tuple[str, str]) -> bool:
        args = (fund_acct, wallet_id, parties)
        if args in self.bound:
            return self.bound[args]
        return super().binds(*args)

    def insert(self, agreement: Agreement) -> None:
        self.bound.clear()
        super().insert(agreement)

    def end(self, agreement_no: str, end_date: str) -> None:
        self.bound.clear()
        super().end(agreement_no, end_date)

    def settle(self, broker: str, sign_biz_sn: str, status: str,
               agreement_no: str | None) -> None:
        self.bound.clear()
        super().settle(broker, sign_biz_sn, status, agreement_no)


class PgStore:
    """The journal in the PostgreSQL database at ``url`` (migrated when opened, unless
    ``read_only``: then it must be of the current schema).  Its commits are fenced once
    ``uow.grant`` names the lease this gateway holds (PROTOCOL §12)."""

    def __init__(self, url: str, slow_commit_seconds: float = SLOW_COMMIT_SECONDS, *,
                 read_only: bool = False) -> None:
        self.url = url
        self.uow = PgUnitOfWork(open_connection(url, read_only=read_only),
                                slow_commit_seconds)
        #: Applied to every connection of the journal after the first (the edge adds its
        #: timeouts and tag to the first itself, and here for the next ones).
        self.setup: list[Callable[[Connection], None]] = []
        self.uow.reopen = self._reopen
        self.messages = SqlMessages(self.uow)
        self.seen = PgSeenMsgIds(self.uow)
        self.records = PgRecords(self.uow)
        self.agreements = PgAgreements(self.uow)
        self.reversals = SqlReversals(self.uow)
        self.alerts = SqlAlerts(self.uow)
        self.monitoring = SqlMonitoring(self.uow)
        self.suspensions = SqlSuspensions(self.uow)

    def read_ahead(self, reads: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        """Fetch, in one round trip, the reads named in ``reads`` that are not known
        yet this turn — ``("seen", (sender, msg_id))``, ``("record", (key,))``,
        ``("same_bizsn", (biz_sn, types, parties, day))``, ``("binds", (fund, wallet,
        parties))`` — so that the store methods answer them without one."""
        self.uow.release_committed()  # the turn's start: the last turn's frames go first
        seen = list(dict.fromkeys(
            a for n, a in reads if n == "seen" and a not in self.seen.known))
        todo = list(dict.fromkeys(
            (n, a) for n, a in reads if n != "seen" and not self._known(n, a)))
        queries: list[tuple[str, tuple[object, ...]]] = []
        if seen:
            queries.append((PgSeenMsgIds.QUERY, ([s for s, _ in seen], [m for _, m in seen])))
        for name, args in todo:
            if name == "record":
                queries.append(SqlRecords.get_query(args[0]))
            elif name == "same_bizsn":
                queries.append(SqlRecords.same_bizsn_query(*args))
            else:
                queries.append(SqlAgreements.binds_query(*args))
        answers = iter(self.uow.read_many(queries))
        if seen:
            self.seen.learn(seen, next(answers))
        for (name, args), rows in zip(todo, answers, strict=True):
            if name == "record":
                self.records.got[args[0]] = Record(*rows[0]) if rows else None
            elif name == "same_bizsn":
                self.records.same[args] = Record(*rows[0]) if rows else None
            else:
                self.agreements.bound[args] = bool(rows)

    def _known(self, name: str, args: tuple[Any, ...]) -> bool:
        if name == "record":
            return args[0] in self.records.got
        if name == "same_bizsn":
            return args in self.records.same
        if name == "binds":
            return args in self.agreements.bound
        raise ValueError(f"{name} cannot be read ahead")

    def _reopen(self) -> Connection:
        conn = open_connection(self.url)
        for configure in self.setup:
            configure(conn)
        return conn

    @property
    def schema_version(self) -> int:
        return schema_version(self.uow.connection)

    def close(self) -> None:
        self.uow.close()


def _conforms(store: PgStore) -> Store:
    """mypy holds the PostgreSQL store to the interfaces (never called)."""
    return store
