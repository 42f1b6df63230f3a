"""The month files of PROTOCOL §11 retention: SQLite files ``data/archive/YYYYMM.sqlite3``.

Each holds a table ``message`` with the journal's columns and ids, so a row reads the
same wherever it is, and its indexes by MsgId.  gateway/evidencearchive.py decides
which month a row goes to and logs; this module owns every statement:

- :class:`SqliteMonthFile` (gateway.store.interfaces.MonthFile): the writer the
  retention job keeps open (WAL, ``synchronous=FULL``).  :meth:`SqliteMonthFile.store`
  is idempotent: a row already there with the same id and content is skipped; one with
  the same id and other content is stored under a new id (reported to the caller).
- :func:`messages_by_msg_id`, :func:`reversal_answers`: reads for ``journal show``, on
  a connection of their own (read-only when SQLite allows it).
- :func:`copy_month_file`: a consistent copy for ``gateway archive`` (SQLite's online
  backup API, one read transaction; the copy in rollback-journal mode).

A file that cannot be read raises :class:`gateway.store.interfaces.StoreUnavailable`.
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from ...filemodes import create_private, private_database
from ..interfaces import MonthFile, StoreUnavailable
from ..model import StoredMessage
from .retention import MESSAGE_COLUMNS, message_of

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
_COLUMNS = ", ".join(MESSAGE_COLUMNS)
_INSERT = (f"INSERT OR IGNORE INTO message ({_COLUMNS})"
           f" VALUES ({','.join('?' * len(MESSAGE_COLUMNS))})")
_INSERT_NEW_ID = (f"INSERT INTO message ({', '.join(MESSAGE_COLUMNS[1:])})"
                  f" VALUES ({','.join('?' * (len(MESSAGE_COLUMNS) - 1))})")


def _values(row: StoredMessage) -> tuple[object, ...]:
    return tuple(getattr(row, name) for name in MESSAGE_COLUMNS)


class SqliteMonthFile:
    """One month file opened for writing (created 0600 in a 0700 folder).  Written by
    the retention job's thread, closed by whichever thread ends a pass."""

    def __init__(self, path: Path) -> None:
        self.path = path
        private_database(path)
        self._db = sqlite3.connect(str(path), isolation_level=None, timeout=1.0,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")  # readers (journal show) never block it
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in SCHEMA:
            self._db.execute(statement)

    def store(self, rows: Sequence[StoredMessage]) -> tuple[int, list[tuple[int, int]]]:
        db = self._db
        stored = 0
        renamed: list[tuple[int, int]] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for row in rows:
                values = _values(row)
                if db.execute(_INSERT, values).rowcount:
                    stored += 1
                    continue
                there = db.execute(f"SELECT {_COLUMNS} FROM message WHERE id=?",
                                   (row.id,)).fetchone()
                if message_of(there) != row:
                    new_id = db.execute(_INSERT_NEW_ID, values[1:]).lastrowid
                    renamed.append((row.id, int(new_id or 0)))
                    stored += 1
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return stored, renamed

    def close(self) -> None:
        """Close the file (the last close checkpoints its WAL)."""
        self._db.close()


def _reader(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """A month file opened for reading: read-only when SQLite can (a WAL file whose
    ``-shm`` is gone needs a writable connection to be read at all)."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        db = sqlite3.connect(str(path), timeout=timeout)
    return db


def _select(path: Path, where: str, args: tuple[object, ...]) -> list[StoredMessage]:
    try:
        db = _reader(path)
    except sqlite3.Error as exc:
        raise StoreUnavailable(str(exc)) from exc
    try:
        return [message_of(r) for r in db.execute(
            f"SELECT {_COLUMNS} FROM message WHERE {where} ORDER BY id", args)]
    except sqlite3.DatabaseError as exc:
        raise StoreUnavailable(str(exc)) from exc
    finally:
        db.close()


def messages_by_msg_id(path: Path, msg_id: str) -> list[StoredMessage]:
    """The month file's rows journaled under ``msg_id``, oldest first."""
    return _select(path, "msg_id = ?", (msg_id,))


def reversal_answers(path: Path, party: str, ref_id: str) -> list[StoredMessage]:
    """The month file's XFER.REVERSE.RSP rows ``party`` sent naming ``ref_id``."""
    return _select(path, "msg_type='XFER.REVERSE.RSP' AND ref_id=? AND party=? AND"
                   " direction='IN'", (ref_id, party))


def copy_month_file(src: Path, dst: Path) -> None:
    """A consistent copy of the month file ``src`` (the gateway may be writing it) into
    the new file ``dst`` (created 0600, fsynced): the backup API in one step, one read
    transaction; the copy in rollback-journal mode, one self-contained file.
    :class:`StoreUnavailable` if it fails (run it again)."""
    os.close(create_private(dst))
    try:
        source = _reader(src, timeout=30.0)  # busy waits up to 30 s for a checkpoint
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"copying {src} failed: {exc}") from None
    try:
        target = sqlite3.connect(str(dst), isolation_level=None)
        try:
            source.backup(target)  # pages=-1: all at once, so one snapshot
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"copying {src} failed: {exc}") from None
    finally:
        source.close()
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _conforms(month: SqliteMonthFile) -> MonthFile:
    """mypy holds the month file to the interface (never called)."""
    return month
