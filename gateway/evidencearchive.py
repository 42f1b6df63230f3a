"""Message evidence moved out of the journal (PROTOCOL §11 ``[journal] retention_days``).

One SQLite file per month, ``data/archive/YYYYMM.sqlite3`` (0600 in a 0700 folder), the
month of each message's own time in Asia/Shanghai (the trade calendar's zone).  Each
holds a table ``message`` with the journal's columns and ids, so a row reads the same
wherever it is (``journal show`` looks in both), and its indexes by MsgId.

:meth:`EvidenceArchive.store` is idempotent: a row already there with the same id and
the same content is a copy left by a move that was interrupted after the archive's
commit and before the journal's (gateway/retention.py), and is not stored twice.  A row
with that id and other content (a journal restored from an older backup reuses ids) is
stored under a new id, with a warning: evidence is never dropped.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path

from .bookdate import CHINA
from .filemodes import private_database
from .journal import MESSAGE_COLUMNS

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS message (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        direction TEXT NOT NULL,
        session TEXT NOT NULL,
        party TEXT,
        msg_type TEXT,
        msg_id TEXT,
        ref_id TEXT,
        envelope BLOB NOT NULL,
        xml BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS message_msg_id ON message (msg_id)",
    "CREATE INDEX IF NOT EXISTS message_reversal_answer ON message (ref_id, party)"
    " WHERE msg_type = 'XFER.REVERSE.RSP'",
)
_MONTH_FILE = re.compile(r"(\d{6})\.sqlite3\Z")
_INSERT = (f"INSERT OR IGNORE INTO message ({', '.join(MESSAGE_COLUMNS)})"
           f" VALUES ({','.join('?' * len(MESSAGE_COLUMNS))})")
_INSERT_NEW_ID = (f"INSERT INTO message ({', '.join(MESSAGE_COLUMNS[1:])})"
                  f" VALUES ({','.join('?' * (len(MESSAGE_COLUMNS) - 1))})")

Row = Sequence[object]


def month_of(at: float) -> str:
    """``YYYYMM`` of a message's time, in Asia/Shanghai."""
    return dt.datetime.fromtimestamp(at, CHINA).strftime("%Y%m")


class EvidenceArchive:
    """The month files under ``folder`` (``HOME/data/archive``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._open: dict[str, sqlite3.Connection] = {}

    def path(self, month: str) -> Path:
        return self.folder / f"{month}.sqlite3"

    def months(self) -> list[str]:
        """The months that have a file, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(m.group(1) for p in self.folder.iterdir()
                      if (m := _MONTH_FILE.match(p.name)))

    # --- writing (the gateway) ---------------------------------------------------
    def _writer(self, month: str) -> sqlite3.Connection:
        db = self._open.get(month)
        if db is None:
            path = self.path(month)
            private_database(path)  # 0600 in a 0700 folder
            # written by the retention's job thread, closed by whichever thread ends a pass
            db = sqlite3.connect(str(path), isolation_level=None, timeout=1.0,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")  # readers (journal show) never block it
            db.execute("PRAGMA synchronous=FULL")
            for statement in SCHEMA:
                db.execute(statement)
            self._open[month] = db
        return db

    def store(self, month: str, rows: Iterable[Row]) -> int:
        """Copy ``rows`` (journal evidence rows, every column) into the month's file and
        commit (durable when this returns); the number of rows newly stored."""
        db = self._writer(month)
        stored = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for row in rows:
                if db.execute(_INSERT, tuple(row)).rowcount:
                    stored += 1
                    continue
                there = db.execute(f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM message"
                                   " WHERE id=?", (row[0],)).fetchone()
                if tuple(there) != tuple(row):
                    new_id = db.execute(_INSERT_NEW_ID, tuple(row[1:])).lastrowid
                    log.warning("evidence id %s is already in %s with other content (a "
                                "journal restored from a backup?); stored as id %s there",
                                row[0], self.path(month).name, new_id)
                    stored += 1
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return stored

    def close(self) -> None:
        """Close the files opened for writing (each last close checkpoints its WAL)."""
        for db in self._open.values():
            db.close()
        self._open.clear()

    # --- reading (journal show) --------------------------------------------------
    def _select(self, where: str, args: tuple[object, ...]) -> list[sqlite3.Row]:
        found: list[sqlite3.Row] = []
        for month in self.months():
            try:
                db = _reader(self.path(month))
            except sqlite3.Error as exc:
                log.warning("evidence archive %s unreadable: %s", self.path(month), exc)
                continue
            try:
                found += db.execute(f"SELECT *, ? AS archive FROM message WHERE {where}"
                                    " ORDER BY id", (month, *args)).fetchall()
            except sqlite3.DatabaseError as exc:
                log.warning("evidence archive %s unreadable: %s", self.path(month), exc)
            finally:
                db.close()
        return found

    def messages(self, msg_id: str) -> list[sqlite3.Row]:
        """Archived rows journaled under ``msg_id`` (each with column ``archive``: its
        month), oldest first."""
        return self._select("msg_id = ?", (msg_id,))

    def reversal_answer_messages(self, party: str, ref_id: str) -> list[sqlite3.Row]:
        """Archived XFER.REVERSE.RSP rows ``party`` sent naming ``ref_id``."""
        return self._select("msg_type='XFER.REVERSE.RSP' AND ref_id=? AND party=? AND"
                            " direction='IN'", (ref_id, party))


def _reader(path: Path) -> sqlite3.Connection:
    """A month file opened for reading: read-only when SQLite can (a WAL file whose
    ``-shm`` is gone needs a writable connection to be read at all)."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        db = sqlite3.connect(str(path), timeout=5.0)
    db.row_factory = sqlite3.Row
    return db
