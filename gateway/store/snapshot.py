"""A read snapshot: every query of a report sees the journal as of one moment.

:func:`read_snapshot` opens one read-only transaction on a store opened read-only
(``gateway exit-report`` beside a running gateway): on SQLite a deferred ``BEGIN``
whose first read fixes the snapshot (WAL readers never block the writer); on
PostgreSQL ``BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY``, whose first statement
fixes it.  Nothing may be written inside; the transaction ends (nothing to commit)
when the block does.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .interfaces import Store


@contextmanager
def read_snapshot(store: Store) -> Iterator[None]:
    """The block's reads of ``store`` all see one committed state."""
    from .sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        store.uow.begin()
        try:
            yield
        finally:
            store.uow.flush()  # COMMIT of a read transaction: releases the snapshot
        return
    from gateway.store_pg.store import PgStore

    if not isinstance(store, PgStore):
        raise TypeError(f"no read snapshot for {type(store).__name__}")
    conn = store.uow.connection
    # beside the unit of work, whose transaction stays closed: its flush commits nothing
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("ROLLBACK")  # read only: nothing to keep
