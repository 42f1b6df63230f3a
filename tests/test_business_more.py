"""More of PROTOCOL §6 over real sockets: reversal retries, repeats, routing, bytes kept;
and the one record state machine (gateway/records.py) every handler goes through."""
from __future__ import annotations

import ast
import datetime as dt
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from inproc import inproc_day

from conftest import BANK, BROKER
from flows import CORP, FAST_REVERSALS, call, otc, pay, sign_fields, signed, signed_pair, xfer


@pytest.fixture
def day(tmp_path):  # type: ignore[no-untyped-def]
    """conftest's ``day`` in process (tests/inproc.py): these rules need no sockets; a
    peer waiting for a frame lets the gateway's time pass."""
    with inproc_day(tmp_path, relay_timeout_seconds=1.5, reversal_retry_initial_seconds=0.5,
                    reversal_retry_max_seconds=1.0) as running:
        yield running



def journal(gw: Any) -> sqlite3.Connection:
    return sqlite3.connect(gw.home.root / "data" / "journal.sqlite3")


def status(peer: Any, biz_sn: str, orig_type: str, orig_from: str | None = None) -> str:
    fields = [("BizSn", biz_sn), ("OrigType", orig_type), ("OrigFrom", orig_from)]
    return call(peer, "XFER.QUERY.REQ", fields, to="GW01").records("Record")[0]["Status"]


def wait_status(peer: Any, biz_sn: str, orig_type: str, want: str, timeout: float = 5) -> None:
    """Query until the record is ``want``: an answer and the query travel on two sessions."""
    deadline = time.monotonic() + timeout
    while (got := status(peer, biz_sn, orig_type)) != want:
        assert time.monotonic() < deadline, f"{orig_type} {biz_sn} is {got}, not {want}"
        time.sleep(0.05)


def ack_reversal(bank: Any, attempt: Any, result: str = "0000") -> None:
    bank.send("XFER.REVERSE.RSP", [("Result", result), ("ResultText", "reversed"),
                                   ("BizSn", attempt.body["BizSn"])], to="GW01",
              ref=attempt.head("MsgId"))


def timed_out(bank: Any, broker: Any, biz_sn: str) -> None:
    """Broker's XFER.OUT the bank never answers: B330, the gateway starts reversing."""
    broker.send("XFER.OUT.REQ", xfer(biz_sn), to=BANK)
    bank.recv("XFER.OUT.REQ")
    assert broker.recv("XFER.OUT.RSP", timeout=5).body["Result"] == "B330"


# --- the gateway's own reversals ------------------------------------------------------
def test_a_receiver_slower_than_the_retry_interval_still_completes_the_reversal(day) -> None:  # type: ignore[no-untyped-def]
    """The bank answers each XFER.REVERSE only after the next retry went out: the answer
    to the first attempt settles it, and the late answers to the others do no harm."""
    gw, bank, broker = day
    signed(bank, broker)
    timed_out(bank, broker, "GTJAT1")
    attempts = [bank.recv("XFER.REVERSE.REQ", timeout=5) for _ in range(3)]
    assert len({a.head("MsgId") for a in attempts}) == 3
    assert {a.body["BizSn"] for a in attempts} == {attempts[0].body["BizSn"]}  # one reversal
    ack_reversal(bank, attempts[0])  # two retries late
    gw.wait_for_log(r"acknowledged \(0000\): REVERSED")
    for attempt in attempts[1:]:
        ack_reversal(bank, attempt)  # late duplicates
    with pytest.raises(TimeoutError):
        bank.recv("XFER.REVERSE.REQ", timeout=2.5)  # no further retry
    assert status(broker, "GTJAT1", "XFER.OUT") == "REVERSED"
    state, result = journal(gw).execute("SELECT state, result FROM reversal").fetchone()
    assert (state, result) == ("DONE", "0000")
    log = gw.log_text()
    assert log.count("REVERSED") == 1 and "answers no request" not in log, log


def test_an_answer_to_an_attempt_from_before_a_restart_completes_the_reversal(
        start_gateway) -> None:  # type: ignore[no-untyped-def]
    settings = FAST_REVERSALS
    gw = start_gateway(**settings)
    bank, broker = signed_pair(gw)
    timed_out(bank, broker, "GTJAT4")
    before = bank.recv("XFER.REVERSE.REQ", timeout=5)
    gw.kill()
    gw2 = start_gateway(**settings)
    bank2 = gw2.peer(BANK).open_session()
    after = bank2.recv("XFER.REVERSE.REQ", timeout=10)  # the retry: left unanswered
    assert after.head("MsgId") != before.head("MsgId")
    ack_reversal(bank2, before)  # the bank answers the attempt it got before the restart
    gw2.wait_for_log(r"acknowledged \(0000\): REVERSED")
    assert status(gw2.peer(BROKER).open_session(), "GTJAT4", "XFER.OUT") == "REVERSED"


def test_a_reversal_the_receiver_drops_once_is_retried_and_completes(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker)
    timed_out(bank, broker, "GTJAT2")
    first = bank.recv("XFER.REVERSE.REQ", timeout=5)  # dropped: never answered
    second = bank.recv("XFER.REVERSE.REQ", timeout=5)
    assert second.head("MsgId") != first.head("MsgId")
    assert second.body == first.body
    ack_reversal(bank, second)
    gw.wait_for_log(r"acknowledged \(0000\): REVERSED")
    assert status(broker, "GTJAT2", "XFER.OUT") == "REVERSED"


def test_a_peers_reversal_of_what_the_gateway_reversed_gets_the_first_result(day) -> None:  # type: ignore[no-untyped-def]
    """§6 "a reversal already done returns its first result": B330 while the gateway's
    reversal is in flight, 0000 once it is acknowledged; neither reaches the bank."""
    gw, bank, broker = day
    signed(bank, broker)
    timed_out(bank, broker, "GTJAT3")
    attempt = bank.recv("XFER.REVERSE.REQ", timeout=5)
    mine = [("BizSn", "GTJAV3"), ("OrigType", "XFER.OUT"), ("OrigFrom", BROKER),
            ("OrigBizSn", "GTJAT3"), ("Amount", "100.00")]
    assert call(broker, "XFER.REVERSE.REQ", mine).body["Result"] == "B330"
    from_bank = [("BizSn", "CCBBV3"), *mine[1:]]  # the receiver may ask too
    assert call(bank, "XFER.REVERSE.REQ", from_bank, to=BROKER).body["Result"] == "B330"
    ack_reversal(bank, attempt)
    gw.wait_for_log(r"acknowledged \(0000\): REVERSED")
    done = call(broker, "XFER.REVERSE.REQ", mine)
    assert (done.body["Result"], done.body["BizSn"]) == ("0000", "GTJAV3")
    assert call(bank, "XFER.REVERSE.REQ", from_bank, to=BROKER).body["Result"] == "0000"
    relayed = journal(gw).execute("SELECT count(*) FROM message WHERE direction='OUT' AND "
                                  "msg_type='XFER.REVERSE.REQ' AND msg_id NOT LIKE 'GW01%'")
    assert relayed.fetchone()[0] == 0


# --- rules ------------------------------------------------------------------------------
def test_a_corporate_wallet_cannot_be_signed_b302(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    for level in ("1", "2"):
        rsp = call(broker, "CTS.SIGN.REQ", sign_fields("GTJAC" + level, wallet=CORP, level=level,
                                                       kind="CORPORATE"),
                   encrypt=("CustName", "IdNo", "Phone"))
        assert rsp.body["Result"] == "B302", rsp.body
    with pytest.raises(TimeoutError):
        bank.recv(timeout=0.8)
    signed(bank, broker, "GTJAC3")  # a personal class-I wallet still signs


def test_b311_on_pay_order_and_otc_subscribe(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    end = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    assert call(broker, "PAY.ORDER.REQ", pay("GTJAP0", end, amount="0.00")).body["Result"] == "B311"
    zero = [(k, "0.00" if k == "Amount" else v) for k, v in otc("GTJAO0")]
    assert call(broker, "OTC.SUBSCRIBE.REQ", zero).body["Result"] == "B311"
    with pytest.raises(TimeoutError):
        bank.recv(timeout=0.8)


def test_xfer_in_originated_by_the_bank_and_queried_with_orig_from(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker)
    rsp = call(bank, "XFER.IN.REQ", xfer("CCBBI1", amount="66.00"), to=BROKER, bank=broker)
    assert rsp.body["Result"] == "0000"
    # the broker asks about the bank's record: OrigFrom names the other party
    q = call(broker, "XFER.QUERY.REQ", [("BizSn", "CCBBI1"), ("OrigType", "XFER.IN"),
                                        ("OrigFrom", BANK)], to="GW01")
    rec = q.records("Record")[0]
    assert (rec["OrigFrom"], rec["Status"], rec["Amount"]) == (BANK, "SUCCEEDED", "66.00")
    # without OrigFrom the asker is meant, and the broker has no XFER.IN CCBBI1
    mine = call(broker, "XFER.QUERY.REQ", [("BizSn", "CCBBI1"), ("OrigType", "XFER.IN")],
                to="GW01")
    assert mine.body["Result"] == "B313"


# --- idempotency -------------------------------------------------------------------------
def _original_then(kind: str, bank: Any, broker: Any) -> list[tuple[str, Any]]:
    """Set up what a PAY.REFUND / OTC.REDEEM / XFER.REVERSE needs; return its fields."""
    if kind == "PAY.REFUND":
        end = (dt.date.today() + dt.timedelta(days=30)).isoformat()
        assert call(broker, "PAY.ORDER.REQ", pay("GTJAP1", end), bank=bank).body["Result"] == "0000"
        return [("BizSn", "GTJAR1"), ("OrigBizSn", "GTJAP1"), ("Amount", "99.00")]
    if kind == "OTC.REDEEM":
        assert call(broker, "OTC.SUBSCRIBE.REQ", otc("GTJAO1"), bank=bank).body["Result"] == "0000"
        return [("BizSn", "GTJAR1"), ("OrigBizSn", "GTJAO1"), ("CorpWalletId", CORP),
                ("Amount", "500000.00")]
    signed(bank, broker)
    assert call(broker, "XFER.OUT.REQ", xfer("GTJAT1"), bank=bank).body["Result"] == "0000"
    return [("BizSn", "GTJAR1"), ("OrigType", "XFER.OUT"), ("OrigFrom", BROKER),
            ("OrigBizSn", "GTJAT1"), ("Amount", "100.00")]


@pytest.mark.parametrize("kind", ["PAY.REFUND", "OTC.REDEEM", "XFER.REVERSE"])
def test_repeat_of_a_refund_redemption_or_reversal_is_not_relayed_twice(day, kind) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    fields = _original_then(kind, bank, broker)
    first = call(broker, kind + ".REQ", fields, bank=bank, BankSn="BK1")
    assert first.body["Result"] == "0000"
    second = call(broker, kind + ".REQ", fields)
    assert second.body == first.body
    with pytest.raises(TimeoutError):
        bank.recv(timeout=0.8)
    relayed = journal(gw).execute("SELECT count(*) FROM message WHERE direction='OUT' AND "
                                  "msg_type=? AND party=?", (kind + ".REQ", BANK))
    assert relayed.fetchone()[0] == 1


def test_a_repeat_while_the_original_is_in_flight_waits_for_its_answer(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker)
    first = broker.send("XFER.OUT.REQ", xfer("GTJAW1"), to=BANK)
    req = bank.recv("XFER.OUT.REQ")
    second = broker.send("XFER.OUT.REQ", xfer("GTJAW1"), to=BANK)
    gw.wait_for_log("repeat of XFER.OUT GTJAW1 from GTJA: not relayed again")
    bank.send("XFER.OUT.RSP", [("Result", "0000"), ("ResultText", "ok"), ("BizSn", "GTJAW1"),
                               ("BankSn", "BW1")], to=BROKER, ref=req.head("MsgId"))
    one = broker._answer_to(first, "XFER.OUT.REQ")
    two = broker._answer_to(second, "XFER.OUT.REQ")
    assert one.body == two.body and one.body["BankSn"] == "BW1"
    with pytest.raises(TimeoutError):
        bank.recv(timeout=0.8)  # relayed once


# --- routing and bytes --------------------------------------------------------------------
def test_requests_round_robin_across_two_sessions_of_the_bank(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker)
    bank2 = gw.peer(BANK).open_session()
    sent = [broker.send("XFER.OUT.REQ", xfer(f"GTJARR{i}"), to=BANK) for i in range(4)]
    got = {id(b): [b.recv("XFER.OUT.REQ").head("MsgId") for _ in range(2)] for b in (bank, bank2)}
    assert sorted(got[id(bank)] + got[id(bank2)]) == sorted(sent)
    for b in (bank, bank2):
        with pytest.raises(TimeoutError):
            b.recv("XFER.OUT.REQ", timeout=0.5)  # two each, none twice
    bank2.close()


def test_relayed_xml_is_byte_for_byte_what_the_sender_signed(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    signed(bank, broker)
    msg_id, xml = broker.build("XFER.OUT.REQ", xfer("GTJAB1"), to=BANK)
    broker.send_raw(broker.frame(xml))
    req = bank.recv("XFER.OUT.REQ")
    assert req.xml == xml
    bank.verify_from_gateway(req)  # a fresh envelope: the gateway's MAC and signature
    _, rsp_xml = bank.build("XFER.OUT.RSP", [("Result", "0000"), ("ResultText", "ok"),
                                             ("BizSn", "GTJAB1"), ("BankSn", "BB1")],
                            to=BROKER, ref=msg_id)
    bank.send_raw(bank.frame(rsp_xml))
    assert broker._answer_to(msg_id, "XFER.OUT.REQ").xml == rsp_xml


def test_a_late_answer_to_an_unanswered_sign_settles_it_without_a_relay(day) -> None:  # type: ignore[no-untyped-def]
    """Non-reversible: the timed-out CTS.SIGN stays PENDING (B331); the bank's late 0000 is
    journaled, settles the record and the agreement, and is not relayed to the broker."""
    gw, bank, broker = day
    msg_id = broker.send("CTS.SIGN.REQ", sign_fields("GTJAS1"), to=BANK, encrypt=("CustName", "IdNo", "Phone"))
    req = bank.recv("CTS.SIGN.REQ")
    assert broker._answer_to(msg_id, "CTS.SIGN.REQ").body["Result"] == "B331"
    late = bank.send("CTS.SIGN.RSP", [("Result", "0000"), ("ResultText", "late"),
                                      ("BizSn", "GTJAS1"), ("AgreementNo", "AGL1")],
                     to=BROKER, ref=req.head("MsgId"))
    gw.wait_for_log("late answer 0000 to CTS.SIGN GTJAS1")
    assert status(broker, "GTJAS1", "CTS.SIGN") == "SUCCEEDED"
    with pytest.raises(TimeoutError):
        broker.recv("CTS.SIGN.RSP", timeout=0.8)
    rows = journal(gw).execute("SELECT direction FROM message WHERE msg_id=?", (late,))
    assert [r[0] for r in rows] == ["IN"]



def test_a_late_answer_of_another_type_settles_nothing(day) -> None:  # type: ignore[no-untyped-def]
    """A late answer settles a PENDING record only if it would have in time: one of the
    wrong Type (an XFER.OUT.RSP B399 naming the CTS.SIGN's BizSn) gets E111, and the timed-out
    sign stays PENDING for the right answer, which still settles it."""
    gw, bank, broker = day
    msg_id = broker.send("CTS.SIGN.REQ", sign_fields("GTJAS1"), to=BANK, encrypt=("CustName", "IdNo", "Phone"))
    req = bank.recv("CTS.SIGN.REQ")
    assert broker._answer_to(msg_id, "CTS.SIGN.REQ").body["Result"] == "B331"
    # not a success, so no §6 success field is missing: only its Type is wrong (and it
    # would settle the sign FAILED without the check)
    wrong = bank.send("XFER.OUT.RSP", [("Result", "B399"), ("ResultText", "late"),
                                       ("BizSn", "GTJAS1")], to=BROKER, ref=req.head("MsgId"))
    err = bank.recv("SYS.ERROR")
    assert (err.body["Code"], err.body["RefMsgId"]) == ("E111", wrong), err.body
    assert status(broker, "GTJAS1", "CTS.SIGN") == "PENDING"
    bank.send("CTS.SIGN.RSP", [("Result", "0000"), ("ResultText", "late"), ("BizSn", "GTJAS1"),
                               ("AgreementNo", "AGL1")], to=BROKER, ref=req.head("MsgId"))
    wait_status(broker, "GTJAS1", "CTS.SIGN", "SUCCEEDED")


def test_a_late_answer_to_a_repeat_asked_again_settles_the_sign(day) -> None:  # type: ignore[no-untyped-def]
    """The sign times out (B331), its repeat is asked again with the repeat's own MsgId
    and times out too; the bank's late answer to that repeat still settles the record
    (found through the evidence of what was relayed), and it is not relayed."""
    gw, bank, broker = day
    fields = sign_fields("GTJAS8")
    first = broker.send("CTS.SIGN.REQ", fields, to=BANK, encrypt=("CustName", "IdNo", "Phone"))
    bank.recv("CTS.SIGN.REQ")
    assert broker._answer_to(first, "CTS.SIGN.REQ").body["Result"] == "B331"
    again = broker.send("CTS.SIGN.REQ", fields, to=BANK, encrypt=("CustName", "IdNo", "Phone"))
    asked = bank.recv("CTS.SIGN.REQ")
    assert asked.head("MsgId") == again
    assert broker._answer_to(again, "CTS.SIGN.REQ").body["Result"] == "B331"
    bank.send("CTS.SIGN.RSP", [("Result", "0000"), ("ResultText", "late"), ("BizSn", "GTJAS8"),
                               ("AgreementNo", "AG8")], to=BROKER, ref=again)
    wait_status(broker, "GTJAS8", "CTS.SIGN", "SUCCEEDED")
    assert "answers no request" not in gw.log_text()
    with pytest.raises(TimeoutError):
        broker.recv("CTS.SIGN.RSP", timeout=0.5)

# --- the one state machine ------------------------------------------------------------------
def test_a_reversal_acknowledged_for_a_failed_original_leaves_it_failed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """§6 receivers acknowledge the reversal of a failed original: the queue row is done,
    the original stays FAILED (FAILED never changes), and the listener hears of it."""
    from gateway.config import Config
    from gateway.journal import Journal, Record, Reversal
    from gateway.reversal import ReversalQueue
    from gateway.rules import Rules

    j = Journal(tmp_path / "j.sqlite3")
    rec = Record(origin=BROKER, biz_type="XFER.OUT", biz_sn="GTJAT1", receiver=BANK,
                 msg_id="M1", content_hash="h", state="FAILED", trade_date="2026-11-25",
                 amount_fen=100)
    j.insert_record(rec, 0.0)
    j.queue_reversal(Reversal(origin=BROKER, biz_type="XFER.OUT", biz_sn="GTJAT1",
                              receiver=BANK, reversal_sn="GW01RV1", amount_fen=100,
                              state="QUEUED", attempts=1, next_at=0.0, last_msg_id="GW01M1",
                              result=None))
    heard: list[tuple[str, str, str]] = []

    def acknowledged(key: tuple[str, str, str], at: float) -> None:
        heard.append(key)
        assert not Rules.mark_reversed(rules, key, at)  # type: ignore[arg-type]

    rules = type("R", (), {"journal": j})()
    queue = ReversalQueue(Config(), j, lambda party: None, acknowledged)
    assert queue.answered(BANK, "GW01M1", "0000", 1.0)
    assert heard == [rec.key]
    assert j.record(*rec.key).state == "FAILED"  # type: ignore[union-attr]
    assert j.reversal_of(rec.key).state == "DONE"  # type: ignore[union-attr]
    j.close()


def _state_values(tree: ast.AST) -> list[ast.expr]:
    """Every value given to a business record's ``state``: ``update_record(state=…)``,
    ``….records.update(state=…)`` (the record store), ``Record(state=…)`` and
    ``Record(**{"state": …})``."""
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func).rsplit(".", 1)[-1]
        if name not in ("update_record", "Record") and \
                not ast.unparse(node.func).endswith(".records.update"):
            continue
        for kw in node.keywords:
            if kw.arg == "state":
                found.append(kw.value)
            elif kw.arg is None and isinstance(kw.value, ast.Dict):
                found += [v for k, v in zip(kw.value.keys, kw.value.values, strict=True)
                          if isinstance(k, ast.Constant) and k.value == "state"]
    return found


def test_every_record_state_change_goes_through_the_state_machine() -> None:
    """Records are born PENDING; every other state comes from records.transition()."""
    root = Path(__file__).resolve().parent.parent / "gateway"
    seen = 0
    for module in ("relay.py", "reversal.py", "rules.py"):
        for value in _state_values(ast.parse((root / module).read_text())):
            seen += 1
            text = ast.unparse(value)
            assert text == "records.PENDING" or (
                isinstance(value, ast.Call) and ast.unparse(value.func) == "records.transition"
            ), f"{module}: record state set to {text} outside records.transition()"
    assert seen >= 6
