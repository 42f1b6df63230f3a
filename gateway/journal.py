"""The durable journal: a facade over the store layer (gateway/store), kept while
callers move to the stores themselves.

:class:`Journal` opens the store ``[journal] url`` names (gateway.store.open_store: a
:class:`gateway.store.sqlite.SqliteStore` for ``sqlite:///…`` or a path, a
:class:`gateway.store_pg.store.PgStore` for ``postgresql://…``) and delegates each of
its historical methods to the store that now owns it (``journal.store.records``,
``.agreements``, ``.reversals``, ``.messages``, ``.seen``, ``.alerts``, ``.monitoring``)
or to the unit of work (``journal.uow``: begin, savepoint, after_commit, flush, …).
New code takes the store (or the one interface it needs), not the journal.
docs/architecture.md, "Store layer".
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from .store import open_store, sqlite_path
from .store.interfaces import Store, UnitOfWork
from .store.model import (
    Agreement,
    Alert,
    CommitStats,
    Record,
    Reversal,
    StoredMessage,
)
from .store.sqlite import MIGRATIONS, SLOW_COMMIT_SECONDS, SqliteStore
from .store.sqlite.retention import MESSAGE_COLUMNS

__all__ = ["MIGRATIONS", "SLOW_COMMIT_SECONDS", "Agreement", "CommitStats", "Journal",
           "MESSAGE_COLUMNS", "Record", "Reversal", "StoredMessage"]



class Journal:
    """The gateway's store behind its historical interface.  One per process.

    ``where``: the SQLite file, or a ``[journal] url`` (``sqlite:///PATH`` relative to
    ``home``, or ``postgresql://…``); ``path`` is the SQLite file (None for PostgreSQL)."""

    def __init__(self, where: Path | str, synchronous: str = "FULL",
                 slow_commit_seconds: float = SLOW_COMMIT_SECONDS, *,
                 read_only: bool = False, home: Path | None = None) -> None:
        self.path: Path | None
        self.store: Store
        if isinstance(where, Path):
            self.path = where
            self.store = SqliteStore(where, synchronous, slow_commit_seconds,
                                     read_only=read_only)
        else:
            self.path = sqlite_path(where, home or Path("."))
            self.store = open_store(where, home or Path("."), synchronous,
                                    slow_commit_seconds, read_only=read_only)
        self.uow: UnitOfWork = self.store.uow

    @property
    def _sqlite(self) -> SqliteStore:
        """The SQLite store (tests of its checkpointer); TypeError for another."""
        if not isinstance(self.store, SqliteStore):
            raise TypeError("this journal is not SQLite")
        return self.store

    # --- unit of work ---------------------------------------------------------------
    @property
    def commit_stats(self) -> CommitStats:
        return self.uow.commit_stats

    @property
    def commit_listeners(self) -> list[Callable[[float], None]]:
        return self.uow.commit_listeners

    @property
    def schema_version(self) -> int:
        return self.store.schema_version

    @property
    def _checkpointer(self) -> Any:
        return self._sqlite.uow.checkpointer

    def begin(self) -> None:
        self.uow.begin()

    def before_commit(self, action: Callable[[], None]) -> None:
        self.uow.before_commit(action)

    def after_commit(self, action: Callable[[], None]) -> None:
        self.uow.after_commit(action)

    def on_rollback(self, action: Callable[[], None]) -> None:
        self.uow.on_rollback(action)

    def savepoint(self) -> AbstractContextManager[None]:
        return self.uow.savepoint()

    @property
    def dirty(self) -> bool:
        return self.uow.dirty

    def flush(self, background: bool = False) -> int:
        """Commit (group commit), then release what waited for it; ``background``: a
        store that can commit off the calling thread may return before the commit is
        durable and release the turn when it is (the PostgreSQL journal)."""
        return self.uow.flush(background)

    def close(self) -> None:
        self.uow.close(self.flush)

    # --- evidence -------------------------------------------------------------------
    def log_message(self, at: float, direction: str, session: str, party: str | None,
                    msg_type: str | None, msg_id: str | None, ref_id: str | None,
                    envelope: bytes, xml: bytes) -> None:
        self.store.messages.log(at, direction, session, party, msg_type, msg_id, ref_id,
                                envelope, xml)

    def messages(self, msg_id: str | None = None) -> Iterator[StoredMessage]:
        return self.store.messages.by_msg_id(msg_id)

    def reversal_answer_messages(self, party: str, ref_id: str) -> list[StoredMessage]:
        return self.store.messages.reversal_answers(party, ref_id)

    def reversal_answers(self, party: str, ref_id: str) -> int:
        return self.store.messages.count_reversal_answers(party, ref_id)

    # --- replay defence ---------------------------------------------------------------
    def remember(self, sender: str, msg_id: str, seen_at: float) -> bool:
        return self.store.seen.remember(sender, msg_id, seen_at)

    def purge_seen(self, older_than: float) -> int:
        return self.store.seen.purge(older_than)

    # --- business records -------------------------------------------------------------
    def read_ahead(self, reads: Sequence[tuple[str, tuple[object, ...]]]) -> None:
        """Tell the store the reads a message is about to make (``(name, args)`` of
        :meth:`record`, :meth:`same_bizsn_between`, :meth:`binds`): a store over the
        network fetches them in one round trip; SQLite reads in process and ignores it."""
        ahead = getattr(self.store, "read_ahead", None)
        if ahead is not None:
            ahead(reads)

    def record(self, origin: str, biz_type: str, biz_sn: str) -> Record | None:
        return self.store.records.get((origin, biz_type, biz_sn))

    def records_with_biz_sn(self, biz_sn: str, origins: tuple[str, ...] | None = None,
                            biz_types: tuple[str, ...] = ()) -> list[Record]:
        return self.store.records.with_biz_sn(biz_sn, origins, biz_types)

    def record_by_msg(self, receiver: str, origin: str, msg_id: str) -> Record | None:
        return self.store.records.by_msg(receiver, origin, msg_id)

    def open_records(self, state: str) -> list[Record]:
        return self.store.records.open(state)

    def records_of_wallet(self, wallet_id: str, biz_types: tuple[str, ...],
                          states: tuple[str, ...],
                          created_after: float | None = None) -> list[Record]:
        return self.store.records.of_wallet(wallet_id, biz_types, states, created_after)

    def records_of_types(self, biz_types: tuple[str, ...],
                         states: tuple[str, ...]) -> list[Record]:
        return self.store.records.of_types(biz_types, states)

    def give_backs(self, original: tuple[str, str, str]) -> list[Record]:
        return self.store.records.referring(original)

    def records_referring(self, orig_from: str, orig_type: str, orig_biz_sn: str,
                          biz_type: str) -> list[Record]:
        return self.store.records.referring((orig_from, orig_type, orig_biz_sn), biz_type)

    def same_bizsn_between(self, biz_sn: str, biz_types: tuple[str, ...],
                           parties: tuple[str, str], trade_date: str) -> Record | None:
        return self.store.records.same_bizsn_between(biz_sn, biz_types, parties, trade_date)

    def records_of_day(self, trade_date: str, parties: tuple[str, str],
                       biz_types: tuple[str, ...]) -> list[Record]:
        return self.store.records.of_day(trade_date, parties, biz_types)

    def insert_record(self, rec: Record, now: float) -> None:
        self.store.records.insert(rec, now)

    def update_record(self, key: tuple[str, str, str], now: float, **changes: object) -> None:
        self.store.records.update(key, now, **changes)

    # --- agreements -------------------------------------------------------------------
    def insert_agreement(self, agreement: Agreement) -> None:
        self.store.agreements.insert(agreement)

    def end_agreement(self, agreement_no: str, end_date: str) -> None:
        self.store.agreements.end(agreement_no, end_date)

    def settle_agreement(self, broker: str, sign_biz_sn: str, status: str,
                         agreement_no: str | None) -> None:
        self.store.agreements.settle(broker, sign_biz_sn, status, agreement_no)

    def agreements(self, *, fund_acct: str | None = None, wallet_id: str | None = None,
                   active_only: bool = False) -> list[Agreement]:
        return self.store.agreements.find(fund_acct=fund_acct, wallet_id=wallet_id,
                                          active_only=active_only)

    def agreement_by_no(self, agreement_no: str) -> Agreement | None:
        return self.store.agreements.by_no(agreement_no)

    def binds(self, fund_acct: str | None, wallet_id: str | None,
              parties: tuple[str, str]) -> bool:
        return self.store.agreements.binds(fund_acct, wallet_id, parties)

    # --- suspensions (§11) -------------------------------------------------------------
    def suspensions(self) -> list[tuple[str, str, float]]:
        """(party or '*' for every party, reason, since) of every suspension."""
        return self.store.suspensions.all()

    def put_suspension(self, party: str, reason: str, since: float) -> None:
        self.store.suspensions.put(party, reason, since)

    def delete_suspensions(self, party: str | None = None) -> None:
        """Lift ``party``'s suspension ('*': the every-party one), or every one."""
        self.store.suspensions.delete(party)

    # --- alerts -----------------------------------------------------------------------
    def log_alert(self, at: float, kind: str, severity: str, subject: str, text: str) -> None:
        self.store.alerts.log(Alert(at, kind, severity, subject, text))

    def alerts(self) -> list[tuple[float, str, str, str, str]]:
        return [(a.at, a.kind, a.severity, a.subject, a.text) for a in self.store.alerts.all()]

    def alert_counts(self) -> list[tuple[str, int]]:
        return self.store.alerts.counts()

    def last_alert(self, kind: str, subject: str) -> tuple[float, str, str] | None:
        alert = self.store.alerts.last(kind, subject)
        return (alert.at, alert.severity, alert.text) if alert else None

    # --- monitoring (§10) ---------------------------------------------------------------
    def business_totals(self, trade_date: str,
                        gateway: str) -> list[tuple[str, str, str, int, int]]:
        return self.store.monitoring.business_totals(trade_date, gateway)

    def business_totals_by_pair(self, trade_date: str, gateway: str,
                                ) -> list[tuple[str, str, str, str, str, int, int]]:
        return self.store.monitoring.business_totals_by_pair(trade_date, gateway)

    def transfer_totals(self, trade_date: str) -> list[tuple[str, str, str, int]]:
        return self.store.monitoring.transfer_totals(trade_date)

    def reversal_backlog(self, now: float) -> tuple[int, float]:
        return self.store.reversals.backlog(now)

    # --- reversal queue ---------------------------------------------------------------
    def queue_reversal(self, rev: Reversal) -> None:
        self.store.reversals.queue(rev)

    def reversals_due(self, now: float) -> list[Reversal]:
        return self.store.reversals.due(now)

    def reversal_of(self, original: tuple[str, str, str]) -> Reversal | None:
        return self.store.reversals.of(original)

    def reversal_by_msg(self, receiver: str, msg_id: str) -> Reversal | None:
        return self.store.reversals.by_msg(receiver, msg_id)

    def update_reversal(self, key: tuple[str, str, str], **changes: object) -> None:
        self.store.reversals.update(key, **changes)
