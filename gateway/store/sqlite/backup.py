"""SQLite's online backup: a consistent copy of a journal taken beside the running
gateway (PROTOCOL §11; ``gateway backup`` and ``gateway archive``).

The whole copy is one read transaction of a read-only connection, so it is the journal
as of one commit, and in WAL mode the gateway goes on committing meanwhile (readers
never block the writer).  The new file is created 0600 and never replaces an existing
one.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ...filemodes import FILE_MODE


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
    sync_dir(dst.parent)
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


def sync_dir(folder: Path) -> None:
    """A new file's name is durable too (its content is: SQLite synced it)."""
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
