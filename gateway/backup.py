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
from pathlib import Path

from .bookdate import CHINA
from .journal import MIGRATIONS
from .store.sqlite import SqliteStore
from .store.sqlite.backup import BackupError, CopyInfo, copy_journal, sync_dir
from .suspension import EVERY

__all__ = ["BackupError", "CopyInfo", "backup", "backup_command", "copy_journal"]

#: The journal of a home (PROTOCOL §9: data in ``DIR/data``).
JOURNAL = Path("data") / "journal.sqlite3"


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
        copy = SqliteStore(dst)
        try:
            copy.suspensions.put(EVERY, restored_reason(info.taken_at), info.taken_at)
            copy.uow.flush()
        finally:
            copy.close()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dst)
        raise
    sync_dir(dst.parent)
    return info


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
