"""The PostgreSQL store (gateway/store_pg/store.py) where it differs from SQLite: its
commits are fenced by the §12 lease, and a turn that PostgreSQL aborted never passes for
committed.  The shared contract is tests/test_store.py's, run on both stores."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

psycopg = pytest.importorskip("psycopg")

from gateway.store import StoreUnavailable  # noqa: E402
from gateway.store_pg.leasedb import Fenced, acquire  # noqa: E402
from gateway.store_pg.schema import MIGRATIONS  # noqa: E402
from gateway.store_pg.store import PgStore  # noqa: E402


@pytest.fixture
def pair(pg_store_url: str) -> Iterator[tuple[PgStore, PgStore]]:
    """Two gateways' stores on one shared journal (A active, B about to take over)."""
    a, b = PgStore(pg_store_url), PgStore(pg_store_url)
    yield a, b
    for store in (a, b):
        store.uow.connection.close()


def test_a_fenced_turn_writes_nothing_and_sends_nothing(pair: tuple[PgStore, PgStore]) -> None:
    a, b = pair
    grant = acquire(a.uow.connection, "A", 30.0)
    assert grant is not None
    a.uow.grant = grant
    sent: list[str] = []
    a.seen.remember("CCB", "M1", 1.0)
    a.uow.after_commit(lambda: sent.append("M1"))
    assert a.uow.flush() == 1 and sent == ["M1"]  # ours: committed, then sent
    b.uow.connection.execute("UPDATE lease SET expires_at = clock_timestamp()")  # A stalled
    taken = acquire(b.uow.connection, "B", 30.0)
    assert taken is not None and taken.epoch == grant.epoch + 1
    b.uow.grant = taken
    a.seen.remember("CCB", "M2", 2.0)
    a.uow.after_commit(lambda: sent.append("M2"))
    with pytest.raises(Fenced, match="no longer held by A"):
        a.uow.flush()
    assert sent == ["M1"] and not a.uow.dirty
    assert b.seen.remember("CCB", "M2", 3.0)  # A's M2 was never written
    assert not b.seen.remember("CCB", "M1", 3.0)
    b.uow.flush()
    a.seen.remember("CCB", "M3", 4.0)  # A's next turn is fenced too
    with pytest.raises(Fenced):
        a.uow.flush()


def test_a_turn_the_database_aborted_is_an_error_not_a_commit(pg_store_url: str) -> None:
    """A statement that failed outside a savepoint aborts the whole transaction: its
    COMMIT answers ROLLBACK, which the flush reports instead of running the outbox."""
    store = PgStore(pg_store_url)
    sent: list[str] = []
    store.seen.remember("CCB", "M1", 1.0)
    with pytest.raises(psycopg.Error):
        store.uow.write("INSERT INTO suspension (party, reason, since) VALUES (NULL, 'x', 1)")
    store.uow.after_commit(lambda: sent.append("M1"))
    with pytest.raises(psycopg.errors.InFailedSqlTransaction, match="rolled back"):
        store.uow.flush()
    assert sent == [] and store.seen.remember("CCB", "M1", 2.0)  # nothing was written
    store.close()


def test_an_unreachable_or_newer_journal_is_refused_saying_what_to_do(
        pg_store_url: str) -> None:
    with pytest.raises(StoreUnavailable, match=r"check \[journal\] url"):
        PgStore("postgresql:///sbdx_no_such_database?host=/nonexistent")
    store = PgStore(pg_store_url)
    store.uow.connection.execute("INSERT INTO schema_version (version) VALUES (%s)",
                                 (len(MIGRATIONS) + 1,))
    store.close()
    with pytest.raises(StoreUnavailable, match="run the newer gateway"):
        PgStore(pg_store_url)
    with pytest.raises(StoreUnavailable, match="use the gateway release that wrote it"):
        PgStore(pg_store_url, read_only=True)
