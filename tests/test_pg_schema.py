"""The PostgreSQL journal schema (gateway/store_pg/schema.py) on a real throwaway server."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from gateway.eod.mapping import eod_line  # noqa: E402
from gateway.journal import Journal, Record  # noqa: E402
from gateway.store_pg.schema import MIGRATIONS, migrate, schema_version  # noqa: E402


def test_migrate_creates_the_schema_once_and_records_its_version(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        assert schema_version(conn) == 0
        assert migrate(conn) == len(MIGRATIONS)
        assert migrate(conn) == len(MIGRATIONS)  # again: nothing to do
        assert schema_version(conn) == len(MIGRATIONS)
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"message", "seen_msg_id", "record", "response", "agreement", "reversal",
                "alert", "lease", "peer_registry", "schema_version"} <= tables


def test_two_gateways_migrating_an_empty_database_together_both_succeed(pg_url: str) -> None:
    results: list[Any] = []

    def run() -> None:
        try:
            with psycopg.connect(pg_url) as conn:
                results.append(migrate(conn))
        except Exception as e:  # reported below
            results.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [len(MIGRATIONS)] * 2
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == len(MIGRATIONS)


def test_a_database_newer_than_the_gateway_is_refused(pg_store_url: str) -> None:
    with psycopg.connect(pg_store_url) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (len(MIGRATIONS) + 1,))
        conn.commit()
        with pytest.raises(ValueError, match="run the newer gateway"):
            migrate(conn)


_RECORDS = [
    Record("GTJA", "XFER.IN", "B1", "CCB", "M1", "h", "SUCCEEDED", "20261202", 12345,
           "0000", None, "F1", "W1", bank_sn="BS1", sweep_ref="SR1"),
    Record("GTJA", "XFER.OUT", "B2", "CCB", "M2", "h", "FAILED", "20261202", 5, "B300",
           None, "F1", "W1"),
    Record("CCB", "XFER.OUT", "B3", "GTJA", "M3", "h", "PENDING", "20261202", 100,
           fund_acct="F2", wallet_id="W2"),
    Record("GW01", "XFER.REVERSE", "B4", "CCB", "M4", "h", "REVERSED", "20261202", 0,
           "0000", fund_acct="F1", wallet_id="W1", orig_type="XFER.IN", orig_from="GTJA",
           orig_biz_sn="B1"),
    Record("GTJA", "CTS.SIGN", "B5", "CCB", "M5", "h", "SUCCEEDED", "20261202",
           fund_acct="F1", wallet_id="W1", agreement_no="AG1"),
    Record("GTJA", "CTS.UNSIGN", "B6", "CCB", "M6", "h", "SUCCEEDED", "20261202",
           fund_acct="F1", wallet_id="W1"),
    Record("CCB", "PAY.ORDER", "B7", "GTJA", "M7", "h", "SUCCEEDED", "20261202", 990001,
           "0000", order_no="O1", wallet_id="W3", product_code="P9"),
    Record("CCB", "OTC.SUBSCRIBE", "B8", "GTJA", "M8", "h", "REVERSED", "20261202", 7,
           order_no="O2", wallet_id="W3", book_date="20261203"),
    Record("GTJA", "QRY.BALANCE", "B9", "CCB", "M9", "h", "SUCCEEDED", "20261202"),
]


def test_eod_line_is_the_same_text_sqlite_computes(pg_store_url: str, tmp_path: Path) -> None:
    """record.eod_line (the §8 line without Time, read by the end-of-day check) is the
    generated column of both stores: for the same records, the same text."""
    journal = Journal(tmp_path / "journal.sqlite3")
    for rec in _RECORDS:
        journal.insert_record(rec, 1.5)
    journal.flush()
    expected = dict(journal.store.uow.connection.execute("SELECT biz_sn, eod_line FROM record"))
    journal.close()
    assert expected == {rec.biz_sn: eod_line(rec) for rec in _RECORDS}  # its one definition
    names = [f for f in Record.__slots__ if f != "response_xml"]
    with psycopg.connect(pg_store_url) as conn:
        for rec in _RECORDS:
            conn.execute(f"INSERT INTO record ({', '.join(names)}, created_at, updated_at)"
                         f" VALUES ({', '.join(['%s'] * len(names))}, 1.5, 1.5)",
                         [getattr(rec, n) for n in names])
        got = dict(conn.execute("SELECT biz_sn, eod_line FROM record").fetchall())
    assert got == expected
    assert got["B1"] == "D|B1|IN|F1|W1|123.45|S|BS1|SR1"
