"""The durable journal (SQLite, WAL): evidence, replay defence, business records.

Writes of one reactor turn share one transaction: callers queue the actions
that must wait for durability (acknowledgements, relays) with
:meth:`Journal.after_commit`, and the edge calls :meth:`Journal.flush` once
per turn, which commits (fsync with ``synchronous=FULL``) and then runs them.
Nothing leaves the gateway before what it depends on is on disk.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .checkpoint import Checkpointer
from .filemodes import private_database

log = logging.getLogger(__name__)

#: Versioned migrations: index i brings the schema from version i to i+1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE message (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        direction TEXT NOT NULL CHECK (direction IN ('IN', 'OUT')),
        session TEXT NOT NULL,
        party TEXT,
        msg_type TEXT,
        msg_id TEXT,
        ref_id TEXT,
        envelope BLOB NOT NULL,
        xml BLOB NOT NULL
    );
    CREATE INDEX message_msg_id ON message (msg_id);
    CREATE TABLE seen_msg_id (
        sender TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        seen_at REAL NOT NULL,
        PRIMARY KEY (sender, msg_id)
    ) WITHOUT ROWID;
    CREATE INDEX seen_msg_id_at ON seen_msg_id (seen_at);
    CREATE TABLE record (
        origin TEXT NOT NULL,
        biz_type TEXT NOT NULL,
        biz_sn TEXT NOT NULL,
        receiver TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        state TEXT NOT NULL,
        trade_date TEXT NOT NULL,
        amount_fen INTEGER,
        result TEXT,
        response_xml BLOB,
        fund_acct TEXT,
        wallet_id TEXT,
        order_no TEXT,
        product_code TEXT,
        service_end TEXT,
        orig_type TEXT,
        orig_from TEXT,
        orig_biz_sn TEXT,
        bank_sn TEXT,
        sweep_ref TEXT,
        book_date TEXT,
        agreement_no TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (origin, biz_type, biz_sn)
    ) WITHOUT ROWID;
    CREATE INDEX record_msg ON record (receiver, msg_id);
    CREATE INDEX record_state ON record (state);
    CREATE INDEX record_wallet ON record (wallet_id, biz_type);
    CREATE INDEX record_orig ON record (orig_from, orig_type, orig_biz_sn);
    CREATE INDEX record_day ON record (trade_date, receiver);
    CREATE TABLE agreement (
        agreement_no TEXT UNIQUE,
        broker TEXT NOT NULL,
        bank TEXT NOT NULL,
        fund_acct TEXT NOT NULL,
        wallet_id TEXT NOT NULL,
        wallet_level TEXT NOT NULL,
        wallet_kind TEXT NOT NULL,
        status TEXT NOT NULL,
        sign_date TEXT NOT NULL,
        end_date TEXT,
        cust_name TEXT NOT NULL,
        id_type TEXT NOT NULL,
        id_no_sealed TEXT NOT NULL,
        phone_sealed TEXT,
        sign_biz_sn TEXT NOT NULL,
        PRIMARY KEY (broker, sign_biz_sn)
    );
    CREATE INDEX agreement_fund ON agreement (fund_acct, status);
    CREATE INDEX agreement_wallet ON agreement (wallet_id, status);
    CREATE TABLE reversal (
        origin TEXT NOT NULL,
        biz_type TEXT NOT NULL,
        biz_sn TEXT NOT NULL,
        receiver TEXT NOT NULL,
        reversal_sn TEXT NOT NULL,
        amount_fen INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        last_msg_id TEXT,
        result TEXT,
        PRIMARY KEY (origin, biz_type, biz_sn)
    ) WITHOUT ROWID;
    CREATE INDEX reversal_due ON reversal (state, next_at);
    """,
    # 2: records clustered by trade date (an end-of-day check reads one day's records as
    # one range of the table instead of an index probe per record: ~6x faster), the
    # idempotency key (From, Type, BizSn) kept unique by its own index, each record's
    # end-of-day line without Time (PROTOCOL §8, as `gateway eod export` writes it)
    # computed by SQLite on every insert and update, so the day's lines are read, never
    # rebuilt, when a file is reconciled (gateway/eod/fingerprint.py); and the stored
    # answer (~1 KB of XML) moved out of the record row into `response`, so a record
    # (~250 bytes) never spills into overflow pages of the clustered b-tree; the state and
    # original-reference indexes made partial (only open records, only records naming an
    # original: fewer index writes per relayed request).  Frozen SQL.
    """
    CREATE TABLE response (id INTEGER PRIMARY KEY, xml BLOB NOT NULL);
    INSERT INTO response (id, xml)
        SELECT row_number() OVER (ORDER BY origin, biz_type, biz_sn), response_xml
        FROM record WHERE response_xml IS NOT NULL;
    CREATE TABLE record_v2 (
        origin TEXT NOT NULL,
        biz_type TEXT NOT NULL,
        biz_sn TEXT NOT NULL,
        receiver TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        state TEXT NOT NULL,
        trade_date TEXT NOT NULL,
        amount_fen INTEGER,
        result TEXT,
        response_id INTEGER,
        fund_acct TEXT,
        wallet_id TEXT,
        order_no TEXT,
        product_code TEXT,
        service_end TEXT,
        orig_type TEXT,
        orig_from TEXT,
        orig_biz_sn TEXT,
        bank_sn TEXT,
        sweep_ref TEXT,
        book_date TEXT,
        agreement_no TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        eod_line TEXT GENERATED ALWAYS AS (
            'D|' || biz_sn || '|' || CASE
            WHEN biz_type IN ('XFER.IN', 'XFER.OUT', 'XFER.REVERSE') THEN
                CASE biz_type WHEN 'XFER.IN' THEN 'IN' WHEN 'XFER.OUT' THEN 'OUT'
                ELSE 'REV' END
                || '|' || COALESCE(fund_acct, '') || '|' || COALESCE(wallet_id, '')
                || '|' || (amount_fen / 100) || '.' || substr(100 + amount_fen % 100, 2)
                || '|' || CASE state WHEN 'SUCCEEDED' THEN 'S' WHEN 'FAILED' THEN 'F'
                          WHEN 'REVERSED' THEN 'R' ELSE state END
                || '|' || COALESCE(bank_sn, '') || '|' || COALESCE(sweep_ref, '')
            WHEN biz_type IN ('CTS.SIGN', 'CTS.UNSIGN') THEN
                CASE biz_type WHEN 'CTS.SIGN' THEN 'SIGN' ELSE 'UNSIGN' END
                || '|' || COALESCE(fund_acct, '') || '|' || COALESCE(wallet_id, '')
                || '|' || COALESCE(agreement_no, '')
                || '|' || CASE state WHEN 'SUCCEEDED' THEN 'S' WHEN 'FAILED' THEN 'F'
                          WHEN 'REVERSED' THEN 'R' ELSE state END
            WHEN biz_type = 'PAY.ORDER' THEN
                COALESCE(order_no, '') || '|' || COALESCE(wallet_id, '')
                || '|' || (amount_fen / 100) || '.' || substr(100 + amount_fen % 100, 2)
                || '|' || CASE state WHEN 'SUCCEEDED' THEN 'S' WHEN 'FAILED' THEN 'F'
                          WHEN 'REVERSED' THEN 'R' ELSE state END
                || '|' || COALESCE(product_code, '')
            WHEN biz_type = 'OTC.SUBSCRIBE' THEN
                COALESCE(order_no, '') || '|' || COALESCE(wallet_id, '')
                || '|' || (amount_fen / 100) || '.' || substr(100 + amount_fen % 100, 2)
                || '|' || CASE state WHEN 'SUCCEEDED' THEN 'S' WHEN 'FAILED' THEN 'F'
                          WHEN 'REVERSED' THEN 'R' ELSE state END
                || '|' || COALESCE(book_date, '')
            END
        ) STORED,
        PRIMARY KEY (trade_date, origin, biz_type, biz_sn)
    ) WITHOUT ROWID;
    INSERT INTO record_v2 (origin, biz_type, biz_sn, receiver, msg_id, content_hash, state,
        trade_date, amount_fen, result, response_id, fund_acct, wallet_id, order_no,
        product_code, service_end, orig_type, orig_from, orig_biz_sn, bank_sn, sweep_ref,
        book_date, agreement_no, created_at, updated_at)
    SELECT origin, biz_type, biz_sn, receiver, msg_id, content_hash, state,
        trade_date, amount_fen, result, CASE WHEN response_xml IS NOT NULL THEN row_number()
            OVER (PARTITION BY response_xml IS NULL ORDER BY origin, biz_type, biz_sn) END,
        fund_acct, wallet_id, order_no,
        product_code, service_end, orig_type, orig_from, orig_biz_sn, bank_sn, sweep_ref,
        book_date, agreement_no, created_at, updated_at FROM record;
    DROP TABLE record;
    ALTER TABLE record_v2 RENAME TO record;
    CREATE UNIQUE INDEX record_key ON record (origin, biz_type, biz_sn);
    CREATE INDEX record_msg ON record (receiver, msg_id);
    CREATE INDEX record_open ON record (state) WHERE state IN ('PENDING', 'REVERSING');
    CREATE INDEX record_wallet ON record (wallet_id, biz_type);
    CREATE INDEX record_orig ON record (orig_from, orig_type, orig_biz_sn)
        WHERE orig_biz_sn IS NOT NULL;
    """,
    # 3: alerts (PROTOCOL §10): each one journaled with its kind, severity, subject and time.
    """
    CREATE TABLE alert (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        subject TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX message_reversal_answer ON message (ref_id, party)
        WHERE msg_type = 'XFER.REVERSE.RSP';
    ALTER TABLE reversal ADD COLUMN queued_at REAL;
    """,
    # 4: suspensions (PROTOCOL §11): business suspended with a party ('*': every party),
    # why and since when; kept across restarts until an operator resumes.
    """
    CREATE TABLE suspension (
        party TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        since REAL NOT NULL
    ) WITHOUT ROWID;
    """,
)


#: The columns of an evidence row (table ``message``), in order: what the evidence
#: archive files keep too (gateway/evidencearchive.py).
MESSAGE_COLUMNS = ("id", "at", "direction", "session", "party", "msg_type", "msg_id", "ref_id",
                   "envelope", "xml")


@dataclass(frozen=True, slots=True)
class Record:
    """One business request as journaled: the idempotency index of §6."""

    origin: str
    biz_type: str
    biz_sn: str
    receiver: str
    msg_id: str
    content_hash: str
    state: str
    trade_date: str
    amount_fen: int | None = None
    result: str | None = None
    response_xml: bytes | None = None
    fund_acct: str | None = None
    wallet_id: str | None = None
    order_no: str | None = None
    product_code: str | None = None
    service_end: str | None = None
    orig_type: str | None = None
    orig_from: str | None = None
    orig_biz_sn: str | None = None
    bank_sn: str | None = None
    sweep_ref: str | None = None
    book_date: str | None = None
    agreement_no: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.origin, self.biz_type, self.biz_sn)


@dataclass(frozen=True, slots=True)
class Agreement:
    """A CTS agreement binding a fund account to a wallet (§6 CTS.SIGN)."""

    agreement_no: str | None
    broker: str
    bank: str
    fund_acct: str
    wallet_id: str
    wallet_level: str
    wallet_kind: str
    status: str
    sign_date: str
    end_date: str | None
    cust_name: str
    id_type: str
    id_no_sealed: str
    phone_sealed: str | None
    sign_biz_sn: str


@dataclass(frozen=True, slots=True)
class Reversal:
    """A queued gateway-originated XFER.REVERSE (§6 timeouts)."""

    origin: str
    biz_type: str
    biz_sn: str
    receiver: str
    reversal_sn: str
    amount_fen: int
    state: str
    attempts: int
    next_at: float
    last_msg_id: str | None
    result: str | None
    #: when it was queued (schema 3; NULL for rows queued before)
    queued_at: float | None = None


_RECORD_COLUMNS = ", ".join(f.name for f in fields(Record))
#: The stored answer lives in table ``response`` (schema v2); read back in place.
_RECORD_SELECT = _RECORD_COLUMNS.replace(
    "response_xml", "(SELECT xml FROM response WHERE id = record.response_id)", 1)
_INSERT_FIELDS = tuple("response_id" if f.name == "response_xml" else f.name
                       for f in fields(Record))
_AGREEMENT_COLUMNS = ", ".join(f.name for f in fields(Agreement))
_REVERSAL_COLUMNS = ", ".join(f.name for f in fields(Reversal))
_RECORD_FIELDS = tuple(f.name for f in fields(Record))
_AGREEMENT_FIELDS = tuple(f.name for f in fields(Agreement))
_REVERSAL_FIELDS = tuple(f.name for f in fields(Reversal))
_INSERT_RECORD = (f"INSERT INTO record ({', '.join(_INSERT_FIELDS)}, created_at, updated_at)"
                  f" VALUES ({','.join('?' * (len(_RECORD_FIELDS) + 2))})")


def _values(row: object, names: tuple[str, ...]) -> tuple[object, ...]:
    """A flat dataclass as a tuple (``astuple`` deep-copies every field: slow)."""
    return tuple(getattr(row, name) for name in names)


_RESPONSE_AT = _RECORD_FIELDS.index("response_xml")
_OPEN_STATES = ("PENDING", "REVERSING")

_UPDATABLE = frozenset({"state", "result", "response_xml", "bank_sn", "sweep_ref", "book_date",
                        "agreement_no"})


#: A commit slower than this is logged: every answer of its turn waited for it.
SLOW_COMMIT_SECONDS = 0.2


@dataclass
class CommitStats:
    """How long this journal's COMMITs took (wall clock: the fsync included)."""

    commits: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0
    slow: int = 0  #: commits over the journal's ``slow_commit_seconds``

    def add(self, spent: float, slow_after: float) -> bool:
        """Count one commit; True if it was slow."""
        self.commits += 1
        self.seconds += spent
        self.max_seconds = max(self.max_seconds, spent)
        slow = spent > slow_after
        self.slow += slow
        return slow

    def summary(self) -> str:
        mean = self.seconds / self.commits * 1e3 if self.commits else 0.0
        return (f"{self.commits} commits, mean {mean:.2f} ms, max {self.max_seconds * 1e3:.1f} ms,"
                f" {self.slow} slow")


class Journal:
    """SQLite journal with group commit.  One instance per gateway process."""

    def __init__(self, path: Path, synchronous: str = "FULL",
                 slow_commit_seconds: float = SLOW_COMMIT_SECONDS, *,
                 read_only: bool = False) -> None:
        """``read_only``: for a command beside a running gateway (``journal show``): the
        file must exist and be of the current schema; nothing is written, no checkpoint
        is made (sqlite3.OperationalError / ValueError otherwise)."""
        self.path = path
        if read_only:
            self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                       isolation_level=None, check_same_thread=False)
            if self.schema_version != len(MIGRATIONS):
                raise ValueError(f"{path} has schema version {self.schema_version}, this "
                                 f"gateway reads {len(MIGRATIONS)}")
        else:
            private_database(path)  # 0600 in a 0700 data/ (§9); SQLite's -wal/-shm follow it
            self._db = sqlite3.connect(str(path), isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        # no 12 ms stall in a commit
        self._checkpointer = None if read_only else Checkpointer(self._db, path)
        self._in_tx = False
        self._before: list[Callable[[], None]] = []
        self._after: list[Callable[[], None]] = []
        self._undo: list[Callable[[], None]] = []
        self._savepoints = 0
        self.commit_stats = CommitStats()
        self._slow_commit = slow_commit_seconds
        #: Told each COMMIT's wall-clock seconds, after the flush (alerts: journal_slow).
        self.commit_listeners: list[Callable[[float], None]] = []

    # --- schema ---------------------------------------------------------------
    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, len(MIGRATIONS)):
            self._db.execute("BEGIN IMMEDIATE")
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={number + 1}")
            self._db.execute("COMMIT")
            log.info("journal %s migrated to schema version %d", self.path, number + 1)

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # --- transactions ---------------------------------------------------------
    def _write(self, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        if not self._in_tx:
            self.begin()
        return self._db.execute(sql, args)

    @property
    def connection(self) -> sqlite3.Connection:
        """The journal's own connection, for tables of the same process that must be
        committed with the journal (a simulated party's books): they write inside the
        journal's transaction (:meth:`begin`), and :meth:`flush` commits them with it."""
        return self._db

    def begin(self) -> None:
        """Open the group transaction now, if none is open; :meth:`flush` commits it."""
        if not self._in_tx:
            self._db.execute("BEGIN")
            self._in_tx = True

    def before_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` at the next flush, before the commit (its writes join it)."""
        self._before.append(action)

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once everything written so far is durable."""
        self._after.append(action)

    def on_rollback(self, action: Callable[[], None]) -> None:
        """Run ``action`` if the innermost open :meth:`savepoint` is rolled back (to undo
        what was queued in memory beside the writes: a frame in a session's outbox)."""
        if self._savepoints:
            self._undo.append(action)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """The journal writes of one message, as one unit: if the block raises, every
        write it made is rolled back, the after-commit actions it queued are dropped and
        its :meth:`on_rollback` actions run (newest first); the exception goes on."""
        self.begin()
        self._savepoints += 1
        name = f"msg{self._savepoints}"
        self._db.execute(f"SAVEPOINT {name}")
        marks = (len(self._after), len(self._undo))
        try:
            yield
        except BaseException:
            self._db.execute(f"ROLLBACK TO {name}")
            self._db.execute(f"RELEASE {name}")
            undo = self._undo[marks[1]:]
            del self._after[marks[0]:], self._undo[marks[1]:]
            for action in reversed(undo):
                action()
            raise
        else:
            self._db.execute(f"RELEASE {name}")
        finally:
            self._savepoints -= 1
            if not self._savepoints:
                self._undo.clear()

    @property
    def dirty(self) -> bool:
        return self._in_tx or bool(self._after) or bool(self._before)

    def flush(self) -> int:
        """Run the before-commit actions, commit the open transaction, then run the
        queued after-commit actions, in order."""
        while self._before:
            actions, self._before = self._before, []
            for action in actions:
                action()
        spent = None
        if self._in_tx:
            started = time.perf_counter()
            self._db.execute("COMMIT")
            spent = time.perf_counter() - started
            self._in_tx = False
            if self.commit_stats.add(spent, self._slow_commit):
                log.warning("journal commit took %.0f ms; the turn's answers waited for it"
                            " (a slow disk flush?)", spent * 1e3)
        actions, self._after = self._after, []
        for action in actions:
            action()
        if spent is not None:
            for listener in self.commit_listeners:  # their writes go to the next commit
                listener(spent)
        return len(actions)

    def close(self) -> None:
        """Commit, stop the checkpoint thread and close the file.  If that last commit
        fails, the file is closed all the same (what it held was never acknowledged:
        SQLite rolls it back) and the error is raised."""
        try:
            self.flush()
        finally:
            if self._checkpointer is not None:
                self._checkpointer.close()
            self._db.close()
            log.info("journal %s closed: %s", self.path.name, self.commit_stats.summary())

    # --- evidence -------------------------------------------------------------
    def log_message(self, at: float, direction: str, session: str, party: str | None,
                    msg_type: str | None, msg_id: str | None, ref_id: str | None,
                    envelope: bytes, xml: bytes) -> None:
        self._write(
            "INSERT INTO message (at, direction, session, party, msg_type, msg_id, ref_id,"
            " envelope, xml) VALUES (?,?,?,?,?,?,?,?,?)",
            (at, direction, session, party, msg_type, msg_id, ref_id, envelope, xml),
        )

    def messages(self, msg_id: str | None = None) -> Iterator[sqlite3.Row]:
        self._db.row_factory = sqlite3.Row
        try:
            sql = "SELECT * FROM message" + (" WHERE msg_id = ?" if msg_id else "") + " ORDER BY id"
            yield from self._db.execute(sql, (msg_id,) if msg_id else ())
        finally:
            self._db.row_factory = None

    def reversal_answer_messages(self, party: str, ref_id: str) -> list[sqlite3.Row]:
        """The XFER.REVERSE.RSP rows ``party`` sent naming ``ref_id``, oldest first (the
        partial index of :meth:`reversal_answers`)."""
        self._db.row_factory = sqlite3.Row
        try:
            return list(self._db.execute(
                "SELECT * FROM message WHERE msg_type='XFER.REVERSE.RSP' AND ref_id=? AND"
                " party=? AND direction='IN' ORDER BY id", (ref_id, party)))
        finally:
            self._db.row_factory = None

    def reversal_answers(self, party: str, ref_id: str) -> int:
        """How many XFER.REVERSE.RSP ``party`` sent naming ``ref_id`` (a partial index
        holds only those rows)."""
        return int(self._db.execute(
            "SELECT count(*) FROM message WHERE msg_type='XFER.REVERSE.RSP' AND ref_id=? AND"
            " party=? AND direction='IN'", (ref_id, party)).fetchone()[0])

    # --- retention (gateway/retention.py, PROTOCOL §11) ---------------------------
    def messages_after(self, after_id: int, limit: int) -> list[tuple[Any, ...]]:
        """Up to ``limit`` evidence rows with an id above ``after_id``, oldest first, every
        column (:data:`MESSAGE_COLUMNS`), as tuples."""
        return list(self._db.execute(
            f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM message WHERE id > ? ORDER BY id"
            " LIMIT ?", (after_id, limit)))

    def last_message_id(self) -> int:
        """The largest evidence id (0 when there is none)."""
        return int(self._db.execute("SELECT coalesce(max(id), 0) FROM message").fetchone()[0])

    def delete_messages(self, ids: list[int]) -> int:
        """Remove these evidence rows (copied to the archive and committed there first)."""
        deleted = 0
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            part = ids[start:start + 500]
            deleted += self._write(f"DELETE FROM message WHERE id IN ({','.join('?' * len(part))})",
                                   tuple(part)).rowcount
        return deleted

    def record_settled(self, key: tuple[str, str, str]) -> tuple[str, float] | None:
        """(state, when it last changed) of the record, None if there is no such record."""
        row = self._db.execute("SELECT state, updated_at FROM record WHERE origin=? AND"
                               " biz_type=? AND biz_sn=?", key).fetchone()
        return (str(row[0]), float(row[1])) if row else None

    def record_of_answer(self, receiver: str, origin: str, msg_id: str,
                         ) -> tuple[str, str, str] | None:
        """The key of the record whose request ``origin`` sent with ``msg_id`` to
        ``receiver`` (an answer that names its request by RefId only)."""
        row = self._db.execute("SELECT origin, biz_type, biz_sn FROM record WHERE receiver=?"
                               " AND msg_id=? AND origin=? LIMIT 1",
                               (receiver, msg_id, origin)).fetchone()
        return (str(row[0]), str(row[1]), str(row[2])) if row else None

    def reversal_original(self, receiver: str, reversal_sn: str) -> tuple[str, str, str] | None:
        """The original the gateway's reversal ``reversal_sn`` to ``receiver`` reverses."""
        row = self._db.execute("SELECT origin, biz_type, biz_sn FROM reversal WHERE"
                               " receiver=? AND reversal_sn=? LIMIT 1",
                               (receiver, reversal_sn)).fetchone()
        return (str(row[0]), str(row[1]), str(row[2])) if row else None

    # --- replay defence (gateway.replay.ReplayStore) --------------------------
    def remember(self, sender: str, msg_id: str, seen_at: float) -> bool:
        cur = self._write(
            "INSERT OR IGNORE INTO seen_msg_id (sender, msg_id, seen_at) VALUES (?,?,?)",
            (sender, msg_id, seen_at),
        )
        return cur.rowcount == 1

    def purge_seen(self, older_than: float) -> int:
        return self._write("DELETE FROM seen_msg_id WHERE seen_at < ?", (older_than,)).rowcount

    # --- business records -----------------------------------------------------
    def _records(self, where: str, args: tuple[object, ...]) -> list[Record]:
        rows = self._db.execute(f"SELECT {_RECORD_SELECT} FROM record WHERE {where}", args)
        return [Record(*r) for r in rows]

    def record(self, origin: str, biz_type: str, biz_sn: str) -> Record | None:
        found = self._records("origin=? AND biz_type=? AND biz_sn=?", (origin, biz_type, biz_sn))
        return found[0] if found else None

    def records_with_biz_sn(self, biz_sn: str, origins: tuple[str, ...] | None = None,
                            biz_types: tuple[str, ...] = ()) -> list[Record]:
        """Every record with this BizSn, oldest first: of ``origins`` and ``biz_types``
        (probes of the unique index), or of anyone (None: a scan of the table)."""
        if origins is None:
            return self._records("biz_sn=? ORDER BY created_at", (biz_sn,))
        o, t = ",".join("?" for _ in origins), ",".join("?" for _ in biz_types)
        return self._records(f"origin IN ({o}) AND biz_type IN ({t}) AND biz_sn=?"
                             " ORDER BY created_at", (*origins, *biz_types, biz_sn))

    def record_by_msg(self, receiver: str, origin: str, msg_id: str) -> Record | None:
        """The record of the request ``origin`` sent with ``msg_id`` and the gateway
        relayed to ``receiver`` (a MsgId is unique per From only)."""
        found = self._records("receiver=? AND msg_id=? AND origin=? ORDER BY created_at DESC",
                              (receiver, msg_id, origin))  # the newest, should a MsgId recur
        return found[0] if found else None

    def open_records(self, state: str) -> list[Record]:
        """Records in PENDING or REVERSING (the partial index ``record_open`` holds them)."""
        if state not in _OPEN_STATES:
            raise ValueError(f"{state} is not an open state")
        return self._records("state IN ('PENDING', 'REVERSING') AND state=?", (state,))

    def records_of_wallet(self, wallet_id: str, biz_types: tuple[str, ...],
                          states: tuple[str, ...],
                          created_after: float | None = None) -> list[Record]:
        """The wallet's records of ``biz_types`` in ``states`` (journaled after
        ``created_after``, seconds since the epoch, if given)."""
        t = ",".join("?" for _ in biz_types)
        s = ",".join("?" for _ in states)
        after = "" if created_after is None else " AND created_at > ?"
        return self._records(f"wallet_id=? AND biz_type IN ({t}) AND state IN ({s}){after}",
                             (wallet_id, *biz_types, *states,
                              *(() if created_after is None else (created_after,))))

    def records_of_types(self, biz_types: tuple[str, ...],
                         states: tuple[str, ...]) -> list[Record]:
        """Every record of ``biz_types`` in ``states``, oldest first: a scan of the table
        (the exit report's subscriptions, gateway/exitreport.py; not on a hot path)."""
        t = ",".join("?" for _ in biz_types)
        s = ",".join("?" for _ in states)
        return self._records(f"biz_type IN ({t}) AND state IN ({s}) ORDER BY created_at",
                             (*biz_types, *states))

    def give_backs(self, original: tuple[str, str, str]) -> list[Record]:
        """Every record naming ``original`` (its reversals, refunds, redemptions), oldest
        first: what the money invariant of §6 sums (gateway/givebacks.py)."""
        return self._records("orig_from=? AND orig_type=? AND orig_biz_sn=? ORDER BY created_at",
                             (original[0], original[1], original[2]))

    def records_referring(self, orig_from: str, orig_type: str, orig_biz_sn: str,
                          biz_type: str) -> list[Record]:
        """Records (refunds, redemptions, reversals) that name an original; oldest first."""
        rows = self._records(
            "orig_from=? AND orig_type=? AND orig_biz_sn=? AND biz_type=?"
            " ORDER BY created_at", (orig_from, orig_type, orig_biz_sn, biz_type))
        return rows

    def same_bizsn_between(self, biz_sn: str, biz_types: tuple[str, ...],
                           parties: tuple[str, str], trade_date: str) -> Record | None:
        """A record of one of ``biz_types`` with this BizSn between the two parties (either
        direction) on that trade date — what one end-of-day file of theirs would list."""
        t = ",".join("?" for _ in biz_types)
        found = self._records(
            f"origin IN (?,?) AND biz_type IN ({t}) AND biz_sn=? AND receiver IN (?,?)"
            " AND trade_date=? LIMIT 1", (*parties, *biz_types, biz_sn, *parties, trade_date))
        return found[0] if found else None

    def records_of_day(self, trade_date: str, parties: tuple[str, str],
                       biz_types: tuple[str, ...]) -> list[Record]:
        """The two parties' records of ``biz_types`` that their §8 files of that trade
        date list, oldest first, in any state: a reversal of a PAY.ORDER or
        OTC.SUBSCRIBE is in none (gateway/eod/mapping.py LISTED_SQL)."""
        from .eod.mapping import LISTED_SQL  # loaded when a day is read, not with the journal

        t = ",".join("?" for _ in biz_types)
        return self._records(
            f"trade_date=? AND biz_type IN ({t}) AND {LISTED_SQL} AND ((origin=? AND receiver=?)"
            " OR (origin=? AND receiver=?)) ORDER BY created_at",
            (trade_date, *biz_types, parties[0], parties[1], parties[1], parties[0]))

    def insert_record(self, rec: Record, now: float) -> None:
        values = [*_values(rec, _RECORD_FIELDS), now, now]
        values[_RESPONSE_AT] = self._store_response(rec.response_xml)
        self._write(_INSERT_RECORD, tuple(values))

    def _store_response(self, xml: bytes | None) -> int | None:
        """Keep an answer in ``response``; its id for ``record.response_id``."""
        if xml is None:
            return None
        return self._write("INSERT INTO response (xml) VALUES (?)", (xml,)).lastrowid

    def update_record(self, key: tuple[str, str, str], now: float, **changes: object) -> None:
        """Change a record's mutable fields (None values leave a field as it is)."""
        bad = set(changes) - _UPDATABLE
        if bad:
            raise ValueError(f"record fields {sorted(bad)} cannot change")
        if "response_xml" in changes:
            changes["response_id"] = self._store_response(changes.pop("response_xml"))  # type: ignore[arg-type]
        sets = ", ".join(f"{k}=COALESCE(?, {k})" for k in changes)
        self._write(f"UPDATE record SET {sets}, updated_at=? WHERE origin=? AND biz_type=?"
                    " AND biz_sn=?", (*changes.values(), now, *key))

    # --- agreements -------------------------------------------------------------
    def insert_agreement(self, agreement: Agreement) -> None:
        marks = ",".join("?" for _ in fields(Agreement))
        self._write(f"INSERT INTO agreement ({_AGREEMENT_COLUMNS}) VALUES ({marks})",
                    _values(agreement, _AGREEMENT_FIELDS))

    def end_agreement(self, agreement_no: str, end_date: str) -> None:
        self._write("UPDATE agreement SET status='ENDED', end_date=? WHERE agreement_no=?",
                    (end_date, agreement_no))

    def settle_agreement(self, broker: str, sign_biz_sn: str, status: str,
                         agreement_no: str | None) -> None:
        """A pending sign becomes ACTIVE (with its AgreementNo) or FAILED."""
        self._write("UPDATE agreement SET status=?, agreement_no=? WHERE broker=? AND"
                    " sign_biz_sn=? AND status='PENDING'",
                    (status, agreement_no, broker, sign_biz_sn))

    def agreements(self, *, fund_acct: str | None = None, wallet_id: str | None = None,
                   active_only: bool = False) -> list[Agreement]:
        """Agreements by fund account and/or wallet; ``active_only`` keeps ACTIVE and
        PENDING (a sign in flight already occupies its account and wallet)."""
        where, args = [], []
        if fund_acct is not None:
            where.append("fund_acct=?")
            args.append(fund_acct)
        if wallet_id is not None:
            where.append("wallet_id=?")
            args.append(wallet_id)
        if active_only:
            where.append("status IN ('ACTIVE', 'PENDING')")
        sql = f"SELECT {_AGREEMENT_COLUMNS} FROM agreement"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [Agreement(*r) for r in self._db.execute(sql + " ORDER BY sign_date", args)]

    def binds(self, fund_acct: str | None, wallet_id: str | None,
              parties: tuple[str, str]) -> bool:
        """An ACTIVE agreement of these two parties (either as broker) binds the fund
        account and the wallet (the §6 B300 rule of every transfer; one indexed probe)."""
        a, b = parties
        return self._db.execute(
            "SELECT 1 FROM agreement WHERE wallet_id=? AND status='ACTIVE' AND fund_acct=?"
            " AND ((broker=? AND bank=?) OR (broker=? AND bank=?)) LIMIT 1",
            (wallet_id, fund_acct, a, b, b, a)).fetchone() is not None

    # --- alerts -------------------------------------------------------------------
    def log_alert(self, at: float, kind: str, severity: str, subject: str, text: str) -> None:
        self._write("INSERT INTO alert (at, kind, severity, subject, text) VALUES (?,?,?,?,?)",
                    (at, kind, severity, subject, text))

    def alerts(self) -> list[tuple[float, str, str, str, str]]:
        rows = self._db.execute("SELECT at, kind, severity, subject, text FROM alert ORDER BY id")
        return [(float(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows]

    def alert_counts(self) -> list[tuple[str, int]]:
        """(kind, alerts journaled) for every kind raised so far (sbdx_alerts_total)."""
        rows = self._db.execute("SELECT kind, count(*) FROM alert GROUP BY kind ORDER BY kind")
        return [(str(kind), int(n)) for kind, n in rows]

    def last_alert(self, kind: str, subject: str) -> tuple[float, str, str] | None:
        """The newest alert of this kind and subject: (at, severity, text)."""
        row = self._db.execute("SELECT at, severity, text FROM alert WHERE kind=? AND"
                               " subject=? ORDER BY id DESC LIMIT 1", (kind, subject)).fetchone()
        return (float(row[0]), str(row[1]), str(row[2])) if row else None

    # --- suspensions (§11) -----------------------------------------------------------
    def suspensions(self) -> list[tuple[str, str, float]]:
        """(party or '*' for every party, reason, since) of every suspension."""
        rows = self._db.execute("SELECT party, reason, since FROM suspension ORDER BY party")
        return [(str(r[0]), str(r[1]), float(r[2])) for r in rows]

    def put_suspension(self, party: str, reason: str, since: float) -> None:
        self._write("INSERT OR REPLACE INTO suspension (party, reason, since) VALUES (?,?,?)",
                    (party, reason, since))

    def delete_suspensions(self, party: str | None = None) -> None:
        """Lift ``party``'s suspension ('*': the every-party one), or every one."""
        if party is None:
            self._write("DELETE FROM suspension", ())
        else:
            self._write("DELETE FROM suspension WHERE party=?", (party,))

    def agreement_by_no(self, agreement_no: str) -> Agreement | None:
        row = self._db.execute(f"SELECT {_AGREEMENT_COLUMNS} FROM agreement WHERE"
                               " agreement_no=?", (agreement_no,)).fetchone()
        return Agreement(*row) if row else None

    # --- monitoring (§10) ----------------------------------------------------------
    def business_totals(self, trade_date: str,
                        gateway: str) -> list[tuple[str, str, str, int, int]]:
        """The day's relayed business: (type, direction, state, count, amount in fen) —
        direction IN/OUT for transfers and their reversals, ``-`` otherwise; records the
        gateway refused itself (receiver = ``gateway``, its PartyId) are left out."""
        rows = self._db.execute(
            "SELECT biz_type, CASE WHEN biz_type IN ('XFER.IN', 'XFER.OUT') THEN"
            " substr(biz_type, 6) WHEN biz_type = 'XFER.REVERSE' AND orig_type IN"
            " ('XFER.IN', 'XFER.OUT') THEN substr(orig_type, 6) ELSE '-' END AS direction,"
            " state, count(*), coalesce(sum(amount_fen), 0) FROM record WHERE trade_date=?"
            " AND receiver != ? GROUP BY 1, 2, 3", (trade_date, gateway))
        return [(str(t), str(d), str(s), int(n), int(a)) for t, d, s, n, a in rows]

    def business_totals_by_pair(self, trade_date: str, gateway: str,
                                ) -> list[tuple[str, str, str, str, str, int, int]]:
        """:meth:`business_totals` split by who sent each request and who received it:
        (type, direction, state, From, To, count, amount in fen) — the day's scale per
        counterparty (§10 ``sbdx_business_*`` with ``party`` and ``counterparty``)."""
        rows = self._db.execute(
            "SELECT biz_type, CASE WHEN biz_type IN ('XFER.IN', 'XFER.OUT') THEN"
            " substr(biz_type, 6) WHEN biz_type = 'XFER.REVERSE' AND orig_type IN"
            " ('XFER.IN', 'XFER.OUT') THEN substr(orig_type, 6) ELSE '-' END AS direction,"
            " state, origin, receiver, count(*), coalesce(sum(amount_fen), 0) FROM record"
            " WHERE trade_date=? AND receiver != ? GROUP BY 1, 2, 3, 4, 5", (trade_date, gateway))
        return [(str(t), str(d), str(s), str(o), str(r), int(n), int(a))
                for t, d, s, o, r, n, a in rows]

    def transfer_totals(self, trade_date: str) -> list[tuple[str, str, str, int]]:
        """The trade date's transfers (XFER.IN and XFER.OUT) answered 0000 and not
        reversed since (one the gateway is still reversing, REVERSING, counts), summed
        by (originator, receiver, FundAcct): what the §10 daily totals start from."""
        rows = self._db.execute(
            "SELECT origin, receiver, coalesce(fund_acct, ''), sum(amount_fen) FROM record"
            " WHERE trade_date=? AND biz_type IN ('XFER.IN', 'XFER.OUT') AND result='0000'"
            " AND state IN ('SUCCEEDED', 'REVERSING') GROUP BY 1, 2, 3", (trade_date,))
        return [(str(o), str(r), str(f), int(a)) for o, r, f, a in rows]

    def reversal_backlog(self, now: float) -> tuple[int, float]:
        """Queued reversals not yet acknowledged, and the age of the oldest (seconds)."""
        count, oldest = self._db.execute(
            "SELECT count(*), min(coalesce(queued_at, next_at)) FROM reversal"
            " WHERE state='QUEUED'").fetchone()
        return int(count), (max(0.0, now - float(oldest)) if oldest is not None else 0.0)

    # --- reversal queue -----------------------------------------------------------
    def queue_reversal(self, rev: Reversal) -> None:
        marks = ",".join("?" for _ in fields(Reversal))
        self._write(f"INSERT OR IGNORE INTO reversal ({_REVERSAL_COLUMNS}) VALUES ({marks})",
                    _values(rev, _REVERSAL_FIELDS))

    def reversals_due(self, now: float) -> list[Reversal]:
        rows = self._db.execute(f"SELECT {_REVERSAL_COLUMNS} FROM reversal WHERE state='QUEUED'"
                                " AND next_at<=? ORDER BY next_at", (now,))
        return [Reversal(*r) for r in rows]

    def reversal_of(self, original: tuple[str, str, str]) -> Reversal | None:
        """The gateway's queued (or done) reversal of ``original``, if it has one."""
        row = self._db.execute(f"SELECT {_REVERSAL_COLUMNS} FROM reversal WHERE origin=? AND"
                               " biz_type=? AND biz_sn=?", original).fetchone()
        return Reversal(*row) if row else None

    def reversal_by_msg(self, receiver: str, msg_id: str) -> Reversal | None:
        row = self._db.execute(f"SELECT {_REVERSAL_COLUMNS} FROM reversal WHERE receiver=?"
                               " AND last_msg_id=?", (receiver, msg_id)).fetchone()
        return Reversal(*row) if row else None

    def update_reversal(self, key: tuple[str, str, str], **changes: object) -> None:
        sets = ", ".join(f"{k}=?" for k in changes)
        self._write(f"UPDATE reversal SET {sets} WHERE origin=? AND biz_type=? AND biz_sn=?",
                    (*changes.values(), *key))
