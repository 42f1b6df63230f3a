"""PROTOCOL §6 business rules end to end over real sockets (issue 5)."""
from __future__ import annotations

import datetime as dt
import sqlite3
import time

import pytest
from inproc import inproc_day

from conftest import BANK, BROKER
from flows import (
    CORP,
    FAST_REVERSALS,
    FUND,
    WALLET,
    answer,
    call,
    otc,
    pay,
    sign_fields,
    signed,
    signed_pair,
    xfer,
)


@pytest.fixture
def day(tmp_path):  # type: ignore[no-untyped-def]
    """conftest's ``day`` in process (tests/inproc.py): these rules need no sockets; a
    peer waiting for a frame lets the gateway's time pass."""
    with inproc_day(tmp_path, relay_timeout_seconds=1.5, reversal_retry_initial_seconds=0.5,
                    reversal_retry_max_seconds=1.0) as running:
        yield running



def test_sign_relays_reencrypted_identity_and_registers_the_agreement(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    msg_id = broker.send("CTS.SIGN.REQ", sign_fields("GTJAS1"), to=BANK, encrypt=("CustName", "IdNo", "Phone"))
    req = answer(bank, AgreementNo="AG1")
    assert bank.decrypt(msg_id, "IdNo", req.body["IdNo"], req.key_id) == "110101199003071234"
    assert bank.decrypt(msg_id, "Phone", req.body["Phone"], req.key_id) == "13800138000"
    assert broker._answer_to(msg_id, "CTS.SIGN.REQ").body["AgreementNo"] == "AG1"
    q = call(broker, "CTS.QUERY.REQ", [("FundAcct", FUND)], to="GW01")
    assert [(a["AgreementNo"], a["Status"]) for a in q.records("Agreement")] == [("AG1", "ACTIVE")]
    db = sqlite3.connect(gw.home.root / "data" / "journal.sqlite3")
    sealed, = db.execute("SELECT id_no_sealed FROM agreement").fetchone()
    assert "110101199003071234" not in sealed and sealed.startswith("v1:")
    raw = b"".join(r[0] for r in db.execute("SELECT xml FROM message"))
    assert b"110101199003071234" not in raw


def test_sign_rules_b302_and_b301(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    rsp = call(broker, "CTS.SIGN.REQ", sign_fields("GTJAS0", level="2"), encrypt=("CustName", "IdNo", "Phone"))
    assert rsp.body["Result"] == "B302"
    signed(bank, broker)
    again = call(broker, "CTS.SIGN.REQ", sign_fields("GTJAS2", wallet="0071130812099999"),
                 encrypt=("CustName", "IdNo", "Phone"))
    assert again.body["Result"] == "B301"
    other = call(broker, "CTS.SIGN.REQ", sign_fields("GTJAS3", fund="999988887777"),
                 encrypt=("CustName", "IdNo", "Phone"))
    assert other.body["Result"] == "B301"


def test_transfers_need_an_agreement_and_a_positive_amount(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    assert call(broker, "XFER.IN.REQ", xfer("GTJAT0")).body["Result"] == "B300"
    signed(bank, broker)
    assert call(broker, "XFER.IN.REQ", xfer("GTJAT1", amount="0.00")).body["Result"] == "B311"
    assert call(broker, "XFER.IN.REQ", xfer("GTJAT2", wallet="0071130812099999")).body["Result"] \
        == "B300"


def test_transfers_both_directions_keep_bank_sn_and_sweep_ref(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker)
    rsp = call(broker, "XFER.IN.REQ", xfer("GTJAT1"), bank=bank, BankSn="B1", SweepRef="SW1")
    assert (rsp.body["Result"], rsp.body["SweepRef"]) == ("0000", "SW1")
    # bank-initiated XFER.OUT to the broker
    msg_id = bank.send("XFER.OUT.REQ", xfer("CCBBK1"), to=BROKER)
    answer(broker, BankSn="B2")
    assert bank._answer_to(msg_id, "XFER.OUT.REQ").body["Result"] == "0000"
    q = call(bank, "XFER.QUERY.REQ", [("BizSn", "CCBBK1"), ("OrigType", "XFER.OUT")], to="GW01")
    rec = q.records("Record")[0]
    assert (rec["Status"], rec["Amount"], rec["BankSn"]) == ("SUCCEEDED", "100.00", "B2")


@pytest.mark.parametrize("kind", ["XFER.IN", "XFER.OUT", "PAY.ORDER", "OTC.SUBSCRIBE"])
def test_repeat_of_each_money_moving_type_is_not_relayed_twice(day, kind) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker)
    end = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    fields = {"XFER.IN": xfer("GTJAM1"), "XFER.OUT": xfer("GTJAM1"), "PAY.ORDER": pay("GTJAM1", end),
              "OTC.SUBSCRIBE": otc("GTJAM1")}[kind]
    first = call(broker, kind + ".REQ", fields, bank=bank, BankSn="BS1")
    second = call(broker, kind + ".REQ", fields)
    assert second.body == first.body
    with pytest.raises(TimeoutError):
        bank.recv(timeout=0.8)
    changed = [(k, "1.00" if k == "Amount" else v) for k, v in fields]
    assert call(broker, kind + ".REQ", changed).body["Result"] == "B312"


def test_unsign_rules_b300_b304_then_success(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    unsign = [("BizSn", "GTJAU1"), ("FundAcct", FUND), ("WalletId", WALLET), ("AgreementNo", "AGGTJAS1")]
    assert call(broker, "CTS.UNSIGN.REQ", unsign).body["Result"] == "B300"
    signed(bank, broker)
    end = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    assert call(broker, "PAY.ORDER.REQ", pay("GTJAP1", end), bank=bank).body["Result"] == "0000"
    unsign2 = [("BizSn", "GTJAU2"), *unsign[1:]]
    assert call(broker, "CTS.UNSIGN.REQ", unsign2).body["Result"] == "B304"
    refund = [("BizSn", "GTJAR1"), ("OrigBizSn", "GTJAP1"), ("Amount", "99.00")]
    assert call(broker, "PAY.REFUND.REQ", refund, bank=bank).body["Result"] == "0000"
    # a transfer in flight also blocks the unsign
    broker.send("XFER.IN.REQ", xfer("GTJAT9"), to=BANK)
    bank.recv("XFER.IN.REQ")  # the bank holds its answer
    unsign3 = [("BizSn", "GTJAU3"), *unsign[1:]]
    assert call(broker, "CTS.UNSIGN.REQ", unsign3).body["Result"] == "B304"
    broker.recv("XFER.IN.RSP", timeout=5)  # times out: B330, reversal
    bank.recv("XFER.REVERSE.REQ", timeout=5)  # not answered yet: still REVERSING
    unsign4 = [("BizSn", "GTJAU4"), *unsign[1:]]
    assert call(broker, "CTS.UNSIGN.REQ", unsign4).body["Result"] == "B304"


def test_unsign_succeeds_with_nothing_outstanding(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker)
    past = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    assert call(broker, "PAY.ORDER.REQ", pay("GTJAP1", past), bank=bank).body["Result"] == "0000"
    unsign = [("BizSn", "GTJAU1"), ("FundAcct", FUND), ("WalletId", WALLET), ("AgreementNo", "AGGTJAS1")]
    assert call(broker, "CTS.UNSIGN.REQ", unsign, bank=bank).body["Result"] == "0000"
    q = call(broker, "CTS.QUERY.REQ", [("WalletId", WALLET)], to="GW01")
    assert q.records("Agreement")[0]["Status"] == "ENDED"
    assert call(broker, "XFER.IN.REQ", xfer("GTJAT1")).body["Result"] == "B300"


def test_refund_rules_b313_and_b314(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    refund = [("BizSn", "GTJAR1"), ("OrigBizSn", "NOPE"), ("Amount", "1.00")]
    assert call(broker, "PAY.REFUND.REQ", refund).body["Result"] == "B313"
    end = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    assert call(broker, "PAY.ORDER.REQ", pay("GTJAP1", end), bank=bank).body["Result"] == "0000"
    ok = [("BizSn", "GTJAR2"), ("OrigBizSn", "GTJAP1"), ("Amount", "99.00")]
    assert call(broker, "PAY.REFUND.REQ", ok, bank=bank).body["Result"] == "0000"
    twice = [("BizSn", "GTJAR3"), ("OrigBizSn", "GTJAP1"), ("Amount", "99.00")]
    assert call(broker, "PAY.REFUND.REQ", twice).body["Result"] == "B314"


def test_otc_corporate_only_booking_date_and_redeem(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    assert call(broker, "OTC.SUBSCRIBE.REQ", otc("GTJAO1", kind="PERSONAL")).body["Result"] == "B302"
    signed(bank, broker)  # WALLET is now known as a personal wallet
    assert call(broker, "OTC.SUBSCRIBE.REQ", otc("GTJAO2", wallet=WALLET)).body["Result"] == "B302"
    rsp = call(broker, "OTC.SUBSCRIBE.REQ", otc("GTJAO3"), bank=bank, BankSn="BO3")
    assert rsp.body["Result"] == "0000"
    from gateway.bookdate import CHINA, Calendar

    expected = Calendar().book_date(dt.datetime.now(CHINA)).isoformat()
    assert rsp.body["BookDate"] == expected
    redeem = [("BizSn", "GTJAD1"), ("OrigBizSn", "NOPE"), ("CorpWalletId", CORP), ("Amount", "1.00")]
    assert call(broker, "OTC.REDEEM.REQ", redeem).body["Result"] == "B313"
    redeem = [("BizSn", "GTJAD2"), ("OrigBizSn", "GTJAO3"), ("CorpWalletId", CORP),
              ("Amount", "500000.00")]
    assert call(broker, "OTC.REDEEM.REQ", redeem, bank=bank).body["Result"] == "0000"


def test_a_refund_or_redemption_sent_to_another_bank_is_b313(home, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """PAY.REFUND and OTC.REDEEM go to the bank the original went through: sent `To`
    another bank, the original is "not found" (B313), answered by the gateway and not
    relayed; sent to the original's bank, they are relayed as usual."""
    home.add_party("ICBC", "BANK")
    gw = start_gateway(relay_timeout_seconds=1.5)
    bank = gw.peer(BANK).open_session()
    other = gw.peer("ICBC", "BANK").open_session()
    broker = gw.peer(BROKER).open_session()
    end = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    assert call(broker, "PAY.ORDER.REQ", pay("GTJAP1", end), bank=bank).body["Result"] == "0000"
    assert call(broker, "OTC.SUBSCRIBE.REQ", otc("GTJAO1"), bank=bank).body["Result"] == "0000"
    refund = [("OrigBizSn", "GTJAP1"), ("Amount", "99.00")]
    redeem = [("OrigBizSn", "GTJAO1"), ("CorpWalletId", CORP), ("Amount", "500000.00")]
    for kind, fields in (("PAY.REFUND.REQ", refund), ("OTC.REDEEM.REQ", redeem)):
        rsp = call(broker, kind, [("BizSn", "GTJAX1"), *fields], to="ICBC")
        assert (rsp.head("From"), rsp.body["Result"]) == ("GW01", "B313"), rsp.body
        assert "between these parties" in rsp.body["ResultText"]
    with pytest.raises(TimeoutError):
        other.recv(timeout=0.8)  # nothing reached the other bank
    for kind, fields in (("PAY.REFUND.REQ", refund), ("OTC.REDEEM.REQ", redeem)):
        rsp = call(broker, kind, [("BizSn", "GTJAX2"), *fields], bank=bank)
        assert (rsp.head("From"), rsp.body["Result"]) == (BANK, "0000"), rsp.body
    other.close()


def test_explicit_reversal_rules_and_first_result_returned(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker)
    call(broker, "XFER.OUT.REQ", xfer("GTJAT1"), bank=bank)
    rev = [("BizSn", "GTJAV0"), ("OrigType", "XFER.OUT"), ("OrigFrom", BROKER),
           ("OrigBizSn", "NOPE"), ("Amount", "100.00")]
    assert call(broker, "XFER.REVERSE.REQ", rev).body["Result"] == "B313"
    wrong = [("BizSn", "GTJAV1"), ("OrigType", "XFER.OUT"), ("OrigFrom", BROKER),
             ("OrigBizSn", "GTJAT1"), ("Amount", "99.00")]
    assert call(broker, "XFER.REVERSE.REQ", wrong).body["Result"] == "B311"
    good = [("BizSn", "GTJAV2"), *wrong[1:4], ("Amount", "100.00")]
    first = call(broker, "XFER.REVERSE.REQ", good, bank=bank, BankSn="RV1")
    assert first.body["Result"] == "0000"
    again = call(broker, "XFER.REVERSE.REQ", [("BizSn", "GTJAV3"), *good[1:]])
    assert again.body["Result"] == "0000" and again.body["BankSn"] == "RV1"
    with pytest.raises(TimeoutError):
        bank.recv(timeout=0.8)
    q = call(broker, "XFER.QUERY.REQ", [("BizSn", "GTJAT1"), ("OrigType", "XFER.OUT")], to="GW01")
    assert q.records("Record")[0]["Status"] == "REVERSED"


def test_timeout_b330_reversal_reversed_late_answer_journaled_not_relayed(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker)
    msg_id = broker.send("XFER.IN.REQ", xfer("GTJAT1", amount="250.00"), to=BANK)
    original = bank.recv("XFER.IN.REQ")
    rsp = broker._answer_to(msg_id, "XFER.IN.REQ")
    assert rsp.body["Result"] == "B330"
    rev = bank.recv("XFER.REVERSE.REQ", timeout=5)
    assert rev.head("From") == "GW01"
    assert (rev.body["OrigType"], rev.body["OrigFrom"], rev.body["OrigBizSn"],
            rev.body["Amount"]) == ("XFER.IN", BROKER, "GTJAT1", "250.00")
    # while the gateway's reversal is unacknowledged, a peer's own reversal of the same
    # original is B330 (in progress), not relayed, and not journaled (asked again later,
    # it gets the final result)
    rev2 = [("BizSn", "GTJAV9"), ("OrigType", "XFER.IN"), ("OrigFrom", BROKER),
            ("OrigBizSn", "GTJAT1"), ("Amount", "250.00")]
    assert call(broker, "XFER.REVERSE.REQ", rev2).body["Result"] == "B330"
    # the late answer to the original is journaled and not relayed
    late_id = bank.send("XFER.IN.RSP", [("Result", "0000"), ("ResultText", "late"),
                                        ("BizSn", "GTJAT1")], to=BROKER, ref=original.head("MsgId"))
    bank.send("XFER.REVERSE.RSP", [("Result", "0000"), ("ResultText", "reversed"),
                                   ("BizSn", rev.body["BizSn"])], to="GW01",
              ref=rev.head("MsgId"))
    gw.wait_for_log("REVERSED")
    q = call(broker, "XFER.QUERY.REQ", [("BizSn", "GTJAT1"), ("OrigType", "XFER.IN")], to="GW01")
    assert q.records("Record")[0]["Status"] == "REVERSED"
    with pytest.raises(TimeoutError):
        broker.recv("XFER.IN.RSP", timeout=0.8)
    db = sqlite3.connect(gw.home.root / "data" / "journal.sqlite3")
    late = db.execute("SELECT direction, party, ref_id FROM message WHERE msg_id=?",
                      (late_id,)).fetchall()
    assert late == [("IN", BANK, original.head("MsgId"))]  # kept as evidence, only inbound
    assert call(broker, "XFER.IN.REQ", xfer("GTJAT1", amount="250.00")).body["Result"] == "B330"
    # the gateway already reversed it: a peer's own reversal (the same V9, asked again)
    # gets the first reversal's result, 0000 (§6), and is not relayed
    done = call(broker, "XFER.REVERSE.REQ", rev2)
    assert (done.body["Result"], done.body["BizSn"]) == ("0000", "GTJAV9"), done.body
    with pytest.raises(TimeoutError):
        bank.recv("XFER.REVERSE.REQ", timeout=0.8)


def test_reversal_survives_sigkill_and_completes_after_restart(home, start_gateway) -> None:  # type: ignore[no-untyped-def]
    settings = FAST_REVERSALS
    gw = start_gateway(**settings)
    bank, broker = signed_pair(gw)
    broker.send("XFER.OUT.REQ", xfer("GTJAT1"), to=BANK)
    bank.recv("XFER.OUT.REQ")
    assert broker.recv("XFER.OUT.RSP", timeout=5).body["Result"] == "B330"
    bank.recv("XFER.REVERSE.REQ", timeout=5)  # unacknowledged
    gw.kill()
    gw2 = start_gateway(**settings)
    bank2 = gw2.peer(BANK).open_session()
    rev = bank2.recv("XFER.REVERSE.REQ", timeout=10)
    assert rev.body["OrigBizSn"] == "GTJAT1"
    bank2.send("XFER.REVERSE.RSP", [("Result", "0000"), ("ResultText", "ok"),
                                    ("BizSn", rev.body["BizSn"])], to="GW01",
               ref=rev.head("MsgId"))
    gw2.wait_for_log("REVERSED")
    broker2 = gw2.peer(BROKER).open_session()
    assert call(broker2, "XFER.OUT.REQ", xfer("GTJAT1")).body["Result"] == "B330"
    with pytest.raises(TimeoutError):
        bank2.recv("XFER.OUT.REQ", timeout=0.8)
    time.sleep(0.1)
    db = sqlite3.connect(home.root / "data" / "journal.sqlite3")
    relayed = db.execute("SELECT count(*) FROM message WHERE direction='OUT' AND "
                         "msg_type='XFER.OUT.REQ'").fetchone()[0]
    assert relayed == 1


def test_gateway_log_holds_no_key_material_or_identity_data(day) -> None:  # type: ignore[no-untyped-def]
    import base64

    gw, bank, broker = day
    signed(bank, broker)
    call(broker, "XFER.IN.REQ", xfer("GTJAT1"), bank=bank)
    broker.keyx()  # a rotation, so several session keys exist
    call(broker, "XFER.IN.REQ", xfer("GTJAT2"), bank=bank)
    log = gw.log_text()
    secrets: list[str] = ["张三", "110101199003071234", "13800138000", "PRIVATE KEY"]
    for peer in (bank, broker):
        for mac_key, data_key in peer.keys.values():
            for key in (mac_key, data_key):
                secrets += [key.hex(), base64.b64encode(key).decode()]
    keys_dir = gw.home.root / "keys"
    storage = (keys_dir / "storage.key").read_bytes()
    secrets += [storage.hex(), base64.b64encode(storage).decode()]
    pem = (keys_dir / "gateway.key").read_text()
    secrets += [line for line in pem.splitlines() if line and not line.startswith("-----")]
    assert "session key" in log  # the log did talk about keys, by id and check value only
    for secret in secrets:
        assert secret not in log


def test_an_agreement_serves_only_its_own_broker_and_bank(home, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """Another broker can neither move money on, nor end, nor see GTJA's agreement."""
    home.add_party("HTSC", "BROKER")
    gw = start_gateway()
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    other = gw.peer("HTSC").open_session()
    signed(bank, broker)  # GTJA ⇄ CCB: AGGTJAS1
    for kind in ("XFER.IN.REQ", "XFER.OUT.REQ"):
        assert call(other, kind, xfer(f"HTSCH{kind[5:7]}")).body["Result"] == "B300"
    unsign = [("BizSn", "HTSCHU1"), ("FundAcct", FUND), ("WalletId", WALLET),
              ("AgreementNo", "AGGTJAS1")]
    assert call(other, "CTS.UNSIGN.REQ", unsign).body["Result"] == "B300"
    with pytest.raises(TimeoutError):
        bank.recv(timeout=0.8)  # nothing of HTSC's reached the bank
    assert call(other, "CTS.QUERY.REQ", [("FundAcct", FUND)], to="GW01").records(
        "Agreement") == []
    mine = call(broker, "CTS.QUERY.REQ", [("FundAcct", FUND)], to="GW01").records("Agreement")
    assert [(a["AgreementNo"], a["Status"]) for a in mine] == [("AGGTJAS1", "ACTIVE")]
    assert call(broker, "XFER.IN.REQ", xfer("GTJAG1"), bank=bank).body["Result"] == "0000"


def test_an_answer_lacking_what_section_6_requires_settles_nothing(day) -> None:  # type: ignore[no-untyped-def]
    """A bank's 0000 to XFER.IN without SweepRef, or naming another BizSn, is E111 to the
    bank; the request stays in flight and, unanswered, times out into reversal."""
    gw, bank, broker = day
    signed(bank, broker)
    msg_id = broker.send("XFER.IN.REQ", xfer("GTJAR1"), to=BANK)
    req = bank.recv("XFER.IN.REQ")
    for fields in ([("BizSn", "GTJAR1"), ("BankSn", "BS1")],  # no SweepRef
                   [("BizSn", "GTJAR2"), ("BankSn", "BS1"), ("SweepRef", "SW1")]):  # other BizSn
        bank.send("XFER.IN.RSP", [("Result", "0000"), ("ResultText", "ok"), *fields],
                  to=BROKER, ref=req.head("MsgId"))
        err = bank.recv("SYS.ERROR")
        assert err.body["Code"] == "E111", err.body
    assert broker._answer_to(msg_id, "XFER.IN.REQ").body["Result"] == "B330"
    assert bank.recv("XFER.REVERSE.REQ", timeout=5).body["OrigBizSn"] == "GTJAR1"


def test_an_answer_of_another_type_settles_nothing(day) -> None:  # type: ignore[no-untyped-def]
    """The bank answers an XFER.OUT.REQ with a PAY.ORDER.RSP naming the same BizSn: E111
    to the bank (RefMsgId = that response), nothing relayed to the broker, the record
    stays PENDING; unanswered, it times out into the gateway's reversal as usual."""
    gw, bank, broker = day

    def status() -> str:
        q = call(broker, "XFER.QUERY.REQ", [("BizSn", "GTJAWT1"), ("OrigType", "XFER.OUT")],
                 to="GW01")
        return q.records("Record")[0]["Status"]

    signed(bank, broker)
    msg_id = broker.send("XFER.OUT.REQ", xfer("GTJAWT1"), to=BANK)
    req = bank.recv("XFER.OUT.REQ")
    wrong = bank.send("PAY.ORDER.RSP", [("Result", "0000"), ("ResultText", "ok"),
                                        ("BizSn", "GTJAWT1"), ("BankSn", "BS1")],
                      to=BROKER, ref=req.head("MsgId"))
    err = bank.recv("SYS.ERROR")
    assert (err.body["Code"], err.body["RefMsgId"]) == ("E111", wrong), err.body
    assert "PAY.ORDER.RSP does not answer" in err.body["Text"], err.body
    assert status() == "PENDING"
    rsp = broker._answer_to(msg_id, "XFER.OUT.REQ")
    assert (rsp.type, rsp.body["Result"]) == ("XFER.OUT.RSP", "B330"), rsp.body
    with pytest.raises(TimeoutError):
        broker.recv("PAY.ORDER.RSP", timeout=0.3)  # the wrong answer was never relayed
    rev = bank.recv("XFER.REVERSE.REQ", timeout=5)
    assert (rev.head("From"), rev.body["OrigBizSn"]) == ("GW01", "GTJAWT1")
    bank.send("XFER.REVERSE.RSP", [("Result", "0000"), ("ResultText", "reversed"),
                                   ("BizSn", rev.body["BizSn"])], to="GW01",
              ref=rev.head("MsgId"))
    gw.wait_for_log("acknowledged .*REVERSED")
    assert status() == "REVERSED"


def test_a_late_answer_settles_its_own_record_while_another_broker_uses_its_msg_id(
        home, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """GTJA's sign (MsgId M) times out; HTSC's order with the same MsgId M is then in
    flight. The bank's late answer To GTJA names GTJA's request, not HTSC's: it settles
    the sign (no E111), and HTSC's own answer still settles the order."""
    home.add_party("HTSC", "BROKER")
    gw = start_gateway(relay_timeout_seconds=1.5)
    bank = gw.peer(BANK).open_session()
    gtja = gw.peer(BROKER).open_session()
    htsc = gw.peer("HTSC", "BROKER").open_session()
    same = "SHARED0000000002"
    gtja.send("CTS.SIGN.REQ", sign_fields("GTJAS9"), to=BANK, msg_id=same, encrypt=("CustName", "IdNo", "Phone"))
    bank.recv("CTS.SIGN.REQ")
    assert gtja._answer_to(same, "CTS.SIGN.REQ").body["Result"] == "B331"
    end = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    htsc.send("PAY.ORDER.REQ", pay("HTSCP9", end), to=BANK, msg_id=same)
    bank.recv("PAY.ORDER.REQ")
    bank.send("CTS.SIGN.RSP", [("Result", "0000"), ("ResultText", "late"), ("BizSn", "GTJAS9"),
                               ("AgreementNo", "AG9")], to=BROKER, ref=same)
    gw.wait_for_log("late answer 0000 to CTS.SIGN GTJAS9")
    bank.send("PAY.ORDER.RSP", [("Result", "0000"), ("ResultText", "ok"), ("BizSn", "HTSCP9"),
                                ("BankSn", "BS9")], to="HTSC", ref=same)
    assert htsc._answer_to(same, "PAY.ORDER.REQ").body["BankSn"] == "BS9"
    with pytest.raises(TimeoutError):
        bank.recv("SYS.ERROR", timeout=0.3)
    rows = sqlite3.connect(home.root / "data" / "journal.sqlite3").execute(
        "SELECT origin, biz_type, state FROM record WHERE biz_sn IN ('GTJAS9', 'HTSCP9') ORDER BY origin")
    assert rows.fetchall() == [(BROKER, "CTS.SIGN", "SUCCEEDED"), ("HTSC", "PAY.ORDER", "SUCCEEDED")]
    htsc.close()


def test_an_answer_not_addressed_to_the_originator_settles_nothing(day) -> None:  # type: ignore[no-untyped-def]
    """An answer goes To the request's originator (§1): the bank's XFER.OUT.RSP with
    the right RefId but To the gateway gets E111 naming the originator, is not relayed,
    and the request stays in flight; the answer To GTJA then settles it."""
    gw, bank, broker = day
    signed(bank, broker)
    msg_id = broker.send("XFER.OUT.REQ", xfer("GTJAWT2"), to=BANK)
    req = bank.recv("XFER.OUT.REQ")
    fields = [("Result", "0000"), ("ResultText", "ok"), ("BizSn", "GTJAWT2"), ("BankSn", "BS2")]
    wrong = bank.send("XFER.OUT.RSP", fields, to="GW01", ref=req.head("MsgId"))
    err = bank.recv("SYS.ERROR")
    assert (err.body["Code"], err.body["RefMsgId"]) == ("E111", wrong), err.body
    assert "GW01 did not send request" in err.body["Text"] and BROKER in err.body["Text"]
    with pytest.raises(TimeoutError):
        broker.recv("XFER.OUT.RSP", timeout=0.3)
    bank.send("XFER.OUT.RSP", fields, to=BROKER, ref=req.head("MsgId"))
    rsp = broker._answer_to(msg_id, "XFER.OUT.REQ")
    assert (rsp.body["Result"], rsp.body["BankSn"]) == ("0000", "BS2"), rsp.body

def test_a_receivers_sys_error_is_b399_at_once_and_frees_the_sign(day) -> None:  # type: ignore[no-untyped-def]
    """The bank refuses the relayed CTS.SIGN itself (SYS.ERROR): the broker gets B399
    with the bank's code without waiting for the timeout, the record is FAILED, and the
    wallet is free to be signed again."""
    gw, bank, broker = day
    started = time.monotonic()
    msg_id = broker.send("CTS.SIGN.REQ", sign_fields("GTJAS7"), to=BANK, encrypt=("CustName", "IdNo", "Phone"))
    req = bank.recv("CTS.SIGN.REQ")
    bank.send("SYS.ERROR", [("Code", "E209"), ("Text", "cannot decrypt IdNo"),
                            ("RefMsgId", req.head("MsgId"))], to="GW01")
    rsp = broker._answer_to(msg_id, "CTS.SIGN.REQ")
    assert rsp.body["Result"] == "B399" and "E209" in rsp.body["ResultText"], rsp.body
    assert time.monotonic() - started < 1.5  # before relay_timeout_seconds
    q = call(broker, "XFER.QUERY.REQ", [("BizSn", "GTJAS7"), ("OrigType", "CTS.SIGN")], to="GW01")
    assert q.records("Record")[0]["Status"] == "FAILED"
    signed(bank, broker, "GTJAS8")  # not B301: the failed sign does not hold the wallet


def test_a_receivers_sys_error_naming_a_gateway_msgid_fails_no_relayed_request(
        day) -> None:  # type: ignore[no-untyped-def]
    """§4: a MsgId is unique per From only. The broker's request has the MsgId of a
    message the gateway itself sent the bank; the bank's SYS.ERROR naming that MsgId
    may refuse either, so the request is not failed: it waits for its answer."""
    gw, bank, broker = day
    signed(bank, broker)
    bank.send("SYS.ECHO.REQ", [("Text", "no MAC")], to="GW01", mac=False)
    own = bank.recv("SYS.ERROR")  # the gateway's own message to the bank (E200)
    own_id = own.head("MsgId")
    assert own.head("From") == "GW01" and own.body["Code"] == "E200"
    msg_id = broker.send("XFER.OUT.REQ", xfer("GTJAX41", "5.00"), to=BANK, msg_id=own_id)
    req = bank.recv("XFER.OUT.REQ")
    assert req.head("MsgId") == own_id
    bank.send("SYS.ERROR", [("Code", "E204"), ("Text", "seen that one"),
                            ("RefMsgId", own_id)], to="GW01")
    with pytest.raises(TimeoutError):
        broker._answer_to(msg_id, "XFER.OUT.REQ", timeout=0.5)
    bank.send("XFER.OUT.RSP", [("Result", "0000"), ("ResultText", "ok"), ("BizSn", "GTJAX41"),
                               ("BankSn", "BS41"), ("SweepRef", "SW41")], to=BROKER, ref=own_id)
    rsp = broker._answer_to(msg_id, "XFER.OUT.REQ")
    assert (rsp.body["Result"], rsp.body["BankSn"]) == ("0000", "BS41"), rsp.body


def test_a_timed_out_sign_is_asked_again_on_repeat_and_settles(day) -> None:  # type: ignore[no-untyped-def]
    """CTS.SIGN cannot be reversed: on timeout the broker gets B331 (outcome unknown) and
    the wallet stays held; the broker's repeat goes to the bank again (the bank answers
    it from its own idempotency), and that answer settles the agreement."""
    gw, bank, broker = day
    fields = sign_fields("GTJAS5")
    first = broker.send("CTS.SIGN.REQ", fields, to=BANK, encrypt=("CustName", "IdNo", "Phone"))
    bank.recv("CTS.SIGN.REQ")  # the bank never answers this one
    assert broker._answer_to(first, "CTS.SIGN.REQ").body["Result"] == "B331"
    held = call(broker, "CTS.SIGN.REQ", sign_fields("GTJAS6"), encrypt=("CustName", "IdNo", "Phone"))
    assert held.body["Result"] == "B301"  # the unknown sign still holds the wallet
    again = call(broker, "CTS.SIGN.REQ", fields, bank=bank, encrypt=("CustName", "IdNo", "Phone"),
                 AgreementNo="AG5")
    assert (again.body["Result"], again.body["AgreementNo"]) == ("0000", "AG5")
    q = call(broker, "CTS.QUERY.REQ", [("FundAcct", FUND)], to="GW01")
    assert [(a["AgreementNo"], a["Status"]) for a in q.records("Agreement")] == [("AG5", "ACTIVE")]
    third = call(broker, "CTS.SIGN.REQ", fields, encrypt=("CustName", "IdNo", "Phone"))
    assert third.body["AgreementNo"] == "AG5"  # answered from the journal now
    with pytest.raises(TimeoutError):
        bank.recv(timeout=0.8)


def test_a_bizsn_one_eod_file_would_list_twice_is_b312(day) -> None:  # type: ignore[no-untyped-def]
    """(From, Type, BizSn) is the idempotency key, but the day's XFER file lists IN, OUT
    and REV of both parties by BizSn and refuses duplicates (§8): the same BizSn for
    another transfer type is B312; the bank cannot reuse the broker's at all, since a
    BizSn begins with its sender's PartyId (§4: E111)."""
    gw, bank, broker = day
    signed(bank, broker)
    assert call(broker, "XFER.IN.REQ", xfer("GTJAD1"), bank=bank).body["Result"] == "0000"
    assert call(broker, "XFER.OUT.REQ", xfer("GTJAD1")).body["Result"] == "B312"
    err = call(bank, "XFER.OUT.REQ", xfer("GTJAD1"), to=BROKER)
    assert (err.type, err.body["Code"]) == ("SYS.ERROR", "E111"), err.body
    assert call(broker, "XFER.OUT.REQ", xfer("GTJAD2"), bank=bank).body["Result"] == "0000"
    unsign = [("BizSn", "GTJAS1"), ("FundAcct", FUND), ("WalletId", WALLET),
              ("AgreementNo", "AGGTJAS1")]
    assert call(broker, "CTS.UNSIGN.REQ", unsign).body["Result"] == "B312"  # the SIGN's BizSn


def test_a_refused_personal_sign_does_not_bar_the_wallet_from_otc(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    claim = call(broker, "CTS.SIGN.REQ", sign_fields("GTJAS9", fund="100020009999", wallet=CORP),
                 bank=bank, result="B303", encrypt=("CustName", "IdNo", "Phone"))
    assert claim.body["Result"] == "B303"  # the bank refused: CORP is no personal wallet
    assert call(broker, "OTC.SUBSCRIBE.REQ", otc("GTJAO9"), bank=bank).body["Result"] == "0000"


def test_two_brokers_may_use_the_same_msg_id_and_each_gets_its_own_answer(home, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """A MsgId is unique per From only (§4, §5): two brokers' requests to one bank may
    carry the same MsgId (their BizSns differ: each begins with its sender's PartyId).
    The bank's answers name the request by RefId and
    To, and each settles its own broker's record, whichever comes first."""
    home.add_party("HTSC", "BROKER")
    gw = start_gateway()
    bank = gw.peer(BANK).open_session()
    gtja = gw.peer(BROKER).open_session()
    htsc = gw.peer("HTSC", "BROKER").open_session()
    end = (dt.date.today() + dt.timedelta(days=3)).isoformat()
    same = "SHARED0000000001"
    gtja.send("PAY.ORDER.REQ", pay("GTJAP1", end, amount="10.00"), to=BANK, msg_id=same)
    first = bank.recv("PAY.ORDER.REQ")
    htsc.send("PAY.ORDER.REQ", pay("HTSCP1", end, amount="20.00"), to=BANK, msg_id=same)
    second = bank.recv("PAY.ORDER.REQ")
    assert (first.head("From"), second.head("From")) == (BROKER, "HTSC")
    assert first.head("MsgId") == second.head("MsgId") == same
    for req, bank_sn in ((second, "BS-HTSC"), (first, "BS-GTJA")):  # the later one first
        bank.send("PAY.ORDER.RSP", [("Result", "0000"), ("ResultText", "ok"),
                                    ("BizSn", req.body["BizSn"]), ("BankSn", bank_sn)],
                  to=req.head("From"), ref=same)
    assert gtja._answer_to(same, "PAY.ORDER.REQ").body["BankSn"] == "BS-GTJA"
    assert htsc._answer_to(same, "PAY.ORDER.REQ").body["BankSn"] == "BS-HTSC"
    rows = sqlite3.connect(home.root / "data" / "journal.sqlite3").execute(
        "SELECT origin, state, bank_sn, amount_fen FROM record WHERE biz_sn IN ('GTJAP1', "
        "'HTSCP1') ORDER BY origin")
    assert rows.fetchall() == [(BROKER, "SUCCEEDED", "BS-GTJA", 1000),
                               ("HTSC", "SUCCEEDED", "BS-HTSC", 2000)]
    htsc.close()
