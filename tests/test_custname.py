"""CustName is client identity (PROTOCOL §4, issue 18 defect 5): encrypted in transit
with the session's data key, its 1-60 characters checked after decryption, sealed at
rest by the gateway and by the reference peers, re-encrypted for the next hop."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from inproc import inproc_day

from gateway.fieldcrypto import StorageCipher
from gateway.keystore import KeyStore
from gateway.sim.broker import BrokerBook
from gateway.sim.ledger import Ledger
from gateway.sim.outbox import Entry, Outbox
from gateway.sim.runtime import open_books, storage_cipher

from conftest import BANK, BROKER
from flows import answer, call, sign_fields


@pytest.fixture
def day(tmp_path):  # type: ignore[no-untyped-def]
    """conftest's ``day`` in process (tests/inproc.py): these rules need no sockets."""
    with inproc_day(tmp_path, relay_timeout_seconds=1.5, reversal_retry_initial_seconds=0.5,
                    reversal_retry_max_seconds=1.0) as running:
        yield running

#: A name found nowhere else in the code or the fixtures, so a byte search is meaningful.
NAME = "司马相如"
ENCRYPTED = ("CustName", "IdNo", "Phone")


def named(biz_sn: str, name: str) -> list[tuple[str, object]]:
    return [(k, name if k == "CustName" else v) for k, v in sign_fields(biz_sn)]


def data_bytes(root: Path) -> bytes:
    """Every byte the gateway keeps under data/ (the journal, its -wal and -shm)."""
    return b"".join(p.read_bytes() for p in sorted((root / "data").rglob("*")) if p.is_file())


def test_a_clear_custname_is_a_schema_error(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    rsp = call(broker, "CTS.SIGN.REQ", sign_fields("GTJAS1"), encrypt=("IdNo", "Phone"))
    assert rsp.type == "SYS.ERROR" and rsp.body["Code"] == "E111", rsp.body
    assert "CustName" in rsp.body["Text"]
    q = call(broker, "CTS.QUERY.REQ", [("FundAcct", sign_fields("x")[1][1])], to="GW01")
    assert q.records("Agreement") == []  # nothing was registered


def test_custname_is_relayed_reencrypted_and_kept_sealed(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    msg_id = broker.send("CTS.SIGN.REQ", named("GTJAS1", NAME), to=BANK, encrypt=ENCRYPTED)
    req = answer(bank, AgreementNo="AGGTJAS1")
    assert broker._answer_to(msg_id, "CTS.SIGN.REQ").body["Result"] == "0000"
    # the bank gets it under its own session key and reads the original name
    assert req.xml.count(b'<CustName enc="A256GCM">') == 1
    assert bank.decrypt(msg_id, "CustName", req.body["CustName"], req.key_id) == NAME
    assert NAME.encode() not in req.xml
    # at rest: the agreement holds the name sealed with the storage key, bound to the sign
    db = sqlite3.connect(gw.home.root / "data" / "journal.sqlite3")
    token, = db.execute("SELECT cust_name FROM agreement").fetchone()
    assert token.startswith("v1:") and NAME not in token
    cipher = StorageCipher(KeyStore(gw.home.root / "keys").storage_key())
    assert cipher.open(token, f"{BROKER}/GTJAS1/CustName") == NAME
    # the evidence rows, IN and OUT, hold ciphertext only
    rows = db.execute("SELECT direction, xml FROM message WHERE msg_type='CTS.SIGN.REQ'"
                      " ORDER BY id").fetchall()
    assert [d for d, _ in rows] == ["IN", "OUT"]
    for _, xml in rows:
        assert b'<CustName enc="A256GCM">' in xml and NAME.encode() not in xml
    db.close()
    # and nothing the gateway wrote holds the name in clear: files, WAL, log
    assert NAME.encode() not in data_bytes(gw.home.root)
    assert NAME not in gw.log_text()


@pytest.mark.parametrize("name", ["张" * 61, ""], ids=["61-chars", "empty"])
def test_a_decrypted_custname_outside_1_to_60_characters_is_e111(day, name: str) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    rsp = call(broker, "CTS.SIGN.REQ", named("GTJAS1", name), encrypt=ENCRYPTED)
    assert rsp.type == "SYS.ERROR" and rsp.body["Code"] == "E111", rsp.body
    assert "Msg/Body/CtsSignReq/CustName" in rsp.body["Text"], rsp.body["Text"]
    assert f"{len(name)} characters" in rsp.body["Text"]
    # nothing was recorded: the same BizSn with a name of 60 Chinese characters is new
    msg_id = broker.send("CTS.SIGN.REQ", named("GTJAS1", "张" * 60), to=BANK,
                         encrypt=ENCRYPTED)
    req = answer(bank, AgreementNo="AGGTJAS1")
    assert bank.decrypt(msg_id, "CustName", req.body["CustName"], req.key_id) == "张" * 60
    assert broker._answer_to(msg_id, "CTS.SIGN.REQ").body["Result"] == "0000"


# --- the reference peers' books ---------------------------------------------------------
def test_sim_books_keep_the_client_identity_sealed(tmp_path: Path) -> None:
    journal, ledger = open_books(tmp_path, BROKER)
    BrokerBook(ledger, BROKER, lambda: "2026-12-02", lambda: "t").seed()
    client = BrokerBook(ledger, BROKER, lambda: "2026-12-02", lambda: "t").client("100020003000")
    assert client is not None and (client.name, client.id_no) == ("张三", "110101199003071234")
    outbox = Outbox(ledger)
    outbox.add(Entry("GTJA|CTS.SIGN|GTJAS1", "CTS.SIGN.REQ", BANK,
                     {"BizSn": "GTJAS1", "CustName": "", "IdNo": ""},
                     {"CustName": NAME, "IdNo": "110101199003071234"}, at="t"))
    journal.close()
    ledger.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").iterdir())
    for clear in ("张三", "李四", NAME, "110101199003071234"):
        assert clear.encode() not in raw, clear
    assert (tmp_path / "keys" / f"{BROKER}.storage.key").stat().st_mode & 0o777 == 0o600
    journal, ledger = open_books(tmp_path, BROKER)  # a restarted sim reads them back
    again = Outbox(ledger).get("GTJA|CTS.SIGN|GTJAS1")
    assert again is not None and again.secret == {"CustName": NAME,
                                                  "IdNo": "110101199003071234"}
    assert ledger.account("100020003000").name == "张三"  # type: ignore[union-attr]
    journal.close()
    ledger.close()


def test_sim_books_of_an_earlier_version_are_sealed_when_opened(tmp_path: Path) -> None:
    """A ledger written before sealing (clear names, a CustName in an outbox body) is
    sealed on the first open with the key, and a repeat sends the name encrypted."""
    path = tmp_path / "data" / f"{BROKER}-ledger.sqlite3"
    old = Ledger(path)  # no key: as an earlier version wrote it
    BrokerBook(old, BROKER, lambda: "2026-12-02", lambda: "t").seed()
    Outbox(old).add(Entry("GTJA|CTS.SIGN|GTJAS1", "CTS.SIGN.REQ", BANK,
                          {"BizSn": "GTJAS1", "CustName": NAME, "IdNo": ""},
                          {"IdNo": "110101199003071234"}, at="t"))
    old.close()
    assert NAME.encode() in path.read_bytes() or NAME.encode() in data_bytes(tmp_path)
    ledger = Ledger(path, group_commit=True, sealer=storage_cipher(tmp_path, BROKER))
    entry = Outbox(ledger).get("GTJA|CTS.SIGN|GTJAS1")
    assert entry is not None and entry.body["CustName"] == ""
    assert entry.secret == {"IdNo": "110101199003071234", "CustName": NAME}
    assert ledger.account("100020003000").name == "张三"  # type: ignore[union-attr]
    ledger.close()
    raw = data_bytes(tmp_path)
    assert NAME.encode() not in raw and "张三".encode() not in raw
