"""The turn's commit to PostgreSQL, off the reactor thread (PROTOCOL §12, group commit).

The reactor thread never waits for the database round trip of a commit: at the end of
a turn it hands the turn's writes, already built as statements (a :data:`Unit`), to
:meth:`TurnCommitter.submit` and goes on; one dedicated thread owns the write
connection and commits units in the order they were submitted, each as one fenced
transaction sent in pipeline mode (fence, writes, COMMIT: one round trip); the
Deferred ``submit`` returned fires in the reactor thread when the commit is durable,
and only then may the turn's frames leave (the after-commit actions).  When the
database is slower than the turns, the units that queued meanwhile are committed
together in one transaction (a larger group commit, fewer WAL flushes); should that
transaction fail for a reason other than the fence, each of its units is retried alone,
so a bad unit fails only its own turn.

A failed unit's Deferred errbacks: :class:`gateway.store_pg.leasedb.Fenced` when the
lease is not ours (step down: close the sessions, become standby), any other error as
psycopg raised it (the edge stops the gateway, as a failed SQLite commit does).  A
commit whose outcome is unknown (the connection broke after COMMIT was sent) is
reported as an error too and never retried: its frames were not sent, so the peers
time out into B330 and reversal as in §6, and a restarted or standby gateway reads
from the journal what did commit.

Only this thread uses the write connection; :meth:`call` runs other work (a lease
renewal, a read that must see every earlier commit) on it, in order; such work
commits its own writes (a transaction it leaves open is rolled back).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from twisted.internet.defer import Deferred

from .lease import Grant
from .leasedb import Connection, Fenced, fence, is_fenced

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Units merged into one transaction at most (bounds a transaction's size and the
#: work redone if it must be split).
MAX_UNITS_PER_COMMIT = 64


@dataclass(frozen=True, slots=True)
class Statement:
    """One write of a turn: SQL with ``%s`` placeholders and its parameters."""

    sql: str
    params: tuple[object, ...] = ()


#: A turn's writes, committed all or none.
Unit = tuple[Statement, ...]


@dataclass
class CommitterStats:
    transactions: int = 0
    units: int = 0
    seconds: float = 0.0  #: wall clock of the transactions, round trip and WAL flush
    max_seconds: float = 0.0
    split: int = 0  #: merged transactions that failed and were retried unit by unit


@dataclass(frozen=True, slots=True)
class _Commit:
    grant: Grant | None
    unit: Unit
    done: Deferred[None]


@dataclass(frozen=True, slots=True)
class _Call:
    work: Callable[[Connection], Any]
    done: Deferred[Any]


_STOP = object()


class TurnCommitter:
    """One write connection, one thread, units committed in submission order."""

    def __init__(self, connect: Callable[[], Connection],
                 call_from_thread: Callable[..., object],
                 max_units: int = MAX_UNITS_PER_COMMIT, pipelined: bool = True) -> None:
        """``connect``: opens the write connection (in the committer's thread);
        ``call_from_thread``: the reactor's ``callFromThread``, which fires the
        Deferreds in the reactor thread; ``pipelined``: send each transaction in one
        round trip (for a database across a network; on a local unix socket the
        pipeline's bookkeeping costs more CPU than the round trips it saves:
        docs/BENCHMARKS.md)."""
        self._connect = connect
        self._call_from_thread = call_from_thread
        self._max_units = max_units
        self._pipelined = pipelined
        self._jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._conn: Connection | None = None
        self.stats = CommitterStats()
        self._stopped: Deferred[None] = Deferred()
        self._thread = threading.Thread(target=self._run, name="sbdx-pg-commit", daemon=True)
        self._thread.start()

    # --- reactor thread ---------------------------------------------------------------
    def submit(self, grant: Grant | None, unit: Unit) -> Deferred[None]:
        """Commit ``unit`` fenced by ``grant`` (None: we are not active, it fails
        Fenced); fires in the reactor thread once durable.  Never blocks."""
        done: Deferred[None] = Deferred()
        self._jobs.put(_Commit(grant, unit, done))
        return done

    def call(self, work: Callable[[Connection], T]) -> Deferred[T]:
        """Run ``work(connection)`` in the committer's thread after every unit
        submitted before it (it sees their writes); its result in the reactor thread."""
        done: Deferred[T] = Deferred()
        self._jobs.put(_Call(work, done))
        return done

    def close(self) -> Deferred[None]:
        """Commit what was submitted, then close the connection and end the thread."""
        self._jobs.put(_STOP)
        return self._stopped

    # --- the committer's thread -------------------------------------------------------
    def _run(self) -> None:
        pending: object | None = None
        while True:
            job = pending if pending is not None else self._jobs.get()
            pending = None
            if job is _STOP:
                break
            if isinstance(job, _Call):
                self._do_call(job)
                continue
            assert isinstance(job, _Commit)
            batch = [job]
            while len(batch) < self._max_units:  # what queued meanwhile: one transaction
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(more, _Commit) and more.grant == job.grant:
                    batch.append(more)
                else:
                    pending = more
                    break
            self._commit(batch)
        if self._conn is not None:
            self._conn.close()
        self._call_from_thread(self._stopped.callback, None)

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _do_call(self, job: _Call) -> None:
        """``work`` commits what it writes (leasedb's functions do); a transaction it
        leaves open is rolled back, so the next unit's transaction is a transaction of
        its own, not a savepoint inside that one."""
        try:
            conn = self._connection()
            try:
                result = job.work(conn)
            finally:
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.rollback()
        except Exception as e:
            self._broken()
            self._fail(job.done, e)
        else:
            self._reply(job.done, result)

    def _commit(self, batch: list[_Commit]) -> None:
        grant = batch[0].grant
        if grant is None:
            for job in batch:
                self._fail(job.done, Fenced("not the active gateway: no lease"))
            return
        try:
            self._transaction(grant, [job.unit for job in batch])
        except Exception as e:
            broken = self._broken()
            if isinstance(e, psycopg.Error) and is_fenced(e):
                error: BaseException = Fenced(
                    f"lease {grant.name!r} epoch {grant.epoch} is no longer held by"
                    f" {grant.holder}: nothing of this commit was written")
                for job in batch:
                    self._fail(job.done, error)
            elif len(batch) > 1 and not broken:
                self.stats.split += 1
                log.warning("a commit of %d turns failed (%s); committing them one by one",
                            len(batch), e)
                for job in batch:
                    self._commit([job])
            else:
                for job in batch:
                    self._fail(job.done, e)
        else:
            for job in batch:
                self._reply(job.done, None)

    def _transaction(self, grant: Grant, units: list[Unit]) -> None:
        conn = self._connection()
        started = time.perf_counter()
        with conn.pipeline() if self._pipelined else nullcontext(), conn.transaction():
            fence(conn, grant)
            for unit in units:
                for statement in unit:
                    conn.execute(statement.sql, statement.params)
        spent = time.perf_counter() - started
        self.stats.transactions += 1
        self.stats.units += len(units)
        self.stats.seconds += spent
        self.stats.max_seconds = max(self.stats.max_seconds, spent)

    def _broken(self) -> bool:
        """The connection is gone: a commit's outcome is unknown, never retried."""
        if self._conn is not None and self._conn.broken:
            self._conn = None
            return True
        return False

    def _reply(self, done: Deferred[Any], result: object) -> None:
        self._call_from_thread(done.callback, result)

    def _fail(self, done: Deferred[Any], error: BaseException) -> None:
        self._call_from_thread(done.errback, error)
