"""The SQLite store: the journal file ``data/journal.sqlite3`` (WAL, group commit).

:class:`SqliteStore` implements gateway.store.interfaces.Store; every SQL statement of
the gateway is in this package (migrations.py: the schema; uow.py: transactions;
stores.py: the live stores; eod.py: the end-of-day queries; checkpoint.py: WAL
checkpoints off the committing thread).
"""
from __future__ import annotations

from pathlib import Path

from ..interfaces import Store
from .migrations import MIGRATIONS
from .stores import (
    SqliteAgreements,
    SqliteAlerts,
    SqliteMessages,
    SqliteMonitoring,
    SqliteRecords,
    SqliteReversals,
    SqliteSeenMsgIds,
    SqliteSuspensions,
)
from .uow import SLOW_COMMIT_SECONDS, SqliteUnitOfWork, open_connection, schema_version


class SqliteStore:
    """Every store of one journal file over one connection and one unit of work.

    ``read_only``: for a command beside a running gateway (``journal show``): the file
    must exist and be of the current schema; nothing is written, no checkpoint is made
    (gateway.store.interfaces.StoreUnavailable otherwise)."""

    def __init__(self, path: Path, synchronous: str = "FULL",
                 slow_commit_seconds: float = SLOW_COMMIT_SECONDS, *,
                 read_only: bool = False) -> None:
        self.path = path
        db = open_connection(path, synchronous, read_only=read_only)
        self.uow = SqliteUnitOfWork(db, path, slow_commit_seconds, checkpoints=not read_only)
        self.messages = SqliteMessages(self.uow)
        self.seen = SqliteSeenMsgIds(self.uow)
        self.records = SqliteRecords(self.uow)
        self.agreements = SqliteAgreements(self.uow)
        self.reversals = SqliteReversals(self.uow)
        self.alerts = SqliteAlerts(self.uow)
        self.monitoring = SqliteMonitoring(self.uow)
        self.suspensions = SqliteSuspensions(self.uow)

    @property
    def schema_version(self) -> int:
        return schema_version(self.uow.connection)

    def close(self) -> None:
        self.uow.close()


__all__ = ["MIGRATIONS", "SLOW_COMMIT_SECONDS", "SqliteStore"]


def _conforms(store: SqliteStore) -> Store:
    """mypy holds the SQLite store to the interfaces (never called)."""
    return store
