"""The store layer: everything the gateway keeps durably, behind typed interfaces.

``interfaces`` (one Protocol per concern, and the unit of work), ``model`` (the plain
dataclasses every store returns) and one package per implementation (``sqlite``).
Nothing outside this package imports a database driver or writes SQL.
"""
from __future__ import annotations

from pathlib import Path

from .interfaces import EodQueries, FileWorkspace, StoreTooOld, StoreUnavailable
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
           "StoredMessage", "eod_reader", "file_workspace"]


def eod_reader(journal: Path) -> EodQueries:
    """The end-of-day reader of the journal at ``journal`` (read-only)."""
    from .sqlite.eod import SqliteEodReader

    return SqliteEodReader(journal)


def file_workspace(file_type: str) -> FileWorkspace:
    """A scratch workspace for the exact check of one file of ``file_type``."""
    from .sqlite.eod import SqliteFileWorkspace

    return SqliteFileWorkspace(file_type)
