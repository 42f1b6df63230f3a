"""The PostgreSQL unit of work: one connection, one open transaction per turn, fenced.

The synchronous first step of docs/architecture.md "PostgreSQL store (design)": writes
of a reactor turn are executed at once inside one transaction on the store's own
connection (so the turn's reads see its own uncommitted writes, as with SQLite), a
savepoint per message is a PostgreSQL ``SAVEPOINT``, and :meth:`PgUnitOfWork.flush`
commits — after the fence statement when a lease grant is set (PROTOCOL §12: the
commit is conditional on our lease epoch; :class:`gateway.store_pg.leasedb.Fenced`
otherwise, nothing of the turn written and none of its after-commit actions run).  The
reactor waits for each statement's round trip and for the COMMIT; the non-blocking path
(statements collected as a :data:`gateway.store_pg.committer.Unit` and committed by the
:class:`~gateway.store_pg.committer.TurnCommitter`) is what remains.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from gateway.store.interfaces import StoreUnavailable
from gateway.store.model import CommitStats

from .lease import Grant
from .leasedb import Fenced, fence, is_fenced
from .schema import MIGRATIONS, migrate, schema_version

#: The journal's own logger name (operators filter on it; docs/operations.md).
log = logging.getLogger("gateway.journal")

#: A commit slower than this is logged: every answer of its turn waited for it.
SLOW_COMMIT_SECONDS = 0.2

Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[Any]


def open_connection(url: str, *, read_only: bool = False) -> Connection:
    """A connection to the journal at ``url`` (autocommit: transactions are explicit),
    migrated to the current schema; ``read_only``: it must be of the current schema
    already, nothing is written.  :class:`StoreUnavailable` saying what to do if the
    server cannot be reached or the schema is another release's."""
    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise StoreUnavailable(f"cannot connect to the PostgreSQL journal: {exc}".strip()
                               + " (check [journal] url and that the server runs)") from exc
    try:
        version = migrate(conn) if not read_only else schema_version(conn)
    except ValueError as exc:
        conn.close()
        raise StoreUnavailable(str(exc)) from exc
    if version != len(MIGRATIONS):
        conn.close()
        todo = ("start this gateway once to migrate it" if version < len(MIGRATIONS)
                else "use the gateway release that wrote it")
        raise StoreUnavailable(f"the PostgreSQL journal has schema version {version}, this"
                               f" gateway reads {len(MIGRATIONS)}: {todo}")
    return conn


@functools.lru_cache(maxsize=512)
def _psycopg(sql: str) -> str:
    """The stores' ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgUnitOfWork:
    """Group commit over one PostgreSQL connection (gateway.store.interfaces.UnitOfWork).

    ``grant``: the lease this gateway holds (None: no fence — a single gateway, or a
    tool); every commit is fenced by it."""

    def __init__(self, conn: Connection, slow_commit_seconds: float = SLOW_COMMIT_SECONDS,
                 ) -> None:
        self.connection = conn
        self.grant: Grant | None = None
        self._in_tx = False
        self._before: list[Callable[[], None]] = []
        self._after: list[Callable[[], None]] = []
        self._undo: list[Callable[[], None]] = []
        self._savepoints = 0
        self.commit_stats = CommitStats()
        self._slow_commit = slow_commit_seconds
        self.commit_listeners: list[Callable[[float], None]] = []

    # --- statements (for the stores of this package only) ------------------------
    def write(self, sql: str, args: Sequence[object] = ()) -> Cursor:
        """A statement of the stores (gateway/store/sqlstores.py, ``?`` placeholders)
        in the turn's transaction."""
        if not self._in_tx:
            self.begin()
        return self.connection.execute(_psycopg(sql), tuple(args))

    def read(self, sql: str, args: Sequence[object] = ()) -> Cursor:
        """(inside the turn's transaction if one is open: it sees the turn's writes;
        else autocommitted)"""
        return self.connection.execute(_psycopg(sql), tuple(args))

    def row(self, sql: str, args: Sequence[object] = ()) -> tuple[Any, ...]:
        """The one row an aggregate ``sql`` returns."""
        found = self.read(sql, args).fetchone()
        if found is None:
            raise LookupError(f"no row from {sql}")
        return tuple(found)

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
            db.execute(f"ROLLBACK TO SAVEPOINT {name}")
            db.execute(f"RELEASE SAVEPOINT {name}")
            undo = self._undo[marks[1]:]
            del self._after[marks[0]:], self._undo[marks[1]:]
            for action in reversed(undo):
                action()
            raise
        else:
            db.execute(f"RELEASE SAVEPOINT {name}")
        finally:
            self._savepoints -= 1
            if not self._savepoints:
                self._undo.clear()

    @property
    def dirty(self) -> bool:
        return self._in_tx or bool(self._after) or bool(self._before)

    def flush(self) -> int:
        """As the Protocol says; a fenced commit raises :class:`Fenced` (nothing of the
        turn written, its after-commit actions dropped: step down), any other failed
        commit raises psycopg's error (also dropping them: the edge stops)."""
        while self._before:
            actions, self._before = self._before, []
            for action in actions:
                action()
        spent = None
        if self._in_tx:
            started = time.perf_counter()
            self._commit()
            spent = time.perf_counter() - started
            if self.commit_stats.add(spent, self._slow_commit):
                log.warning("journal commit took %.0f ms; the turn's answers waited for it"
                            " (a slow database?)", spent * 1e3)
        actions, self._after = self._after, []
        for action in actions:
            action()
        if spent is not None:
            for listener in self.commit_listeners:  # their writes go to the next commit
                listener(spent)
        return len(actions)

    def _commit(self) -> None:
        """Fence (when a grant is set), then COMMIT; on any failure roll back and drop
        the outbox — nothing queued reaches a peer unless its commit succeeded."""
        try:
            if self.grant is not None:
                fence(self.connection, self.grant)
            done = self.connection.execute("COMMIT").statusmessage
            if done != "COMMIT":  # an aborted transaction "commits" as ROLLBACK
                raise psycopg.errors.InFailedSqlTransaction(
                    f"the journal transaction was rolled back ({done}): a statement of"
                    " this turn failed outside a savepoint")
        except BaseException as exc:
            self._in_tx = False
            self._after.clear()
            self._rollback_quietly()
            if is_fenced(exc) and self.grant is not None:
                grant = self.grant
                raise Fenced(f"lease {grant.name!r} epoch {grant.epoch} is no longer held"
                             f" by {grant.holder}: nothing of this commit was written"
                             ) from exc
            raise
        self._in_tx = False

    def discard(self) -> None:
        """Drop what this turn wrote and queued, uncommitted (a gateway that lost its
        lease, §12: nothing of it may reach the journal or a peer)."""
        self._before.clear()
        self._after.clear()
        if self._in_tx:
            self._in_tx = False
            self._rollback_quietly()

    def _rollback_quietly(self) -> None:
        try:
            if not self.connection.closed:
                self.connection.execute("ROLLBACK")
        except psycopg.Error:
            log.debug("rollback after a failed commit failed too", exc_info=True)

    def close(self, flush: Callable[[], object] | None = None) -> None:
        """Commit (through ``flush``, default :meth:`flush`) and close the connection,
        even if that last commit fails (what it held was never acknowledged)."""
        try:
            (flush or self.flush)()
        finally:
            self.connection.close()
            log.info("PostgreSQL journal closed: %s", self.commit_stats.summary())
