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

The journal is the SQLite file ``[journal] url`` names; a PostgreSQL journal is backed
up with PostgreSQL's own tools (:data:`POSTGRESQL_REFUSAL`, exit 1).
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

#: The journal of a home by default (PROTOCOL §9: data in ``DIR/data``).
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


#: ``backup`` of a gateway whose ``[journal] url`` is PostgreSQL (exit 1).
POSTGRESQL_REFUSAL = (
    "the journal is in PostgreSQL ([journal] url): back it up with PostgreSQL's own tools"
    " — pg_dump for a consistent copy, base backups (pg_basebackup) with WAL archiving"
    " for point-in-time recovery (docs/operations.md \"Backup and restore\")")


def journal_file(home: Path) -> Path:
    """The SQLite journal ``[journal] url`` names; BackupError (saying what to do
    instead) for a PostgreSQL one or a gateway.toml that does not load."""
    from .config import ConfigError, load
    from .store import sqlite_path

    try:
        path = sqlite_path(load(home).journal_url, home)
    except ConfigError as exc:
        raise BackupError(f"{exc} (fix gateway.toml)") from None
    if path is None:
        raise BackupError(POSTGRESQL_REFUSAL)
    return path


def backup_command(home: Path, out: Path) -> int:
    """``gateway backup --out FILE``: exit 0 written, 1 not (one line on stderr)."""
    import sys

    try:
        info = backup(journal_file(home), out)
    except BackupError as exc:
        print(f"gateway backup: {exc}", file=sys.stderr)
        return 1
    print(f"{out}: the journal as of {_iso(info.taken_at)} ({info.records} records, {info.messages} messages, schema {info.schema}, "
          f"{info.bytes} bytes); restored, it starts with every party suspended until "
          "`gateway resume` (docs/operations.md \"Backup and restore\")")
    return 0
