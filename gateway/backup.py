"""PROTOCOL §11 ``gateway backup --out FILE``: the journal alone, copied while it serves.

:func:`copy_journal` takes a consistent copy of a SQLite journal with SQLite's online
backup API, from a process of its own beside the running gateway: the whole copy is one
read transaction of a read-only connection, so it is the journal as of one commit, and
in WAL mode the gateway goes on committing meanwhile (readers never block the writer).
The new file is created 0600 and never replaces an existing one.  ``gateway archive``
reuses it.

:func:`backup` adds what makes a backup safe to restore: the copy gets an every-party
suspension (``restored from backup taken at <time>``) written into the file itself, so
a gateway started on it refuses new business (B340) until an operator resumes — peers
may be ahead of it (§11; docs/operations.md "Backup and restore").
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .bookdate import CHINA
from .filemodes import FILE_MODE
from .journal import MIGRATIONS
from .suspension import EVERY

#: The journal of a home (PROTOCOL §9: data in ``DIR/data``).
JOURNAL = Path("data") / "journal.sqlite3"


class BackupError(Exception):
    """Why no copy was made, in one line that says what to do."""


@dataclass(frozen=True, slots=True)
class CopyInfo:
    """What a copy holds."""

    path: Path
    schema: int
    records: int
    messages: int
    taken_at: float
    bytes: int


def copy_journal(src: Path, dst: Path, clock: float | None = None) -> CopyInfo:
    """Copy the journal ``src`` (possibly in use by a running gateway) into the new file
    ``dst``, created 0600; BackupError if ``dst`` exists, ``src`` is no journal, or the
    copy fails (then nothing is left at ``dst``).  ``clock``: the time to report as
    taken (default: now)."""
    if not src.is_file():
        raise BackupError(f"no journal at {src}: give the gateway's home (--home DIR)")
    try:  # reserve the name: never overwrite, never follow a link planted there
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        raise BackupError(f"{dst} exists: choose a new file name (a backup never "
                          "replaces a file)") from None
    except OSError as exc:
        raise BackupError(f"cannot create {dst}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        info = _copy(src, dst, clock)
    except BaseException:
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{dst}{suffix}")
        raise
    _sync_dir(dst.parent)
    return info


def _copy(src: Path, dst: Path, clock: float | None) -> CopyInfo:
    try:
        source = sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True,
                                 isolation_level=None)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open {src}: {exc}") from None
    try:
        target = sqlite3.connect(str(dst), isolation_level=None)
        try:
            taken_at = time.time() if clock is None else clock
            source.backup(target)  # pages=-1: all in one step, one read transaction
            target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            schema = int(target.execute("PRAGMA user_version").fetchone()[0])
            tables = {r[0] for r in target.execute(
                "SELECT name FROM sqlite_schema WHERE type='table'")}
            if not {"record", "message"} <= tables:
                raise BackupError(f"{src} is not a gateway journal (no record and "
                                  "message tables)")
            check = target.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"the copy of {src} fails SQLite's check: {check}")
            records = int(target.execute("SELECT count(*) FROM record").fetchone()[0])
            messages = int(target.execute("SELECT count(*) FROM message").fetchone()[0])
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise BackupError(f"copying {src} failed: {exc} (a journal left by a crash is "
                          "recovered by the next `gateway serve`: start it, then back up "
                          "again)") from None
    finally:
        source.close()
    return CopyInfo(dst, schema, records, messages, taken_at, os.path.getsize(dst))


def _iso(at: float) -> str:
    return dt.datetime.fromtimestamp(at, CHINA).isoformat(timespec="seconds")


def restored_reason(taken_at: float) -> str:
    """The reason of the every-party suspension a backup carries."""
    return f"restored from backup taken at {_iso(taken_at)}"


def backup(src: Path, dst: Path, clock: float | None = None) -> CopyInfo:
    """:func:`copy_journal`, then the copy is suspended for every party (written into
    the copy, not the journal): a gateway started on it refuses new business until an
    operator resumes (§11)."""
    info = copy_journal(src, dst, clock)
    try:
        if info.schema != len(MIGRATIONS):
            raise BackupError(f"{src} has schema version {info.schema}, this gateway "
                              f"writes {len(MIGRATIONS)}: back it up with the gateway "
                              "version that serves it")
        db = sqlite3.connect(str(dst), isolation_level=None)
        try:
            db.execute("INSERT OR REPLACE INTO suspension (party, reason, since) "
                       "VALUES (?,?,?)", (EVERY, restored_reason(info.taken_at),
                                          info.taken_at))
        finally:
            db.close()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dst)
        raise
    _sync_dir(dst.parent)
    return info


def _sync_dir(folder: Path) -> None:
    """The new file's name is durable too (its content is: SQLite synced it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def backup_command(home: Path, out: Path) -> int:
    """``gateway backup --out FILE``: exit 0 written, 1 not (one line on stderr)."""
    import sys

    try:
        info = backup(home / JOURNAL, out)
    except BackupError as exc:
        print(f"gateway backup: {exc}", file=sys.stderr)
        return 1
    print(f"{out}: the journal as of {_iso(info.taken_at)} ({info.records} records, {info.messages} messages, schema {info.schema}, "
          f"{info.bytes} bytes); restored, it starts with every party suspended until "
          "`gateway resume` (docs/operations.md \"Backup and restore\")")
    return 0
