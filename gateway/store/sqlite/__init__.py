"""The SQLite store: the journal file ``data/journal.sqlite3`` (WAL, group commit).

:class:`SqliteStore` implements gateway.store.interfaces.Store; the SQLite statements
of the gateway are in this package (migrations.py: the schema; uow.py: transactions;
../sqlstores.py: the live stores, shared with PostgreSQL; eod.py: the end-of-day
queries; checkpoint.py: WAL checkpoints off the committing thread; retention.py: §11
retention's reads and deletes; monthfiles.py: retention's month files; backup.py: the
online backup copy; ledger.py: the sims' books).
"""
from __future__ import annotations

from pathlib import Path

from ..interfaces import Store
from ..sqlstores import (
    SqlAgreements,
    SqlAlerts,
    SqlMessages,
    SqlMonitoring,
    SqlRecords,
    SqlReversals,
    SqlSeenMsgIds,
    SqlSuspensions,
)
from .migrations import MIGRATIONS
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
        self.messages = SqlMessages(self.uow)
        self.seen = SqlSeenMsgIds(self.uow)
        self.records = SqlRecords(self.uow)
        self.agreements = SqlAgreements(self.uow)
        self.reversals = SqlReversals(self.uow)
        self.alerts = SqlAlerts(self.uow)
        self.monitoring = SqlMonitoring(self.uow)
        self.suspensions = SqlSuspensions(self.uow)

    @property
    def schema_version(self) -> int:
        return schema_version(self.uow.connection)

    def close(self) -> None:
        self.uow.close()


__all__ = ["MIGRATIONS", "SLOW_COMMIT_SECONDS", "SqliteStore"]


def _conforms(store: SqliteStore) -> Store:
    """mypy holds the SQLite store to the interfaces (never called)."""
    return store
