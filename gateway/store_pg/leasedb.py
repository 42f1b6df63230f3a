"""The lease row and the fenced commit, in PostgreSQL (PROTOCOL §12).

Every statement is one autocommitted round trip except :func:`fenced`, which wraps the
caller's writes.  Times are the database's (``clock_timestamp()``): gateway clocks
never have to agree.  The decisions (when to renew, when to step down) are
gateway/store_pg/lease.py's; this module only says what the database answered.
"""
from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from .lease import Grant
from .schema import FENCED_SQLSTATE

#: The one lease of a logical gateway (two gateways on one database share it).
LEASE_NAME = "gateway"

Connection = psycopg.Connection[Any]


class Fenced(RuntimeError):
    """A commit was refused: this gateway does not hold the lease at its epoch any more
    (a standby took over).  Nothing of that transaction was written; step down."""


def holder_id() -> str:
    """This process's name in the lease: host, pid and a random suffix, so a restarted
    process (or a reused pid) never passes for the one that held the lease before."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


#: ``application_name`` of a gateway's journal connection: this prefix, then its holder.
JOURNAL_TAG = "sbdx-journal "


def tag_journal(conn: Connection, holder: str) -> None:
    """Name ``conn`` as ``holder``'s journal connection (see :func:`end_stale_turns`)."""
    conn.execute("SELECT set_config('application_name', %s, false)",
                 ((JOURNAL_TAG + holder)[:63],))
    _end(conn)


def end_stale_turns(conn: Connection, holder: str) -> int:
    """End every other gateway's journal session that is inside a transaction (§12,
    run by a gateway that has just taken the lease, before it writes).  The active's
    turn sends its writes before its COMMIT, so one paused mid-turn (SIGSTOP, a frozen
    VM) would keep their row locks — and the new active's writes waiting — for as long
    as its connection lives; ended, its turn rolls back (it was fenced anyway: its
    COMMIT could never pass) and its locks go.  Idle sessions (a standby's) are left
    alone.  How many were ended."""
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname ="
        " current_database() AND pid <> pg_backend_pid() AND application_name LIKE %s"
        " AND application_name <> %s AND xact_start IS NOT NULL",
        (JOURNAL_TAG + "%", (JOURNAL_TAG + holder)[:63])).fetchall()
    _end(conn)
    return sum(1 for (ended,) in rows if ended)


def bound_statements(conn: Connection, seconds: float) -> None:
    """PostgreSQL's ``statement_timeout`` and ``lock_timeout`` for the rest of this
    session (``[journal] statement_timeout_seconds``): a statement of a database that
    hangs — a lock held elsewhere, a stalled disk — fails after ``seconds`` with an
    error the caller handles (a renewal not confirmed, a commit failed, a release that
    did not happen) instead of holding the thread, and a stop, forever."""
    ms = str(max(1, round(seconds * 1000)))
    conn.execute("SELECT set_config('statement_timeout', %s, false),"
                 " set_config('lock_timeout', %s, false)", (ms, ms))
    _end(conn)


def acquire(conn: Connection, holder: str, ttl: float, name: str = LEASE_NAME) -> Grant | None:
    """Take the lease if it is free, released or expired (epoch + 1); None if another
    holder has it.  A plain read first, so a standby's polls never lock the row the
    active's commits share-lock."""
    row = conn.execute("SELECT holder IS NULL OR expires_at <= clock_timestamp() FROM lease"
                       " WHERE name = %s", (name,)).fetchone()
    if row is not None and not row[0]:
        _end(conn)
        return None
    taken = conn.execute(
        "INSERT INTO lease AS l (name, holder, epoch, expires_at, acquired_at)"
        " VALUES (%s, %s, 1, clock_timestamp() + make_interval(secs => %s), clock_timestamp())"
        " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, epoch = l.epoch + 1,"
        " expires_at = EXCLUDED.expires_at, acquired_at = EXCLUDED.acquired_at"
        " WHERE l.holder IS NULL OR l.expires_at <= clock_timestamp()"
        " RETURNING epoch", (name, holder, ttl)).fetchone()
    _end(conn)
    return Grant(name, holder, int(taken[0])) if taken else None


def renew(conn: Connection, grant: Grant, ttl: float) -> bool:
    """Extend our lease by ``ttl`` from now; False if it is not ours at this epoch or
    has expired (then it may be taken any moment: never revive it)."""
    row = conn.execute(
        "UPDATE lease SET expires_at = clock_timestamp() + make_interval(secs => %s)"
        " WHERE name = %s AND holder = %s AND epoch = %s AND expires_at > clock_timestamp()"
        " RETURNING epoch", (ttl, grant.name, grant.holder, grant.epoch)).fetchone()
    _end(conn)
    return row is not None


def release(conn: Connection, grant: Grant) -> bool:
    """Give the lease up (a clean stop): a standby takes it at its next poll instead
    of waiting for it to expire.  False if it was not ours any more."""
    row = conn.execute(
        "UPDATE lease SET holder = NULL, expires_at = clock_timestamp() WHERE name = %s"
        " AND holder = %s AND epoch = %s RETURNING epoch",
        (grant.name, grant.holder, grant.epoch)).fetchone()
    _end(conn)
    return row is not None


def lease_state(conn: Connection, name: str = LEASE_NAME) -> tuple[str | None, int, bool] | None:
    """(holder, epoch, unexpired) of the lease, None if never taken (``/readyz``, status)."""
    row = conn.execute("SELECT holder, epoch, expires_at > clock_timestamp() FROM lease"
                       " WHERE name = %s", (name,)).fetchone()
    _end(conn)
    return (row[0], int(row[1]), bool(row[2])) if row else None


def fence(conn: Connection, grant: Grant) -> None:
    """The fence statement, first in a transaction (it may ride in a pipeline)."""
    conn.execute("SELECT sbdx_fence(%s, %s, %s)", (grant.name, grant.holder, grant.epoch))


def is_fenced(error: BaseException) -> bool:
    return isinstance(error, psycopg.Error) and error.sqlstate == FENCED_SQLSTATE


@contextmanager
def fenced(conn: Connection, grant: Grant) -> Iterator[Connection]:
    """A transaction committed only if ``grant`` still holds the lease: the lease row is
    checked and share-locked first, the block's writes follow, COMMIT at the end.  If
    the lease is not ours (taken over, expired) everything rolls back and
    :class:`Fenced` is raised; any other error rolls back and goes on."""
    try:
        with conn.transaction():
            fence(conn, grant)
            yield conn
    except psycopg.Error as e:
        if is_fenced(e):
            raise Fenced(f"lease {grant.name!r} epoch {grant.epoch} is no longer held by"
                         f" {grant.holder}: nothing of this commit was written") from e
        raise


def _end(conn: Connection) -> None:
    """Commit the implicit transaction of a non-autocommit connection (a no-op with
    autocommit): lease statements never stay open."""
    if not conn.autocommit:
        conn.commit()
