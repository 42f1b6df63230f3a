"""Issue 17: no sequence of legal, correctly signed messages creates, loses or doubles money.

Each test replays one sequence an adversarial run found (cases 1-5) against a real gateway
over loopback, with real keys and its real SQLite journal (PROTOCOL §6 "Money invariant",
the XFER.REVERSE / PAY.REFUND / OTC.REDEEM rows, §4 TradeDate).
"""
from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

import pytest
from inproc import inproc_day

from conftest import BANK, BROKER
from flows import CORP, call, otc, pay, sign_fields, signed, xfer
from peer import CN, TestPeer


@pytest.fixture
def day(tmp_path):  # type: ignore[no-untyped-def]
    """conftest's ``day`` in process (tests/inproc.py): these rules need no sockets; a
    peer waiting for a frame lets the gateway's time pass."""
    with inproc_day(tmp_path, relay_timeout_seconds=1.5, reversal_retry_initial_seconds=0.5,
                    reversal_retry_max_seconds=1.0) as running:
        yield running


GW = "GW01"


def _end() -> str:
    return (dt.date.today() + dt.timedelta(days=30)).isoformat()


def reverse(sn: str, otype: str, osn: str, amount: str, ofrom: str = BROKER
            ) -> list[tuple[str, Any]]:
    return [("BizSn", sn), ("OrigType", otype), ("OrigFrom", ofrom), ("OrigBizSn", osn),
            ("Amount", amount)]


def refund(sn: str, osn: str, amount: str) -> list[tuple[str, Any]]:
    return [("BizSn", sn), ("OrigBizSn", osn), ("Amount", amount)]


def redeem(sn: str, osn: str, amount: str) -> list[tuple[str, Any]]:
    return [("BizSn", sn), ("OrigBizSn", osn), ("CorpWalletId", CORP), ("Amount", amount)]


def subscribe(sn: str, amount: str) -> list[tuple[str, Any]]:
    return [(k, amount if k == "Amount" else v) for k, v in otc(sn)]


def not_relayed(bank: TestPeer, timeout: float = 0.6) -> None:
    with pytest.raises(TimeoutError):
        bank.recv(timeout=timeout)


def dated(peer: TestPeer, msg_type: str, fields: list[tuple[str, Any]], day: str) -> Any:
    msg_id = peer.send(msg_type, fields, to=BANK, trade_date=day)
    return peer._answer_to(msg_id, msg_type)


def status(broker: TestPeer, sn: str, otype: str) -> str:
    q = call(broker, "XFER.QUERY.REQ", [("BizSn", sn), ("OrigType", otype)], to=GW)
    return q.records("Record")[0]["Status"]


# --- case 1: a refund then a reversal of the same order ------------------------------
def test_a_refunded_order_cannot_be_reversed_and_a_reversed_one_cannot_be_refunded(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    assert call(broker, "PAY.ORDER.REQ", pay("GTJAP1", _end(), "199.00"),
                bank=bank).body["Result"] == "0000"
    assert call(broker, "PAY.REFUND.REQ", refund("GTJAF1", "GTJAP1", "199.00"),
                bank=bank).body["Result"] == "0000"
    rsp = call(broker, "XFER.REVERSE.REQ", reverse("GTJAV1", "PAY.ORDER", "GTJAP1", "199.00"))
    assert (rsp.head("From"), rsp.body["Result"]) == (GW, "B314"), rsp.body
    not_relayed(bank)
    # the mirror: a reversal first, then a refund: B314 (before B313 and B311)
    assert call(broker, "PAY.ORDER.REQ", pay("GTJAP2", _end(), "199.00"),
                bank=bank).body["Result"] == "0000"
    assert call(broker, "XFER.REVERSE.REQ", reverse("GTJAV2", "PAY.ORDER", "GTJAP2", "199.00"),
                bank=bank).body["Result"] == "0000"
    for i, amount in enumerate(("1.00", "199.00", "500.00")):
        rsp = call(broker, "PAY.REFUND.REQ", refund(f"GTJAF2{i}", "GTJAP2", amount))
        assert rsp.body["Result"] == "B314", rsp.body
    not_relayed(bank)


def test_partial_refunds_never_total_more_than_the_order(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    call(broker, "PAY.ORDER.REQ", pay("GTJAP1", _end(), "199.00"), bank=bank)
    assert call(broker, "PAY.REFUND.REQ", refund("GTJAF1", "GTJAP1", "100.00"),
                bank=bank).body["Result"] == "0000"
    # a refund in flight counts: the bank holds this one's answer
    held = broker.send("PAY.REFUND.REQ", refund("GTJAF2", "GTJAP1", "50.00"), to=BANK)
    held_req = bank.recv("PAY.REFUND.REQ")
    rsp = call(broker, "PAY.REFUND.REQ", refund("GTJAF3", "GTJAP1", "50.00"))
    assert rsp.body["Result"] == "B311" and "49.00" in rsp.body["ResultText"], rsp.body
    # the held one fails: its 50.00 is free again
    bank.send("PAY.REFUND.RSP", [("Result", "B310"), ("ResultText", "no"),
                                 ("BizSn", "GTJAF2")], to=BROKER, ref=held_req.head("MsgId"))
    assert broker._answer_to(held, "PAY.REFUND.REQ").body["Result"] == "B310"
    assert call(broker, "PAY.REFUND.REQ", refund("GTJAF4", "GTJAP1", "99.00"),
                bank=bank).body["Result"] == "0000"
    rsp = call(broker, "PAY.REFUND.REQ", refund("GTJAF5", "GTJAP1", "0.01"))
    assert rsp.body["Result"] == "B314", rsp.body  # fully given back
    not_relayed(bank)


# --- case 2: redemptions checked in total ----------------------------------------------
def test_redemptions_are_checked_in_total_and_block_a_reversal(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    assert call(broker, "OTC.SUBSCRIBE.REQ", subscribe("GTJAO1", "1000.00"),
                bank=bank).body["Result"] == "0000"
    assert call(broker, "OTC.REDEEM.REQ", redeem("GTJAR1", "GTJAO1", "600.00"),
                bank=bank).body["Result"] == "0000"
    for sn in ("GTJAR2", "GTJAR3"):
        rsp = call(broker, "OTC.REDEEM.REQ", redeem(sn, "GTJAO1", "600.00"))
        assert rsp.body["Result"] == "B311", rsp.body
    rsp = call(broker, "XFER.REVERSE.REQ",
               reverse("GTJAV1", "OTC.SUBSCRIBE", "GTJAO1", "1000.00"))
    assert rsp.body["Result"] == "B314", rsp.body
    not_relayed(bank)
    assert call(broker, "OTC.REDEEM.REQ", redeem("GTJAR4", "GTJAO1", "400.00"),
                bank=bank).body["Result"] == "0000"
    assert call(broker, "OTC.REDEEM.REQ", redeem("GTJAR5", "GTJAO1", "0.01")
                ).body["Result"] == "B314"
    db = sqlite3.connect(gw.home.root / "data" / "journal.sqlite3")
    given = db.execute("SELECT sum(amount_fen) FROM record WHERE biz_type='OTC.REDEEM' AND "
                       "state='SUCCEEDED'").fetchone()[0]
    assert given == 100000


def test_a_redemption_in_flight_counts_and_a_reversal_in_flight_blocks_redemptions(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    call(broker, "OTC.SUBSCRIBE.REQ", subscribe("GTJAO1", "1000.00"), bank=bank)
    broker.send("OTC.REDEEM.REQ", redeem("GTJAR1", "GTJAO1", "600.00"), to=BANK)
    bank.recv("OTC.REDEEM.REQ")  # held
    assert call(broker, "OTC.REDEEM.REQ", redeem("GTJAR2", "GTJAO1", "600.00")
                ).body["Result"] == "B311"
    assert call(broker, "XFER.REVERSE.REQ", reverse("GTJAV1", "OTC.SUBSCRIBE", "GTJAO1",
                                                    "1000.00")).body["Result"] == "B314"
    call(broker, "OTC.SUBSCRIBE.REQ", subscribe("GTJAO2", "1000.00"), bank=bank)
    broker.send("XFER.REVERSE.REQ", reverse("GTJAV2", "OTC.SUBSCRIBE", "GTJAO2", "1000.00"),
                to=BANK)
    bank.recv("XFER.REVERSE.REQ")  # held
    assert call(broker, "OTC.REDEEM.REQ", redeem("GTJAR3", "GTJAO2", "1.00")
                ).body["Result"] == "B314"


# --- case 3: the classic 冲正 race ---------------------------------------------------------
def test_a_late_original_answer_after_its_reversal_is_journaled_never_relayed(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker, "GTJAS1")
    original_id = broker.send("XFER.IN.REQ", xfer("GTJAT1", "300.00"), to=BANK)
    original = bank.recv("XFER.IN.REQ")  # booked by the bank; its answer is held back
    rev_id = broker.send("XFER.REVERSE.REQ", reverse("GTJAV1", "XFER.IN", "GTJAT1", "300.00"),
                         to=BANK)
    rev = bank.recv("XFER.REVERSE.REQ")
    bank.send("XFER.REVERSE.RSP", [("Result", "0000"), ("ResultText", "reversed"),
                                   ("BizSn", "GTJAV1")], to=BROKER, ref=rev.head("MsgId"))
    assert broker._answer_to(rev_id, "XFER.REVERSE.REQ").body["Result"] == "0000"
    # the originator gets B314 as the original's answer
    first = broker._answer_to(original_id, "XFER.IN.REQ")
    assert (first.head("From"), first.body["Result"]) == (GW, "B314"), first.body
    late_id = bank.send("XFER.IN.RSP", [("Result", "0000"), ("ResultText", "late"),
                                        ("BizSn", "GTJAT1"), ("BankSn", "B1"),
                                        ("SweepRef", "SW1")],
                        to=BROKER, ref=original.head("MsgId"))
    with pytest.raises(TimeoutError):
        broker.recv("XFER.IN.RSP", timeout=0.8)
    assert status(broker, "GTJAT1", "XFER.IN") == "REVERSED"
    # a repeat of the original is answered as its originator was: B314
    assert call(broker, "XFER.IN.REQ", xfer("GTJAT1", "300.00")).body["Result"] == "B314"
    db = sqlite3.connect(gw.home.root / "data" / "journal.sqlite3")
    assert db.execute("SELECT direction FROM message WHERE msg_id=?",
                      (late_id,)).fetchall() == [("IN",)]
    states = dict(db.execute("SELECT biz_sn, state FROM record WHERE biz_sn IN "
                             "('GTJAT1', 'GTJAV1')").fetchall())
    assert states == {"GTJAT1": "REVERSED", "GTJAV1": "SUCCEEDED"}


def test_a_peers_reversal_that_times_out_joins_the_durable_queue(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day  # relay timeout 1.5 s, reversal retries 0.5-1 s
    signed(bank, broker, "GTJAS1")
    original_id = broker.send("XFER.OUT.REQ", xfer("GTJAT1", "80.00"), to=BANK)
    bank.recv("XFER.OUT.REQ")  # never answered
    rev_id = broker.send("XFER.REVERSE.REQ", reverse("GTJAV1", "XFER.OUT", "GTJAT1", "80.00"),
                         to=BANK)
    bank.recv("XFER.REVERSE.REQ")  # never answered either
    assert broker._answer_to(rev_id, "XFER.REVERSE.REQ").body["Result"] == "B330"
    ours = bank.recv("XFER.REVERSE.REQ", timeout=5)
    assert ours.head("From") == GW and ours.body["BizSn"].startswith(GW)
    assert (ours.body["OrigType"], ours.body["OrigBizSn"]) == ("XFER.OUT", "GTJAT1")
    # still unacknowledged: asked again, the peer's reversal is B330
    assert call(broker, "XFER.REVERSE.REQ", reverse("GTJAV1", "XFER.OUT", "GTJAT1", "80.00")
                ).body["Result"] == "B330"
    bank.send("XFER.REVERSE.RSP", [("Result", "0000"), ("ResultText", "ok"),
                                   ("BizSn", ours.body["BizSn"])], to=GW, ref=ours.head("MsgId"))
    assert broker._answer_to(original_id, "XFER.OUT.REQ").body["Result"] == "B314"
    assert status(broker, "GTJAT1", "XFER.OUT") == "REVERSED"
    assert call(broker, "XFER.REVERSE.REQ", reverse("GTJAV1", "XFER.OUT", "GTJAT1", "80.00")
                ).body["Result"] == "0000"


def test_a_failed_reversal_puts_its_original_back_in_flight(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker, "GTJAS1")
    original_id = broker.send("XFER.IN.REQ", xfer("GTJAT1", "10.00"), to=BANK)
    original = bank.recv("XFER.IN.REQ")
    rev_id = broker.send("XFER.REVERSE.REQ", reverse("GTJAV1", "XFER.IN", "GTJAT1", "10.00"),
                         to=BANK)
    rev = bank.recv("XFER.REVERSE.REQ")
    bank.send("XFER.REVERSE.RSP", [("Result", "B399"), ("ResultText", "no"),
                                   ("BizSn", "GTJAV1")], to=BROKER, ref=rev.head("MsgId"))
    assert broker._answer_to(rev_id, "XFER.REVERSE.REQ").body["Result"] == "B399"
    bank.send("XFER.IN.RSP", [("Result", "0000"), ("ResultText", "ok"), ("BizSn", "GTJAT1"),
                              ("BankSn", "B1"), ("SweepRef", "SW1")], to=BROKER,
              ref=original.head("MsgId"))
    assert broker._answer_to(original_id, "XFER.IN.REQ").body["Result"] == "0000"
    assert status(broker, "GTJAT1", "XFER.IN") == "SUCCEEDED"


# --- case 4: an AgreementNo already in use ------------------------------------------------
def test_a_sign_answered_with_an_agreement_no_in_use_fails_cleanly(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker, "GTJAS1")  # AgreementNo AGGTJAS1
    other = sign_fields("GTJAS2", fund="200020003000", wallet="0071130812090002")
    rsp = call(broker, "CTS.SIGN.REQ", other, bank=bank, encrypt=("CustName", "IdNo", "Phone"),
               AgreementNo="AGGTJAS1")
    assert (rsp.head("From"), rsp.body["Result"]) == (GW, "B399"), rsp.body
    assert "AGGTJAS1" in rsp.body["ResultText"]
    gw.wait_for_log(r"ALERT .*agreement_conflict")
    # the wallet and fund account are free again: a new sign of them is relayed
    again = sign_fields("GTJAS3", fund="200020003000", wallet="0071130812090002")
    assert call(broker, "CTS.SIGN.REQ", again, bank=bank, encrypt=("CustName", "IdNo", "Phone"),
                AgreementNo="AGNEW").body["Result"] == "0000"
    db = sqlite3.connect(gw.home.root / "data" / "journal.sqlite3")
    assert db.execute("SELECT state, result FROM record WHERE biz_sn='GTJAS2'").fetchone() \
        == ("FAILED", "B399")
    assert db.execute("SELECT kind FROM alert").fetchall() == [("agreement_conflict",)]
    assert "S900" not in gw.log_text() and "Traceback" not in gw.log_text()


# --- case 5: the trade date is the gateway's -----------------------------------------------
def test_a_request_of_another_trade_date_is_b320_and_records_keep_the_gateways(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker, "GTJAS1")
    today = dt.datetime.now(CN).date().isoformat()
    rsp = dated(broker, "XFER.IN.REQ", xfer("GTJAT1"), "2099-12-31")
    assert (rsp.head("From"), rsp.body["Result"]) == (GW, "B320"), rsp.body
    not_relayed(bank)
    # not journaled: the same request with the right date is new, and relayed
    assert call(broker, "XFER.IN.REQ", xfer("GTJAT1"), bank=bank).body["Result"] == "0000"
    # a repeat is answered as before, whatever its date
    again = dated(broker, "XFER.IN.REQ", xfer("GTJAT1"), "2099-12-31")
    assert again.body["Result"] == "0000", again.body
    not_relayed(bank)
    db = sqlite3.connect(gw.home.root / "data" / "journal.sqlite3")
    assert db.execute("SELECT DISTINCT trade_date FROM record").fetchall() == [(today,)]
