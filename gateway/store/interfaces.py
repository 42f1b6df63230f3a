"""The store layer's contract: one typed interface per concern, and the unit of work.

Business code (relay, rules, reversal, alerts, the end-of-day checks) depends on these
Protocols only; an implementation (gateway/store/sqlite, gateway/store_pg)
owns every statement of its dialect.  Everything returned is a plain value
(gateway/store/model.py dataclasses, tuples of str/int/float): no cursor, no row object.

Writes of every store join the open transaction of the :class:`UnitOfWork` they were
made with; nothing is durable, and nothing queued with ``after_commit`` runs, before
:meth:`UnitOfWork.flush`.  docs/architecture.md, "Store layer", says how a second
implementation plugs in.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from .model import Agreement, Alert, CommitStats, Record, Reversal, StoredMessage

Key = tuple[str, str, str]  #: (origin, biz_type, biz_sn): a record's idempotency key (§6)


class StoreUnavailable(Exception):
    """The store cannot be opened (missing, unreadable, not a journal, or of another
    schema version than this gateway's); the message says which."""


class StoreTooOld(Exception):
    """The stored schema predates what is asked of it (the gateway migrates it when it
    starts)."""


class UnitOfWork(Protocol):
    """One open transaction at a time (group commit: a reactor turn's writes share it),
    a savepoint per message, and the outbox of actions that wait for durability."""

    #: COMMIT timings (wall clock, fsync included).
    commit_stats: CommitStats
    #: Told each COMMIT's seconds after the flush (their writes go to the next commit).
    commit_listeners: list[Callable[[float], None]]

    def begin(self) -> None:
        """Open the transaction now if none is open; :meth:`flush` commits it."""

    def before_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` at the next flush, before the commit (its writes join it)."""

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once everything written so far is durable (the outbox: frames
        are written to sessions only then)."""

    def on_rollback(self, action: Callable[[], None]) -> None:
        """Run ``action`` if the innermost open savepoint is rolled back."""

    def savepoint(self) -> AbstractContextManager[None]:
        """The writes of one message as a unit: if the block raises, they are rolled
        back, the after-commit actions it queued are dropped, its on-rollback actions
        run (newest first) and the exception goes on."""

    @property
    def dirty(self) -> bool:
        """Anything written or queued since the last flush."""

    def flush(self, background: bool = False) -> int:
        """Run the before-commit actions, commit, then run the after-commit actions in
        order; how many after-commit actions ran.  ``background``: a store whose commit
        is a network round trip may commit off the calling thread and run the
        after-commit actions when it is durable (its own docstring says how)."""

    def close(self, flush: Callable[[], object] | None = None) -> None:
        """Flush (through ``flush``: default :meth:`flush`), then release the connection
        (closed even if that flush fails)."""


class MessageStore(Protocol):
    """The evidence log (§9): every message as received and as sent."""

    def log(self, at: float, direction: str, session: str, party: str | None,
            msg_type: str | None, msg_id: str | None, ref_id: str | None,
            envelope: bytes, xml: bytes) -> None: ...

    def by_msg_id(self, msg_id: str | None = None) -> Iterator[StoredMessage]:
        """Messages journaled under ``msg_id`` (None: all), oldest first."""

    def reversal_answers(self, party: str, ref_id: str) -> list[StoredMessage]:
        """The XFER.REVERSE.RSP ``party`` sent naming ``ref_id``, oldest first."""

    def count_reversal_answers(self, party: str, ref_id: str) -> int: ...


class SeenMsgIds(Protocol):
    """Replay defence (gateway/replay.py): MsgIds seen per sender."""

    def remember(self, sender: str, msg_id: str, seen_at: float) -> bool:
        """True if new (and now remembered), False if seen before."""

    def purge(self, older_than: float) -> int:
        """Forget MsgIds seen before ``older_than``; how many."""


class RecordStore(Protocol):
    """Business records: the §6 idempotency index and each request's state."""

    def get(self, key: Key) -> Record | None: ...

    def with_biz_sn(self, biz_sn: str, origins: tuple[str, ...] | None = None,
                    biz_types: tuple[str, ...] = ()) -> list[Record]:
        """Every record with this BizSn of ``origins`` x ``biz_types`` (None: of
        anyone), oldest first."""

    def by_msg(self, receiver: str, origin: str, msg_id: str) -> Record | None:
        """The (newest) record of the request ``origin`` sent as ``msg_id``, relayed to
        ``receiver``."""

    def asked_again(self, key: Key, receiver: str, msg_id: str, now: float) -> None:
        """A repeat of the request of ``key`` went to ``receiver`` as ``msg_id`` (its
        originator's MsgId): its answer is the record's."""

    def by_repeat(self, receiver: str, origin: str, msg_id: str) -> Record | None:
        """The record whose repeat ``origin`` sent as ``msg_id`` was asked again of
        ``receiver``."""

    def open(self, state: str) -> list[Record]:
        """Records in ``state``, one of model.OPEN_STATES (ValueError otherwise)."""

    def of_wallet(self, wallet_id: str, biz_types: tuple[str, ...],
                  states: tuple[str, ...], created_after: float | None = None) -> list[Record]:
        """The wallet's records of ``biz_types`` in ``states`` (journaled after
        ``created_after``, seconds since the epoch, if given)."""

    def of_types(self, biz_types: tuple[str, ...], states: tuple[str, ...]) -> list[Record]:
        """Every record of ``biz_types`` in ``states``, oldest first: a scan of the table
        (the exit report's subscriptions; not on a hot path)."""

    def referring(self, original: Key, biz_type: str | None = None) -> list[Record]:
        """Records naming ``original`` (of ``biz_type``, or any), oldest first."""

    def same_bizsn_between(self, biz_sn: str, biz_types: tuple[str, ...],
                           parties: tuple[str, str], trade_date: str) -> Record | None: ...

    def of_day(self, trade_date: str, parties: tuple[str, str],
               biz_types: tuple[str, ...]) -> list[Record]:
        """The two parties' records their §8 files of that date list, oldest first."""

    def insert(self, rec: Record, now: float) -> None: ...

    def update(self, key: Key, now: float, **changes: object) -> None:
        """Change fields of model.UPDATABLE (None values leave a field as it is)."""


class AgreementStore(Protocol):
    """CTS agreements (§6 CTS.SIGN / CTS.UNSIGN)."""

    def insert(self, agreement: Agreement) -> None: ...

    def end(self, agreement_no: str, end_date: str) -> None: ...

    def settle(self, broker: str, sign_biz_sn: str, status: str,
               agreement_no: str | None) -> None:
        """A PENDING sign becomes ``status`` (ACTIVE with its AgreementNo, or FAILED)."""

    def find(self, *, fund_acct: str | None = None, wallet_id: str | None = None,
             active_only: bool = False) -> list[Agreement]: ...

    def by_no(self, agreement_no: str) -> Agreement | None: ...

    def binds(self, fund_acct: str | None, wallet_id: str | None,
              parties: tuple[str, str]) -> bool:
        """An ACTIVE agreement of the two parties binds account and wallet (B300)."""


class ReversalStore(Protocol):
    """The gateway's durable queue of its own XFER.REVERSE (§6 timeouts)."""

    def queue(self, rev: Reversal) -> None:
        """Queue ``rev`` unless the original already has a reversal."""

    def due(self, now: float) -> list[Reversal]: ...

    def of(self, original: Key) -> Reversal | None: ...

    def by_msg(self, receiver: str, msg_id: str) -> Reversal | None:
        """The reversal whose latest attempt went to ``receiver`` as ``msg_id``."""

    def by_attempt(self, receiver: str, msg_id: str) -> Reversal | None:
        """The reversal one of whose attempts (any, not only the latest) went to
        ``receiver`` as ``msg_id``."""

    def attempted(self, original: Key, receiver: str, msg_id: str, now: float,
                  **changes: object) -> None:
        """An attempt went to ``receiver`` as ``msg_id``: remember it, make it the latest
        (``last_msg_id``) and apply ``changes`` to the queue row."""

    def update(self, original: Key, **changes: object) -> None: ...

    def backlog(self, now: float) -> tuple[int, float]:
        """Queued reversals not yet acknowledged, and the oldest one's age (seconds)."""


class AlertStore(Protocol):
    """Journaled alerts (§10)."""

    def log(self, alert: Alert) -> None: ...

    def all(self) -> list[Alert]: ...

    def counts(self) -> list[tuple[str, int]]:
        """(kind, alerts journaled) for every kind raised so far."""

    def last(self, kind: str, subject: str) -> Alert | None: ...


class SuspensionStore(Protocol):
    """Business suspended with a party (PROTOCOL §11); '*' stands for every party."""

    def all(self) -> list[tuple[str, str, float]]:
        """(party or '*', reason, since) of every suspension, by party."""

    def put(self, party: str, reason: str, since: float) -> None:
        """Suspend ``party`` (a suspension already there takes the new values)."""

    def delete(self, party: str | None = None) -> None:
        """Lift ``party``'s suspension ('*': the every-party one), or every one."""


class MonitoringQueries(Protocol):
    """The day's business as §10 metrics count it."""

    def business_totals(self, trade_date: str,
                        gateway: str) -> list[tuple[str, str, str, int, int]]:
        """(type, direction, state, count, fen) of the records relayed that day."""

    def business_totals_by_pair(self, trade_date: str, gateway: str,
                                ) -> list[tuple[str, str, str, str, str, int, int]]:
        """:meth:`business_totals` split by (From, To)."""

    def transfer_totals(self, trade_date: str) -> list[tuple[str, str, str, int]]:
        """(origin, receiver, FundAcct, fen) of the date's standing transfers."""


class EodQueries(Protocol):
    """The journal side of end-of-day (§8), read beside a running gateway.

    A file is named by (file type, trade date ISO, gateway, file From, file To); the
    records it covers are the final ones of that date between its parties, of the
    business types its TYPE lists (gateway/eod/mapping.py), each as its §8 line
    without Time (mapping.eod_line)."""

    def exists(self) -> bool:
        """The journal exists (no journal yet: the gateway has seen no business);
        :class:`StoreUnavailable` if it cannot be told (a server that cannot be
        reached)."""

    def schema_has_lines(self) -> bool:
        """The store keeps each record's §8 line (False: too old; migrate first)."""

    def optional_lines(self, file_type: str, trade_date: str, gateway: str,
                       from_party: str, to_party: str, limit: int) -> list[tuple[str, int]]:
        """(line, fen) of the records the file may list or omit, at most ``limit``."""

    def owed_lines(self, file_type: str, trade_date: str, gateway: str, from_party: str,
                   to_party: str, batch: int) -> Iterator[list[tuple[str, int]]]:
        """(line, fen) of the records the file must list, streamed in batches."""

    def export_rows(self, file_type: str, trade_date: str, gateway: str,
                    to_party: str) -> Iterator[tuple[object, ...]]:
        """The records of the gateway's file to ``to_party``: one value per field of
        the file's layout (Amount in fen, Time in epoch seconds, absent: None),
        ordered by Time then BizSn."""

    def unfinished(self, file_type: str, trade_date: str, gateway: str,
                   to_party: str) -> int:
        """How many records the file would cover are not final yet (PENDING or
        REVERSING): an export leaves them out."""

    def day_rows(self, file_type: str, trade_date: str, gateway: str, from_party: str,
                 to_party: str, batch: int) -> Iterator[list[tuple[str, str | None, bool]]]:
        """(BizSn, line, owed) of every record the file covers, in any state, streamed
        in batches: the journal side of the exact check's join (owed: the file must
        list it; else it may list it or omit it)."""


class FileWorkspace(Protocol):
    """The exact check's scratch space: a file's records (scanner rows of
    gateway/eod/fileformat.row_fields), then joined with the journal's day."""

    def sink(self, rows: Sequence[Sequence[str]]) -> None: ...

    def total_fen(self) -> int: ...

    def first_duplicate(self) -> tuple[int, str, int] | None:
        """(line, BizSn, first line) of the earliest repeated BizSn, or None."""

    def file_biz_sns(self) -> list[str]: ...

    def join(self, journal: EodQueries, file_type: str, trade_date: str, gateway: str,
             from_party: str, to_party: str,
             ) -> tuple[int, list[tuple[str, int | None, str | None, str | None]], list[str]]:
        """(matched by BizSn, differing rows (BizSn, file seq, file line, journal line),
        BizSns only the file has); the journal's side is read through ``journal``, the
        reader of whichever store keeps it; :class:`StoreTooOld` if the journal keeps no
        lines."""

    def close(self) -> None: ...


class RetentionQueries(Protocol):
    """What PROTOCOL §11 retention (gateway/retention.py) reads and deletes in the
    journal: evidence rows oldest first, and the state of the record each is evidence
    of.  SQLite only (gateway/store/sqlite/retention.py): the month files are local."""

    def messages_after(self, after_id: int, limit: int) -> list[StoredMessage]:
        """Up to ``limit`` evidence rows with an id above ``after_id``, oldest first."""

    def last_message_id(self) -> int:
        """The largest evidence id (0 when there is none)."""

    def delete_messages(self, ids: Sequence[int]) -> int:
        """Remove these evidence rows in the open transaction (copied to a month file
        and committed there first); how many went."""

    def record_settled(self, key: Key) -> tuple[str, float] | None:
        """(state, when it last changed) of the record, None if there is no such one."""

    def record_of_answer(self, receiver: str, origin: str, msg_id: str) -> Key | None:
        """The key of the record whose request ``origin`` sent as ``msg_id`` to
        ``receiver`` (an answer that names its request by RefId only)."""

    def reversal_original(self, receiver: str, reversal_sn: str) -> Key | None:
        """The original that the gateway's reversal ``reversal_sn`` to ``receiver``
        reverses."""

    def close(self) -> None:
        """Release what the queries opened themselves (a reader's own connection)."""


class MonthFile(Protocol):
    """One month file of evidence moved out by retention (``data/archive/YYYYMM``):
    the journal's ``message`` columns and ids (gateway/store/sqlite/monthfiles.py)."""

    def store(self, rows: Sequence[StoredMessage]) -> tuple[int, list[tuple[int, int]]]:
        """Copy ``rows`` in and commit (durable when this returns): (rows newly stored,
        (id, new id) of each row whose id was there with other content)."""

    def close(self) -> None: ...


class Store(Protocol):
    """Everything stored by one gateway (or one simulated party), behind one unit of
    work: the stores' writes share its transaction."""

    @property
    def uow(self) -> UnitOfWork: ...

    @property
    def messages(self) -> MessageStore: ...

    @property
    def seen(self) -> SeenMsgIds: ...

    @property
    def records(self) -> RecordStore: ...

    @property
    def agreements(self) -> AgreementStore: ...

    @property
    def reversals(self) -> ReversalStore: ...

    @property
    def alerts(self) -> AlertStore: ...

    @property
    def monitoring(self) -> MonitoringQueries: ...

    @property
    def suspensions(self) -> SuspensionStore: ...


    @property
    def schema_version(self) -> int: ...

    def close(self) -> None: ...
