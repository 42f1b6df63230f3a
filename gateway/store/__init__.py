"""The store layer: everything the gateway keeps durably, behind typed interfaces.

``interfaces`` (one Protocol per concern, and the unit of work), ``model`` (the plain
dataclasses every store returns) and one package per implementation (``sqlite``, and
the sibling ``gateway.store_pg`` for PostgreSQL); :func:`open_store` picks one by
``[journal] url``.  Nothing outside these packages imports a database driver or writes
SQL.
"""
from __future__ import annotations

from pathlib import Path

from .interfaces import EodQueries, FileWorkspace, Store, StoreTooOld, StoreUnavailable
from .model import (
    OPEN_STATES,
    UPDATABLE,
    Agreement,
    Alert,
    CommitStats,
    DayLine,
    Record,
    Reversal,
    StoredMessage,
)

__all__ = ["OPEN_STATES", "UPDATABLE", "Agreement", "Alert", "CommitStats", "DayLine",
           "EodQueries", "FileWorkspace", "Record", "Reversal", "StoreTooOld",
           "StoreUnavailable",
           "StoredMessage", "eod_reader", "file_workspace", "open_store", "sqlite_path"]

#: The journal when ``[journal] url`` is not set (relative to the gateway's home).
DEFAULT_URL = "sqlite:///data/journal.sqlite3"
_SQLITE = "sqlite:///"
_POSTGRES = ("postgresql://", "postgres://")


def check_url(url: str) -> None:
    """ValueError, saying which forms there are, unless ``url`` names a journal this
    gateway can open."""
    if url.startswith(_SQLITE) and len(url) > len(_SQLITE):
        return
    if url.startswith(_POSTGRES):
        return
    raise ValueError(f"[journal] url {url!r} is neither sqlite:///PATH (relative to the"
                     " gateway's home unless it starts with /, e.g. sqlite:///data/"
                     "journal.sqlite3) nor postgresql://…")


def sqlite_path(url: str, home: Path) -> Path | None:
    """The SQLite file ``url`` names (``sqlite:///data/j.sqlite3`` is ``home/data/…``,
    ``sqlite:////var/j.sqlite3`` is absolute); None for another store."""
    check_url(url)
    if not url.startswith(_SQLITE):
        return None
    return home / url[len(_SQLITE):]


def open_store(url: str, home: Path, synchronous: str = "FULL",
               slow_commit_seconds: float | None = None, *, read_only: bool = False) -> Store:
    """The store ``url`` names: SQLite for ``sqlite:///PATH`` (relative to ``home``),
    PostgreSQL for ``postgresql://…`` (``synchronous`` is SQLite's only).
    :class:`StoreUnavailable` saying what to do if it cannot be opened."""
    path = sqlite_path(url, home)
    if path is not None:
        from .sqlite import SLOW_COMMIT_SECONDS, SqliteStore

        slow = SLOW_COMMIT_SECONDS if slow_commit_seconds is None else slow_commit_seconds
        return SqliteStore(path, synchronous, slow, read_only=read_only)
    from gateway.store_pg.store import PgStore
    from gateway.store_pg.uow import SLOW_COMMIT_SECONDS as PG_SLOW

    return PgStore(url, PG_SLOW if slow_commit_seconds is None else slow_commit_seconds,
                   read_only=read_only)


def eod_reader(journal: Path | str) -> EodQueries:
    """The end-of-day reader of the journal at ``journal`` (read-only): a SQLite file,
    or a ``postgresql://…`` url."""
    if isinstance(journal, str):
        if not journal.startswith(_POSTGRES):
            raise ValueError(f"{journal!r} is not a postgresql:// url")
        from gateway.store_pg.eod import PgEodReader

        return PgEodReader(journal)
    from .sqlite.eod import SqliteEodReader

    return SqliteEodReader(journal)


def file_workspace(file_type: str) -> FileWorkspace:
    """A scratch workspace for the exact check of one file of ``file_type``."""
    from .sqlite.eod import SqliteFileWorkspace

    return SqliteFileWorkspace(file_type)
