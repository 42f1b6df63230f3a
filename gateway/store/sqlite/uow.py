"""The SQLite unit of work: one connection, group commit, a savepoint per message.

Writes of one reactor turn share one transaction: callers queue the actions that must
wait for durability (acknowledgements, relays: the outbox) with :meth:`after_commit`,
and the edge calls :meth:`flush` once per turn, which commits (fsync with
``synchronous=FULL``) and then runs them.  Nothing leaves the gateway before what it
depends on is on disk.  The stores of gateway/store/sqlstores.py write through
:meth:`write` (which opens the transaction) and read through :meth:`read`.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..interfaces import StoreUnavailable
from ..model import CommitStats
from .checkpoint import Checkpointer
from .migrations import MIGRATIONS

#: The journal's own logger name (operators filter on it; docs/operations.md).
log = logging.getLogger("gateway.journal")

#: A commit slower than this is logged: every answer of its turn waited for it.
SLOW_COMMIT_SECONDS = 0.2


def open_connection(path: Path, synchronous: str = "FULL", *,
                    read_only: bool = False) -> sqlite3.Connection:
    """The journal's connection (autocommit mode: transactions are explicit), migrated
    to the current schema; ``read_only``: the file must exist and be of the current
    schema (:class:`gateway.store.interfaces.StoreUnavailable` otherwise), nothing is written."""
    from gateway.filemodes import private_database

    if read_only:
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                 isolation_level=None, check_same_thread=False)
            version = schema_version(db)
        except sqlite3.Error as exc:
            raise StoreUnavailable(str(exc)) from exc
        if version != len(MIGRATIONS):
            db.close()
            todo = ("start this gateway once to migrate it" if version < len(MIGRATIONS)
                    else "use the gateway release that wrote it")
            raise StoreUnavailable(f"{path} has schema version {version}, this gateway"
                                   f" reads {len(MIGRATIONS)}: {todo}")
        return db
    private_database(path)  # 0600 in a 0700 data/ (§9); SQLite's -wal/-shm follow it
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA foreign_keys=ON")
    migrate(db, path)
    return db


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations the file lacks, each in its own transaction."""
    for number in range(schema_version(db), len(MIGRATIONS)):
        db.execute("BEGIN IMMEDIATE")
        for statement in MIGRATIONS[number].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version={number + 1}")
        db.execute("COMMIT")
        log.info("journal %s migrated to schema version %d", path, number + 1)


class SqliteUnitOfWork:
    """Group commit over one SQLite connection (gateway.store.interfaces.UnitOfWork)."""

    def __init__(self, db: sqlite3.Connection, path: Path,
                 slow_commit_seconds: float = SLOW_COMMIT_SECONDS, *,
                 checkpoints: bool = True) -> None:
        self.path = path
        self.connection = db
        # no 12 ms stall in a commit
        self.checkpointer = Checkpointer(db, path) if checkpoints else None
        self._in_tx = False
        self._before: list[Callable[[], None]] = []
        self._after: list[Callable[[], None]] = []
        self._undo: list[Callable[[], None]] = []
        self._savepoints = 0
        self.commit_stats = CommitStats()
        self._slow_commit = slow_commit_seconds
        self.commit_listeners: list[Callable[[float], None]] = []
        #: SQL for the id the last ``INSERT INTO response`` drew (gateway/store/sqlstores.py)
        self.last_response_id_sql = "last_insert_rowid()"

    # --- statements (for gateway/store/sqlstores.py) ------------------------
    def write(self, sql: str, args: tuple[object, ...] = ()) -> sqlite3.Cursor:
        if not self._in_tx:
            self.begin()
        return self.connection.execute(sql, args)

    def read(self, sql: str, args: Sequence[object] = ()) -> sqlite3.Cursor:
        return self.connection.execute(sql, tuple(args))

    # --- the unit of work ------------------------------------------------------------
    def begin(self) -> None:
        if not self._in_tx:
            self.connection.execute("BEGIN")
            self._in_tx = True

    def before_commit(self, action: Callable[[], None]) -> None:
        self._before.append(action)

    def after_commit(self, action: Callable[[], None]) -> None:
        self._after.append(action)

    def on_rollback(self, action: Callable[[], None]) -> None:
        if self._savepoints:
            self._undo.append(action)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self.begin()
        self._savepoints += 1
        name = f"msg{self._savepoints}"
        db = self.connection
        db.execute(f"SAVEPOINT {name}")
        marks = (len(self._after), len(self._undo))
        try:
            yield
        except BaseException:
            db.execute(f"ROLLBACK TO {name}")
            db.execute(f"RELEASE {name}")
            undo = self._undo[marks[1]:]
            del self._after[marks[0]:], self._undo[marks[1]:]
            for action in reversed(undo):
                action()
            raise
        else:
            db.execute(f"RELEASE {name}")
        finally:
            self._savepoints -= 1
            if not self._savepoints:
                self._undo.clear()

    @property
    def dirty(self) -> bool:
        return self._in_tx or bool(self._after) or bool(self._before)

    def flush(self, background: bool = False) -> int:
        """(``background`` is ignored: an in-process commit is not a network wait)"""
        while self._before:
            actions, self._before = self._before, []
            for action in actions:
                action()
        spent = None
        if self._in_tx:
            started = time.perf_counter()
            self.connection.execute("COMMIT")
            spent = time.perf_counter() - started
            self._in_tx = False
            if self.commit_stats.add(spent, self._slow_commit):
                log.warning("journal commit took %.0f ms; the turn's answers waited for it"
                            " (a slow disk flush?)", spent * 1e3)
        actions, self._after = self._after, []
        for action in actions:
            action()
        if spent is not None:
            for listener in self.commit_listeners:  # their writes go to the next commit
                listener(spent)
        return len(actions)

    def close(self, flush: Callable[[], object] | None = None) -> None:
        """Commit (through ``flush``, default :meth:`flush`), stop the checkpoint thread
        and close the file.  If that last commit fails, the file is closed all the same
        (what it held was never acknowledged: SQLite rolls it back) and the error is
        raised."""
        try:
            (flush or self.flush)()
        finally:
            if self.checkpointer is not None:
                self.checkpointer.close()
            self.connection.close()
            log.info("journal %s closed: %s", self.path.name, self.commit_stats.summary())
