"""``gateway journal show BIZSN [--from PARTY] [--json]`` (PROTOCOL §9, issue 19): one
business record and its messages from the journal of a real day on loopback, PII masked
and nothing decrypted (docs/operations.md "journal show")."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.journalshow import mask

from conftest import BANK, BROKER
from flows import FUND, WALLET, answer, call, sign_fields, signed, xfer

#: What the day's CTS.SIGN carried in clear before its fields were encrypted.
PII = ("张三", "110101199003071234", "13800138000")


def show(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--home", str(home), "journal",
                           "show", *args], capture_output=True, text=True, timeout=60)


def shown_json(home: Path, *args: str) -> dict[str, Any]:
    out = show(home, *args, "--json")
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def assert_nothing_private(text: str) -> None:
    for value in (*PII, FUND, WALLET):
        assert value not in text, value


def test_mask_keeps_the_last_four_characters() -> None:
    assert mask("100020003000") == "********3000"
    assert mask("1234") == "****" and mask("") == "" and mask(None) is None


def test_a_transfer_shows_its_record_and_four_messages(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker)
    msg_id = broker.send("XFER.OUT.REQ", xfer("GTJAJS1", amount="123.45"), to=BANK)
    request = answer(bank)
    rsp = broker._answer_to(msg_id, "XFER.OUT.REQ")
    assert rsp.body["Result"] == "0000"
    home = gw.home.root
    data = shown_json(home, "GTJAJS1")  # beside the running gateway: read-only
    assert data["biz_sn"] == "GTJAJS1" and len(data["records"]) == 1
    rec = data["records"][0]
    assert (rec["type"], rec["from"], rec["to"], rec["state"], rec["result"], rec["amount"]) \
        == ("XFER.OUT", BROKER, BANK, "SUCCEEDED", "0000", "123.45")
    assert rec["bank_sn"] == "BSGTJAJS1" and rec["msg_id"] == msg_id
    assert rec["fund_acct"] == mask(FUND) and rec["wallet_id"] == mask(WALLET)
    assert rec["given_back"] == {"moved": "123.45", "given": "0.00", "left": "123.45"}
    seen = [(m["direction"], m["party"], m["type"], m["msg_id"], m["ref_id"])
            for m in rec["messages"]]
    answer_id = rsp.head("MsgId")
    assert seen == [("IN", BROKER, "XFER.OUT.REQ", msg_id, None),
                    ("OUT", BANK, "XFER.OUT.REQ", msg_id, None),
                    ("IN", BANK, "XFER.OUT.RSP", answer_id, msg_id),
                    ("OUT", BROKER, "XFER.OUT.RSP", answer_id, msg_id)], seen
    assert request.head("MsgId") == msg_id
    for m in rec["messages"]:
        assert m["session"].startswith("S") and m["time"].endswith("+08:00")
        assert m["body"]["BizSn"] == "GTJAJS1"
        if m["type"] == "XFER.OUT.REQ":
            assert m["body"]["FundAcct"] == mask(FUND), m["body"]
    assert rec["messages"][0]["signer"] == broker.signer  # the hop's signer, as received
    text = show(home, "GTJAJS1")
    assert text.returncode == 0, text.stderr
    assert "XFER.OUT GTJAJS1 from GTJA to CCB: SUCCEEDED (result 0000)" in text.stdout
    assert f"MsgId {answer_id} RefId {msg_id} Result 0000" in text.stdout
    assert_nothing_private(text.stdout + json.dumps(data, ensure_ascii=False))


def test_a_signing_shows_no_client_identity_and_decrypts_nothing(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker, "GTJAJS2")
    home = gw.home.root
    data = shown_json(home, "GTJAJS2")
    rec = data["records"][0]
    assert (rec["type"], rec["state"], rec["agreement_no"]) == ("CTS.SIGN", "SUCCEEDED",
                                                               "AGGTJAJS2")
    requests = [m for m in rec["messages"] if m["type"] == "CTS.SIGN.REQ"]
    assert [m["direction"] for m in requests] == ["IN", "OUT"]
    for m in requests:
        body = m["body"]
        for name in ("CustName", "IdNo", "Phone"):
            assert body[name] == "(encrypted: not shown)", body
        assert body["WalletId"] == mask(WALLET) and body["IdType"] == "01"
    out = show(home, "GTJAJS2").stdout + show(home, "GTJAJS2", "--json").stdout
    assert_nothing_private(out)
    # not even the ciphertexts: the journal holds them, the output does not
    import sqlite3

    db = sqlite3.connect(home / "data" / "journal.sqlite3")
    xml = db.execute("SELECT xml FROM message WHERE msg_type='CTS.SIGN.REQ'").fetchone()[0]
    cipher = xml.split(b"<CustName")[1].split(b">", 1)[1].split(b"<", 1)[0].decode()
    assert len(cipher) > 20 and cipher not in out


def test_a_timed_out_transfer_shows_the_gateways_reversal(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker)
    msg_id = broker.send("XFER.IN.REQ", xfer("GTJAJS3", amount="250.00"), to=BANK)
    bank.recv("XFER.IN.REQ")  # never answered: B330 after 1.5 s, then the reversal
    assert broker._answer_to(msg_id, "XFER.IN.REQ").body["Result"] == "B330"
    rev = bank.recv("XFER.REVERSE.REQ", timeout=5)
    bank.send("XFER.REVERSE.RSP", [("Result", "0000"), ("ResultText", "reversed"),
                                   ("BizSn", rev.body["BizSn"])], to="GW01",
              ref=rev.head("MsgId"))
    gw.wait_for_log("REVERSED")
    gw.stop()  # and after the gateway stopped
    rec = shown_json(gw.home.root, "GTJAJS3")["records"][0]
    assert (rec["type"], rec["state"], rec["amount"]) == ("XFER.IN", "REVERSED", "250.00")
    r = rec["gateway_reversal"]
    assert (r["biz_sn"], r["to"], r["state"], r["result"], r["amount"]) == (
        rev.body["BizSn"], BANK, "DONE", "0000", "250.00")
    assert r["last_msg_id"] == rev.head("MsgId") and r["attempts"] >= 1
    types = [(m["direction"], m["type"]) for m in rec["messages"]]
    assert types[:3] == [("IN", "XFER.IN.REQ"), ("OUT", "XFER.IN.REQ"),
                         ("OUT", "XFER.IN.RSP")], types  # B330, the gateway's own answer
    assert ("OUT", "XFER.REVERSE.REQ") in types and ("IN", "XFER.REVERSE.RSP") in types
    own = next(m for m in rec["messages"] if m["type"] == "XFER.IN.RSP")
    assert own["from"] == "GW01" and own["body"]["Result"] == "B330"
    text = show(gw.home.root, "GTJAJS3").stdout
    assert "gateway reversal" in text and "DONE" in text


def test_several_records_with_one_bizsn_are_all_shown(day) -> None:  # type: ignore[no-untyped-def]
    """A BizSn is unique per From and Type (§6): the broker's sign and its transfer with
    the same serial are both listed; --from names the originator."""
    gw, bank, broker = day
    signed(bank, broker, "GTJAJS4")
    assert call(broker, "XFER.OUT.REQ", xfer("GTJAJS4"), bank=bank).body["Result"] == "0000"
    home = gw.home.root
    both = shown_json(home, "GTJAJS4")["records"]
    assert [(r["from"], r["type"]) for r in both] == [(BROKER, "CTS.SIGN"), (BROKER, "XFER.OUT")]
    assert shown_json(home, "GTJAJS4", "--from", BROKER)["records"] == both
    assert show(home, "GTJAJS4", "--from", BANK).returncode == 1


def test_find_records_probes_the_partyid_prefixes_and_scans_for_older_serials(
        tmp_path: Path) -> None:
    """Unit: records of any originator whose PartyId begins the BizSn are found through
    the index; a serial from before §4's prefix rule (no such prefix) by a scan."""
    from gateway.journal import Journal, Record
    from gateway.journalshow import find_records

    journal = Journal(tmp_path / "j.sqlite3")
    for origin, biz_type, sn in (("GTJA", "XFER.OUT", "GTJA9"), ("GT", "XFER.IN", "GTJA9"),
                                 ("CCB", "XFER.IN", "OLD1"), ("GTJA", "XFER.OUT", "GTJA99")):
        journal.insert_record(Record(origin=origin, biz_type=biz_type, biz_sn=sn,
                                     receiver="X", msg_id=f"M{origin}{sn}", content_hash="h",
                                     state="SUCCEEDED", trade_date="2026-12-02",
                                     amount_fen=100), 1.0)
    journal.flush()
    assert {(r.origin, r.biz_type) for r in find_records(journal, "GTJA9", None)} == {
        ("GTJA", "XFER.OUT"), ("GT", "XFER.IN")}
    assert [r.origin for r in find_records(journal, "GTJA9", "GT")] == ["GT"]
    assert [r.origin for r in find_records(journal, "OLD1", None)] == ["CCB"]
    assert find_records(journal, "NOPE1", None) == []
    journal.close()


def test_no_such_record_is_exit_1(day, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw, _, _ = day
    out = show(gw.home.root, "GTJANOPE")
    assert out.returncode == 1 and "no record GTJANOPE" in out.stderr and out.stdout == ""
    out = show(gw.home.root, "GTJAJS1", "--from", BANK)
    assert out.returncode == 1 and "no record GTJAJS1 from CCB" in out.stderr
    empty = show(tmp_path, "GTJA1")
    assert empty.returncode == 1 and "no journal" in empty.stderr
    assert not (tmp_path / "data").exists()  # read-only: nothing made


def test_sign_fields_are_what_the_day_sent() -> None:
    """The PII this file looks for is what flows.sign_fields sends (so the checks above
    cannot pass by looking for the wrong values)."""
    fields = dict(sign_fields("GTJAX"))
    assert (fields["CustName"], fields["IdNo"], fields["Phone"]) == PII
