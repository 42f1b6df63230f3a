"""The PostgreSQL store (gateway/store_pg/store.py) where it differs from SQLite: its
commits are fenced by the §12 lease, and a turn that PostgreSQL aborted never passes for
committed.  The shared contract is tests/test_store.py's, run on both stores."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

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


def test_the_end_of_day_reader_answers_as_sqlites(pg_store_url: str, pg_url: str,
                                                   tmp_path: Path) -> None:
    """The same records in both stores: every EodQueries answer is the same, for every
    file type and every pair of writer and receiver (PROTOCOL §8)."""
    from test_store import _records

    from gateway.eod.mapping import BIZ_TYPES
    from gateway.store import eod_reader
    from gateway.store.sqlite import SqliteStore

    records = _records()
    records += [replace(r, origin="CCB", receiver="GTJA", biz_sn=r.biz_sn + "B")
                for r in records[::3]]
    records += [replace(r, receiver="GW01", biz_sn=r.biz_sn + "G") for r in records[::7]]
    for store in (SqliteStore(tmp_path / "j.sqlite3"), PgStore(pg_store_url)):
        for n, rec in enumerate(records):
            store.records.insert(rec, float(n))
        store.close()
    lite, pg = eod_reader(tmp_path / "j.sqlite3"), eod_reader(pg_store_url)
    assert pg.exists() and pg.schema_has_lines()
    day, days = "2026-11-25", 0
    for file_type in BIZ_TYPES:
        for writer, reader in (("GTJA", "CCB"), ("CCB", "GTJA"), ("GW01", "CCB"),
                               ("GTJA", "GW01")):
            args = (file_type, day, "GW01", writer, reader)
            owed = [row for batch in pg.owed_lines(*args, 7) for row in batch]
            assert sorted(owed) == sorted(
                row for batch in lite.owed_lines(*args, 7) for row in batch), args
            assert sorted(pg.optional_lines(*args, 1000)) == sorted(
                lite.optional_lines(*args, 1000)), args
            lines = sorted(row for batch in pg.day_rows(*args, 5) for row in batch)
            assert lines == sorted(row for batch in lite.day_rows(*args, 5) for row in batch)
            days += len(lines)
        for reader in ("CCB", "GTJA"):
            args4 = (file_type, day, "GW01", reader)
            assert list(pg.export_rows(*args4)) == list(lite.export_rows(*args4)), args4
            assert pg.unfinished(*args4) == lite.unfinished(*args4) > 0, args4
    assert owed and any(pg.export_rows("XFER", day, "GW01", "CCB"))
    assert days > 0
    # a journal that cannot be reached is no empty one: an export must not sign an empty
    # file, a check not report every record extra, because the server was down
    missing = eod_reader(pg_store_url.replace("/sbdx_test_", "/sbdx_nope_"))
    with pytest.raises(StoreUnavailable, match=r"\[journal\] url"):
        missing.exists()
    with pytest.raises(StoreUnavailable):
        list(missing.export_rows("XFER", day, "GW01", "CCB"))
    empty = eod_reader(pg_url)  # reachable, never migrated: no business yet
    assert not empty.exists() and list(empty.export_rows("XFER", day, "GW01", "CCB")) == []
