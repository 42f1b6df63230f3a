"""The PostgreSQL unit of work: one connection, one transaction per turn, fenced.

docs/architecture.md "The store as built": writes are queued and sent, pipelined, with
the next statement that needs an answer (so the turn's reads see the turn's writes); a
message's savepoint reaches the server only with the first of its writes that must be
sent; a request's reads can be fetched ahead in one round trip (:meth:`read_many`); the
end-of-turn COMMIT — after the fence statement when a lease grant is set (PROTOCOL §12:
the commit is conditional on our lease epoch; :class:`gateway.store_pg.leasedb.Fenced`
otherwise, nothing of the turn written and none of its after-commit actions run) — can
run off the reactor thread (``flush(background=True)``), the turn's after-commit
actions waiting until it is durable.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg.pq import TransactionStatus

from gateway.store.interfaces import StoreUnavailable
from gateway.store.model import CommitStats

from .lease import Grant
from .leasedb import Fenced, is_fenced
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


class Pending:
    """A write of the turn not yet sent: queued until a statement whose result is needed
    (a read, or this write's own rowcount / rows) sends everything queued before it in
    one pipelined round trip (:meth:`PgUnitOfWork.sync`)."""

    __slots__ = ("sql", "args", "cursor", "batch", "_uow")

    def __init__(self, uow: PgUnitOfWork, sql: str, args: tuple[object, ...],
                 batch: bool = False) -> None:
        self.sql, self.args, self._uow = sql, args, uow
        self.batch = batch  # a write: it may go in one executemany with its like
        self.cursor: Cursor | None = None

    def _sent(self) -> Cursor:
        if self.cursor is None:
            self._uow.sync()
        if self.cursor is None:
            raise psycopg.errors.InFailedSqlTransaction(
                f"the statement {self.sql!r} was dropped with its savepoint")
        return self.cursor

    @property
    def rowcount(self) -> int:
        return self._sent().rowcount

    def fetchall(self) -> list[Any]:
        return self._sent().fetchall()

    def fetchone(self) -> Any:
        return self._sent().fetchone()


@dataclass(slots=True)
class _Commit:
    """A turn's commit sent by the commit thread: its statements, its after-commit
    actions, and (once ``finished``) how it went."""

    statements: list[Pending]
    after: list[Callable[[], None]]
    finished: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    spent: float | None = None


class Background(Protocol):
    """Where a background commit runs (the edge gives a thread of its own): ``submit``
    runs ``work`` off the calling thread, then ``finished`` in the calling thread;
    ``done`` is what the unit of work asks of the edge once a commit is durable —
    flush again (gateway.server: the turn's flush path, which settles it)."""

    def submit(self, work: Callable[[], None], finished: Callable[[], None]) -> None: ...

    def done(self) -> None: ...


#: The evidence log's insert: rows no statement of the turn depends on, so those of a
#: round trip go together as one ``executemany`` (psycopg's cost per row drops ~4×).
_EVIDENCE = "INSERT INTO message "
#: Statements a write is never moved across (the transaction's and savepoints' own).
_CONTROL = ("BEGIN", "COMMIT", "SAVEPOINT ", "ROLLBACK", "RELEASE ", "SELECT sbdx_fence")


def _groups(queue: Sequence[Pending]) -> list[list[Pending]]:
    """``queue`` in order, as groups sent one statement or one ``executemany`` each:
    consecutive writes of one statement together, and every evidence insert between
    two control statements (savepoints, the fence, COMMIT) with the first of them."""
    groups: list[list[Pending]] = []
    evidence: list[Pending] | None = None
    for pending in queue:
        if pending.sql.startswith(_CONTROL):
            evidence = None
        elif pending.batch and pending.sql.startswith(_EVIDENCE):
            if evidence is not None and evidence[0].sql == pending.sql:
                evidence.append(pending)
                continue
            evidence = [pending]
            groups.append(evidence)
            continue
        last = groups[-1] if groups else None
        if (pending.batch and last is not None and last is not evidence and last[0].batch
                and last[0].sql == pending.sql):
            last.append(pending)
        else:
            groups.append([pending])
    return groups


class PgUnitOfWork:
    """Group commit over one PostgreSQL connection (gateway.store.interfaces.UnitOfWork).

    Writes are queued (:class:`Pending`) and sent in pipeline mode together with the
    next statement that needs an answer — a read, a write whose rowcount or rows are
    asked for, the COMMIT — so a turn costs a few round trips instead of one per
    statement.  A message's savepoint is sent only if a round trip happens inside it;
    if the message fails before, its queued writes are simply dropped.  A statement
    that fails in the database fails the round trip that carried it, and so the turn.

    ``grant``: the lease this gateway holds (None: no fence — a single gateway, or a
    tool); every commit is fenced by it."""

    def __init__(self, conn: Connection, slow_commit_seconds: float = SLOW_COMMIT_SECONDS,
                 ) -> None:
        self.connection = conn
        self.grant: Grant | None = None
        self._in_tx = False
        self._queue: list[Pending] = []
        #: A new connection like the first (PgStore sets it): see reconnect_if_lost.
        self.reopen: Callable[[], Connection] | None = None
        #: Called at each flush and discard: what was read ahead for a turn is forgotten.
        self.turn_listeners: list[Callable[[], None]] = []
        #: Set by the edge: end-of-turn commits run off the reactor thread.
        self.background: Background | None = None
        self._committing: _Commit | None = None
        self._round = 0  # round trips so far
        self._before: list[Callable[[], None]] = []
        self._after: list[Callable[[], None]] = []
        self._undo: list[Callable[[], None]] = []
        self._savepoints = 0
        self.commit_stats = CommitStats()
        self._slow_commit = slow_commit_seconds
        self.commit_listeners: list[Callable[[float], None]] = []
        #: SQL for the id the last ``INSERT INTO response`` drew (the stores use it in
        #: the same turn instead of asking for it: no round trip).
        self.last_response_id_sql = "currval(pg_get_serial_sequence('response', 'id'))"

    # --- statements (for the stores of this package only) ------------------------
    def write(self, sql: str, args: Sequence[object] = ()) -> Pending:
        """A statement of the stores (gateway/store/sqlstores.py, ``?`` placeholders)
        in the turn's transaction, queued: sent with the next round trip."""
        if not self._in_tx:
            self.begin()
        pending = Pending(self, _psycopg(sql), tuple(args), batch=True)
        self._queue.append(pending)
        return pending

    def read(self, sql: str, args: Sequence[object] = ()) -> Cursor:
        """(inside the turn's transaction if one is open: it sees the turn's writes,
        which ride in the same round trip; else autocommitted)"""
        if self._queue:
            read = Pending(self, _psycopg(sql), tuple(args))
            self.sync(read)
            assert read.cursor is not None
            return read.cursor
        self._settle_wait()
        return self.connection.execute(_psycopg(sql), tuple(args))

    def row(self, sql: str, args: Sequence[object] = ()) -> tuple[Any, ...]:
        """The one row an aggregate ``sql`` returns."""
        found = self.read(sql, args).fetchone()
        if found is None:
            raise LookupError(f"no row from {sql}")
        return tuple(found)

    def read_many(self, queries: Sequence[tuple[str, Sequence[object]]]) -> list[list[Any]]:
        """Run ``queries`` (reads, ``?`` placeholders) in one round trip with the queued
        writes (so they see them); each one's rows."""
        if not queries:
            return []
        pendings = [Pending(self, _psycopg(sql), tuple(args)) for sql, args in queries]
        self.sync(*pendings)
        return [p.cursor.fetchall() if p.cursor is not None else [] for p in pendings]

    def sync(self, *reads: Pending) -> Cursor | None:
        """Send every queued statement, then ``reads``, in one pipelined round trip; the
        cursor of the last one sent.  Savepoints the queue ends with stay queued (a read
        needs none: one is sent with the first write of its message, or never).
        Consecutive queued writes of one statement (the evidence log's inserts) go as
        one ``executemany``: their own cursor is that batch's (nothing asks a queued
        write for its rowcount after the fact)."""
        self._settle_wait()
        queue, self._queue = self._queue, []
        held = len(queue)  # savepoints with nothing after them yet wait for a write
        while held and queue[held - 1].sql.startswith("SAVEPOINT "):
            held -= 1
        queue, self._queue = queue[:held], queue[held:]
        self._send(queue, reads)
        sent = reads or queue
        return sent[-1].cursor if sent else None

    def _send(self, queue: Sequence[Pending], reads: Sequence[Pending] = ()) -> None:
        """One pipelined round trip (in the reactor thread, or the commit thread)."""
        self._round += 1
        db = self.connection
        with db.pipeline():
            for group in _groups(queue):
                if len(group) == 1:
                    group[0].cursor = db.execute(group[0].sql, group[0].args)
                else:
                    batch = db.cursor()
                    batch.executemany(group[0].sql, [q.args for q in group])
                    for pending in group:
                        pending.cursor = batch
            for read in reads:
                read.cursor = db.execute(read.sql, read.args)

    # --- the unit of work ------------------------------------------------------------
    def begin(self) -> None:
        if not self._in_tx:
            self._queue.append(Pending(self, "BEGIN", ()))
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
        mark = Pending(self, f"SAVEPOINT {name}", ())
        self._queue.append(mark)
        marks = (len(self._after), len(self._undo))
        try:
            yield
        except BaseException:
            if mark.cursor is None:  # nothing of it sent: forget its statements
                del self._queue[self._queue.index(mark):]
            else:
                self._queue += [Pending(self, f"ROLLBACK TO SAVEPOINT {name}", ()),
                                Pending(self, f"RELEASE SAVEPOINT {name}", ())]
            undo = self._undo[marks[1]:]
            del self._after[marks[0]:], self._undo[marks[1]:]
            for action in reversed(undo):
                action()
            raise
        else:
            if mark.cursor is None:  # never sent: its writes simply join the turn
                self._queue.remove(mark)
            else:
                self._queue.append(Pending(self, f"RELEASE SAVEPOINT {name}", ()))
        finally:
            self._savepoints -= 1
            if not self._savepoints:
                self._undo.clear()

    @property
    def dirty(self) -> bool:
        return (self._in_tx or bool(self._after) or bool(self._before)
                or self._committing is not None)

    def flush(self, background: bool = False) -> int:
        """As the Protocol says; a fenced commit raises :class:`Fenced` (nothing of the
        turn written, its after-commit actions dropped: step down), any other failed
        commit raises psycopg's error (also dropping them: the edge stops).

        ``background`` (the reactor's end-of-turn flush, once :attr:`background` is
        set): the COMMIT's round trip runs on the commit thread and this returns at
        once; the turn's after-commit actions run when it is durable — in the reactor
        thread, through :attr:`background`'s ``done`` hook (which flushes again), or at
        the start of the next flush, whichever comes first.  Until then the next turn
        may queue writes; its first round trip waits for the commit (the database's
        order is the turns' order).  A failed background commit is raised by that
        next flush, before anything of the next turn commits."""
        done = self._settle()
        for forget in self.turn_listeners:
            forget()
        while self._before:
            actions, self._before = self._before, []
            for action in actions:
                action()
        if self._in_tx and background and self.background is not None:
            commit = _Commit(self._commit_statements(), self._after)
            self._in_tx, self._after, self._committing = False, [], commit
            self.background.submit(lambda: self._commit_off_thread(commit),
                                   lambda: self._committed(commit))
            return done
        spent = None
        if self._in_tx:
            started = time.perf_counter()
            self._commit()
            spent = time.perf_counter() - started
        actions, self._after = self._after, []
        return done + self._release(actions, spent)

    def _release(self, actions: list[Callable[[], None]], spent: float | None) -> int:
        """A durable commit's after-commit actions, then its commit listeners."""
        if spent is not None and self.commit_stats.add(spent, self._slow_commit):
            log.warning("journal commit took %.0f ms; the turn's answers waited for it"
                        " (a slow database?)", spent * 1e3)
        for action in actions:
            action()
        if spent is not None:
            for listener in self.commit_listeners:  # their writes go to the next commit
                listener(spent)
        return len(actions)

    def _commit_statements(self) -> list[Pending]:
        """The turn's queued writes, the fence (when a grant is set), COMMIT."""
        statements, self._queue = self._queue, []
        if self.grant is not None:
            grant = self.grant
            statements.append(Pending(self, "SELECT sbdx_fence(%s, %s, %s)",
                                      (grant.name, grant.holder, grant.epoch)))
        statements.append(Pending(self, "COMMIT", ()))
        return statements

    def _commit(self) -> None:
        """Fence (when a grant is set), then COMMIT, with the turn's last queued writes
        in one round trip; on any failure roll back and drop the outbox — nothing
        queued reaches a peer unless its commit succeeded."""
        self._settle_wait()
        self._in_tx = False
        try:
            self._commit_round(self._commit_statements())
        except BaseException as exc:
            self._after.clear()
            raise self._failed(exc) from exc

    def _commit_round(self, statements: list[Pending]) -> None:
        """Send a commit's statements; raise unless the database committed (on any
        failure the connection is rolled back)."""
        try:
            self._send(statements)
            status = statements[-1].cursor
            done = status.statusmessage if status is not None else None
            if done != "COMMIT":  # an aborted transaction "commits" as ROLLBACK
                raise psycopg.errors.InFailedSqlTransaction(
                    f"the journal transaction was rolled back ({done}): a statement of"
                    " this turn failed outside a savepoint")
        except BaseException:
            self._rollback_quietly()
            raise

    def _failed(self, exc: BaseException) -> BaseException:
        """What a failed commit raises: :class:`Fenced` for the fence's refusal."""
        if is_fenced(exc) and self.grant is not None:
            grant = self.grant
            return Fenced(f"lease {grant.name!r} epoch {grant.epoch} is no longer held"
                          f" by {grant.holder}: nothing of this commit was written")
        return exc

    # --- the commit in the background ------------------------------------------------
    def _commit_off_thread(self, commit: _Commit) -> None:
        """(on the commit thread: the reactor thread does not touch the connection
        until :meth:`_settle_wait` has seen ``commit.finished``)"""
        started = time.perf_counter()
        try:
            self._commit_round(commit.statements)
        except BaseException as exc:  # reported in the reactor thread
            commit.error = exc
        finally:
            commit.spent = time.perf_counter() - started
            commit.finished.set()

    def _committed(self, commit: _Commit) -> None:
        """(in the reactor thread, once ``commit`` has finished)"""
        if self._committing is commit:
            assert self.background is not None
            self.background.done()

    def wait_for_commit(self) -> None:
        """Wait for a background commit in flight (the edge, before it uses
        :attr:`connection` itself)."""
        self._settle_wait()

    def _settle_wait(self) -> None:
        """Wait for the commit in flight, if any (before the connection is used)."""
        if self._committing is not None:
            self._committing.finished.wait()

    def release_committed(self) -> None:
        """At a turn's start (nothing of a message in progress): wait for the commit in
        flight and, if it committed, run its after-commit actions now — its frames
        leave before this turn is acted on, not at its end.  A failed one is left for
        the next flush to raise."""
        commit = self._committing
        if commit is None or self._savepoints:
            return
        commit.finished.wait()
        if commit.error is None:
            self._committing = None
            self._release(commit.after, commit.spent)

    def _settle(self) -> int:
        """Finish the commit in flight: its after-commit actions if it committed (how
        many ran), else its error raised."""
        commit = self._committing
        if commit is None:
            return 0
        commit.finished.wait()
        self._committing = None
        if commit.error is not None:
            raise self._failed(commit.error) from commit.error
        return self._release(commit.after, commit.spent)

    def discard(self) -> None:
        """Drop what this turn wrote and queued, uncommitted (a gateway that lost its
        lease, §12: nothing of it may reach the journal or a peer); a commit in flight
        is waited for and its after-commit actions dropped."""
        self._settle_wait()
        self._committing = None
        self._before.clear()
        self._after.clear()
        self._queue.clear()
        for forget in self.turn_listeners:
            forget()
        if self._in_tx:
            self._in_tx = False
            self._rollback_quietly()

    def reconnect_if_lost(self) -> bool:
        """A connection the server ended (a takeover ending this gateway's stale turn,
        §12) is replaced by a new one, set up as the first was (:attr:`reopen`); True if
        that happened.  Nothing is in flight: call it after :meth:`discard`."""
        if self.reopen is None or not (self.connection.closed or self.connection.broken):
            return False
        try:
            self.connection.close()
        except psycopg.Error:
            pass
        self.connection = self.reopen()
        log.warning("the journal connection was ended by the server; connected again")
        return True

    def _rollback_quietly(self) -> None:
        try:
            if not self.connection.closed and (
                    self.connection.info.transaction_status != TransactionStatus.IDLE):
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
