"""The store layer (gateway/store): the §8 line defined once, the schema frozen, and
the unit of work's outbox and savepoints over the SQLite implementation."""
from __future__ import annotations

import hashlib
import itertools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.eod.mapping import BIZ_TYPES, eod_line
from gateway.store import Agreement, Record, Reversal
from gateway.store.interfaces import Store
from gateway.store.sqlite import MIGRATIONS, SqliteStore

#: sha256 of each released migration.  A released migration never changes (databases
#: made by it are never migrated again): if this fails, the schema or the §8 line
#: (gateway/eod/mapping.py, rendered into migration 2) changed — put the change in a new
#: migration (for the line: one that rebuilds table ``record``) and restore the old text.
RELEASED = (
    "c72c89120224df322f666d1268ba95fb743e751966471bad416d66ae51f45beb",
    "910bf06b47ba63ee7b723d7948da0c169a4c1d1d73e09db9b121d21aa47191a8",
    "7afe14e76149a1cc64879ec03ca22bc0012000d35ee81bf67679833a5cc68b68",
    "a6e03f3f22f414cc1526dfcf0715123bc8f9ac21353edd5c1f2c5f3851634c51",
)

FUND, WALLET = "6222020012345678", "0000111122223333"


def test_released_migrations_are_frozen() -> None:
    got = tuple(hashlib.sha256(m.encode()).hexdigest() for m in MIGRATIONS)
    assert got[:len(RELEASED)] == RELEASED


def _records() -> list[Record]:
    """A record of every listed type in every state, with and without optional fields."""
    out = []
    kinds = [k for ks in BIZ_TYPES.values() for k in ks] + ["PAY.REFUND", "CTS.QUERY"]
    states = ("SUCCEEDED", "FAILED", "REVERSED", "PENDING", "REVERSING")
    for n, (kind, state, full) in enumerate(itertools.product(kinds, states, (True, False))):
        extra = dict(bank_sn="B1", sweep_ref="S1", agreement_no="AG1", order_no="O1",
                     product_code="P1", book_date="2026-11-26") if full else {}
        out.append(Record(origin="GTJA", biz_type=kind, biz_sn=f"SN{n}", receiver="CCB",
                          msg_id=f"M{n}", content_hash="h", state=state,
                          trade_date="2026-11-25", amount_fen=12345 + n,
                          fund_acct=FUND if full else None, wallet_id=WALLET, **extra))
    return out


def test_stored_eod_line_is_the_mapping_line(tmp_path: Path) -> None:
    """The journal's ``record.eod_line`` (SQL rendered from gateway/eod/mapping.py) is
    mapping.eod_line of the record, for every type, state and absent field."""
    store = SqliteStore(tmp_path / "j.sqlite3")
    records = _records()
    for rec in records:
        store.records.insert(rec, 1.0)
    store.uow.flush()
    store.close()
    db = sqlite3.connect(tmp_path / "j.sqlite3")
    stored = dict(db.execute("SELECT biz_sn, eod_line FROM record").fetchall())
    db.close()
    assert stored == {rec.biz_sn: eod_line(rec) for rec in records}
    assert stored["SN0"] == f"D|SN0|IN|{FUND}|{WALLET}|123.45|S|B1|S1"


# --- the contract of gateway/store/interfaces.py, for every implementation -------------
@pytest.fixture(params=["sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each store implementation (a second one joins ``params``)."""
    opened = SqliteStore(tmp_path / "j.sqlite3")
    yield opened
    opened.close()


def test_a_rolled_back_savepoint_drops_its_writes_and_outbox(store: Store) -> None:
    uow = store.uow
    sent: list[str] = []
    undone: list[str] = []
    with uow.savepoint():
        store.seen.remember("GTJA", "M1", 1.0)
        uow.after_commit(lambda: sent.append("M1"))
    with pytest.raises(RuntimeError), uow.savepoint():
        store.seen.remember("GTJA", "M2", 1.0)
        uow.after_commit(lambda: sent.append("M2"))
        uow.on_rollback(lambda: undone.append("M2"))
        raise RuntimeError("refused")
    assert sent == [] and undone == ["M2"] and uow.dirty
    assert uow.flush() == 1 and sent == ["M1"] and not uow.dirty
    assert not store.seen.remember("GTJA", "M1", 2.0) and store.seen.remember("GTJA", "M2", 2.0)


def test_a_record_changes_only_what_may_change(store: Store) -> None:
    rec = Record(origin="GTJA", biz_type="XFER.OUT", biz_sn="T1", receiver="CCB", msg_id="M1",
                 content_hash="h", state="PENDING", trade_date="2026-11-25", amount_fen=100)
    store.records.insert(rec, 1.0)
    store.records.update(rec.key, 2.0, state="SUCCEEDED", result="0000",
                         response_xml=b"<Msg/>", bank_sn=None)
    got = store.records.get(rec.key)
    assert got is not None and (got.state, got.result, got.response_xml, got.bank_sn) == (
        "SUCCEEDED", "0000", b"<Msg/>", None)
    with pytest.raises(ValueError):
        store.records.update(rec.key, 3.0, amount_fen=1)
    assert store.records.by_msg("CCB", "GTJA", "M1") == got
    assert store.records.by_repeat("CCB", "GTJA", "M2") is None
    store.records.asked_again(rec.key, "CCB", "M2", 3.0)
    assert store.records.by_repeat("CCB", "GTJA", "M2") == got
    assert store.records.open("PENDING") == []
    store.uow.flush()


def test_every_attempt_at_a_reversal_finds_it(store: Store) -> None:
    key = ("GTJA", "XFER.OUT", "T1")
    store.reversals.queue(Reversal(*key, receiver="CCB", reversal_sn="GW01R1", amount_fen=100,
                                   state="QUEUED", attempts=0, next_at=0.0, last_msg_id=None,
                                   result=None, queued_at=0.0))
    store.reversals.attempted(key, "CCB", "GW01M1", 1.0, attempts=1)
    store.reversals.attempted(key, "CCB", "GW01M2", 2.0, attempts=2)
    latest = store.reversals.of(key)
    assert latest is not None and (latest.attempts, latest.last_msg_id) == (2, "GW01M2")
    assert store.reversals.by_msg("CCB", "GW01M1") is None  # not the latest
    assert store.reversals.by_attempt("CCB", "GW01M1") == latest
    assert store.reversals.by_attempt("BOC", "GW01M1") is None
    assert store.reversals.backlog(10.0) == (1, 10.0)
    store.uow.flush()


def test_an_agreement_binds_only_when_active_and_of_its_parties(store: Store) -> None:
    store.agreements.insert(Agreement(None, "GTJA", "CCB", FUND, WALLET, "1", "PERSONAL",
                                      "PENDING", "2026-11-25", None, "v1:x", "01", "v1:y",
                                      None, "GTJAS1"))
    assert not store.agreements.binds(FUND, WALLET, ("GTJA", "CCB"))
    store.agreements.settle("GTJA", "GTJAS1", "ACTIVE", "AG1")
    assert store.agreements.binds(FUND, WALLET, ("CCB", "GTJA"))
    assert not store.agreements.binds(FUND, WALLET, ("GTJA", "BOC"))
    found = store.agreements.by_no("AG1")
    assert found is not None and store.agreements.find(wallet_id=WALLET, active_only=True) == [
        found]
    store.uow.flush()


def test_a_read_only_open_refuses_another_schema_saying_what_to_do(tmp_path: Path) -> None:
    """``journal show`` beside a gateway of another release: refused, with the remedy."""
    from gateway.store import StoreUnavailable

    path = tmp_path / "j.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "PRAGMA user_version=1;")
    db.close()
    with pytest.raises(StoreUnavailable, match="version 1, this gateway reads .*: start this"
                                               " gateway once to migrate it"):
        SqliteStore(path, read_only=True)
    SqliteStore(path).close()  # migrated
    SqliteStore(path, read_only=True).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreUnavailable, match="use the gateway release that wrote it"):
        SqliteStore(path, read_only=True)
    with pytest.raises(StoreUnavailable):
        SqliteStore(tmp_path / "missing.sqlite3", read_only=True)
