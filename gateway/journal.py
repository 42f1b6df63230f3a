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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

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
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (origin, biz_type, biz_sn)
    ) WITHOUT ROWID;
    CREATE INDEX record_msg ON record (receiver, msg_id);
    CREATE INDEX record_state ON record (state);
    """,
)


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
    amount_fen: int | None
    result: str | None
    response_xml: bytes | None


_RECORD_COLUMNS = (
    "origin, biz_type, biz_sn, receiver, msg_id, content_hash, state, trade_date, "
    "amount_fen, result, response_xml"
)


class Journal:
    """SQLite journal with group commit.  One instance per gateway process."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        self._in_tx = False
        self._after: list[Callable[[], None]] = []

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
            self._db.execute("BEGIN")
            self._in_tx = True
        return self._db.execute(sql, args)

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` once everything written so far is durable."""
        self._after.append(action)

    @property
    def dirty(self) -> bool:
        return self._in_tx or bool(self._after)

    def flush(self) -> int:
        """Commit the open transaction, then run the queued actions, in order."""
        if self._in_tx:
            self._db.execute("COMMIT")
            self._in_tx = False
        actions, self._after = self._after, []
        for action in actions:
            action()
        return len(actions)

    def close(self) -> None:
        self.flush()
        self._db.close()

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
    def record(self, origin: str, biz_type: str, biz_sn: str) -> Record | None:
        row = self._db.execute(
            f"SELECT {_RECORD_COLUMNS} FROM record WHERE origin=? AND biz_type=? AND biz_sn=?",
            (origin, biz_type, biz_sn),
        ).fetchone()
        return Record(*row) if row else None

    def record_by_msg(self, receiver: str, msg_id: str) -> Record | None:
        row = self._db.execute(
            f"SELECT {_RECORD_COLUMNS} FROM record WHERE receiver=? AND msg_id=?",
            (receiver, msg_id),
        ).fetchone()
        return Record(*row) if row else None

    def records_in_state(self, *states: str) -> list[Record]:
        marks = ",".join("?" for _ in states)
        rows = self._db.execute(
            f"SELECT {_RECORD_COLUMNS} FROM record WHERE state IN ({marks})", states
        ).fetchall()
        return [Record(*r) for r in rows]

    def insert_record(self, rec: Record, now: float) -> None:
        self._write(
            f"INSERT INTO record ({_RECORD_COLUMNS}, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.origin, rec.biz_type, rec.biz_sn, rec.receiver, rec.msg_id, rec.content_hash,
             rec.state, rec.trade_date, rec.amount_fen, rec.result, rec.response_xml, now, now),
        )

    def update_record(self, origin: str, biz_type: str, biz_sn: str, now: float, *,
                      state: str, result: str | None = None,
                      response_xml: bytes | None = None) -> None:
        self._write(
            "UPDATE record SET state=?, result=COALESCE(?, result),"
            " response_xml=COALESCE(?, response_xml), updated_at=?"
            " WHERE origin=? AND biz_type=? AND biz_sn=?",
            (state, result, response_xml, now, origin, biz_type, biz_sn),
        )
