"""gateway.store.snapshot.read_snapshot: the reads of a report (``gateway exit-report``)
all see the journal as of one moment while a gateway goes on committing — on SQLite
(one deferred read transaction, WAL) and on PostgreSQL (REPEATABLE READ, READ ONLY)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.journal import Agreement, Journal
from gateway.store.snapshot import read_snapshot

from conftest import BANK, BROKER


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    if request.param == "sqlite":
        yield tmp_path / "journal.sqlite3"
    else:
        yield request.getfixturevalue("pg_store_url")


def agreement(number: str) -> Agreement:
    return Agreement(number, BROKER, BANK, "100020003000", "0071130812093028", "1",
                     "PERSONAL", "ACTIVE", "2026-12-02", None, "sealed", "01", "sealed",
                     None, f"{BROKER}S{number}")


def numbers(journal: Journal) -> list[str | None]:
    return sorted(a.agreement_no for a in journal.agreements())


def test_a_read_snapshot_sees_one_moment_while_the_writer_commits(
        where: Path | str, tmp_path: Path) -> None:
    writer = Journal(where, home=tmp_path)
    writer.insert_agreement(agreement("AG1"))
    writer.flush()
    reader = Journal(where, read_only=True, home=tmp_path)
    try:
        with read_snapshot(reader.store):
            assert numbers(reader) == ["AG1"]
            writer.insert_agreement(agreement("AG2"))
            writer.flush()  # committed meanwhile
            assert numbers(reader) == ["AG1"]  # still the snapshot's moment
        assert numbers(reader) == ["AG1", "AG2"]  # a new read: the commit is there
        with read_snapshot(reader.store):  # and a second snapshot starts afresh
            assert numbers(reader) == ["AG1", "AG2"]
    finally:
        reader.close()
        writer.close()


def test_nothing_is_written_inside_a_postgresql_snapshot(tmp_path: Path,
                                                         pg_store_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    journal = Journal(pg_store_url, home=tmp_path)
    try:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            with read_snapshot(journal.store):
                journal.store.uow.connection.execute(
                    "INSERT INTO suspension (party, reason, since) VALUES ('X', 'x', 0)")
        assert journal.suspensions() == []
    finally:
        journal.close()
