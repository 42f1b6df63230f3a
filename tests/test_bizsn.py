"""PROTOCOL §4 BizSn ownership (issue 17 case 10): a request that creates a record carries
a BizSn beginning with its sender's PartyId, else SYS.ERROR E111 naming the path; the
queries, whose BizSn names the record asked about, are exempt."""
from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.bizsn import RECORD_CREATING, check_owner
from gateway.catalog import BODY_BY_TYPE
from gateway.errors import SchemaInvalid
from gateway.message import Head, Message

from conftest import BANK, BROKER, RunningGateway, make_home
from flows import CORP, FUND, WALLET, call, otc, pay, sign_fields, signed, xfer

END = (dt.date.today() + dt.timedelta(days=30)).isoformat()


def body_of(msg_type: str, sn: str) -> tuple[list[tuple[str, Any]], tuple[str, ...]]:
    """A schema-valid request body of ``msg_type`` with BizSn ``sn``; fields to encrypt."""
    bodies: dict[str, list[tuple[str, Any]]] = {
        "CTS.SIGN.REQ": sign_fields(sn),
        "CTS.UNSIGN.REQ": [("BizSn", sn), ("FundAcct", FUND), ("WalletId", WALLET),
                           ("AgreementNo", "AG1")],
        "XFER.IN.REQ": xfer(sn),
        "XFER.OUT.REQ": xfer(sn),
        "XFER.REVERSE.REQ": [("BizSn", sn), ("OrigType", "XFER.OUT"), ("OrigFrom", BROKER),
                             ("OrigBizSn", "GTJAT1"), ("Amount", "100.00")],
        "PAY.ORDER.REQ": pay(sn, END),
        "PAY.REFUND.REQ": [("BizSn", sn), ("OrigBizSn", "GTJAP1"), ("Amount", "99.00")],
        "OTC.SUBSCRIBE.REQ": otc(sn),
        "OTC.REDEEM.REQ": [("BizSn", sn), ("OrigBizSn", "GTJAO1"), ("CorpWalletId", CORP),
                           ("Amount", "1.00")],
    }
    return bodies[msg_type], ("CustName", "IdNo", "Phone") if msg_type == "CTS.SIGN.REQ" else ()


# --- the pure check -------------------------------------------------------------------
def message(msg_type: str, sender: str, biz_sn: str) -> Message:
    head = Head(type=msg_type, msg_id="M1", from_party=sender, to_party="CCB",
                time="2026-12-02T09:30:00+08:00")
    return Message(head=head, body={"BizSn": biz_sn}, xml=b"")


def test_every_type_but_the_queries_creates_a_record() -> None:
    assert RECORD_CREATING == {"CTS.SIGN", "CTS.UNSIGN", "XFER.IN", "XFER.OUT",
                               "XFER.REVERSE", "PAY.ORDER", "PAY.REFUND", "OTC.SUBSCRIBE",
                               "OTC.REDEEM"}


@pytest.mark.parametrize("business", sorted(RECORD_CREATING))
def test_check_owner_refuses_a_bizsn_not_beginning_with_from(business: str) -> None:
    msg_type = business + ".REQ"
    for biz_sn in ("T1", "CCB1", "gtja1", "GTJ1"):
        with pytest.raises(SchemaInvalid) as info:
            check_owner(message(msg_type, "GTJA", biz_sn))
        exc = info.value
        assert (exc.code, exc.ref_msg_id) == ("E111", "M1")
        assert exc.text.startswith(f"Msg/Body/{BODY_BY_TYPE[msg_type]}/BizSn: {biz_sn!r}")
        assert "must begin with the sender's PartyId GTJA" in exc.text
    for biz_sn in ("GTJA20261125000001", "GTJAx", "GTJA"):
        check_owner(message(msg_type, "GTJA", biz_sn))


@pytest.mark.parametrize("msg_type", ["XFER.QUERY.REQ", "CTS.QUERY.REQ", "XFER.OUT.RSP",
                                      "PAY.ORDER.RSP", "SYS.ECHO.REQ"])
def test_check_owner_leaves_queries_and_answers_alone(msg_type: str) -> None:
    """A query's BizSn names the record asked about; an answer echoes its request's."""
    check_owner(message(msg_type, "CCB", "GTJA1"))


# --- end to end -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, Any, Any]]:
    gw = RunningGateway(make_home(tmp_path_factory.mktemp("bizsn") / "gw"))
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    yield gw, bank, broker
    gw.kill()
    assert "Traceback" not in gw.log_text(), gw.log_text()


SENDS = [(BROKER, t + ".REQ", "T1") for t in sorted(RECORD_CREATING)] + [
    (BROKER, "XFER.OUT.REQ", "CCB1"),  # another party's prefix
    (BANK, "XFER.IN.REQ", "GTJA1"),
    (BANK, "XFER.OUT.REQ", "B1"),
    (BANK, "XFER.REVERSE.REQ", "GTJAV1"),
]


@pytest.mark.parametrize(("sender", "msg_type", "biz_sn"), SENDS)
def test_a_record_creating_request_with_a_foreign_bizsn_gets_sys_error_e111(
        live, sender: str, msg_type: str, biz_sn: str) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = live
    peer, other = (broker, bank) if sender == BROKER else (bank, broker)
    fields, encrypt = body_of(msg_type, biz_sn)
    if sender == BANK and msg_type == "XFER.REVERSE.REQ":
        fields = [(k, BANK if k == "OrigFrom" else v) for k, v in fields]
    msg_id = peer.send(msg_type, fields, to=other.party, encrypt=encrypt)
    err = peer._answer_to(msg_id, msg_type)
    assert err.type == "SYS.ERROR", (err.type, err.body)
    assert (err.body["Code"], err.body["RefMsgId"]) == ("E111", msg_id), err.body
    path = f"Msg/Body/{BODY_BY_TYPE[msg_type]}/BizSn"
    assert err.body["Text"].startswith(f"{path}: '{biz_sn}'"), err.body["Text"]
    assert f"must begin with the sender's PartyId {sender}" in err.body["Text"]
    with pytest.raises(TimeoutError):
        other.recv(timeout=0.2)  # nothing relayed
    db = sqlite3.connect(gw.home.root / "data" / "journal.sqlite3")
    try:
        assert db.execute("SELECT count(*) FROM record WHERE biz_sn=?",
                          (biz_sn,)).fetchone()[0] == 0
    finally:
        db.close()


def test_routing_is_checked_before_the_bizsn(live) -> None:  # type: ignore[no-untyped-def]
    """The order of checks (docs/protocol.md): a relayed type sent to the gateway is E208,
    whatever its BizSn."""
    gw, bank, broker = live
    rsp = broker.request("XFER.OUT.REQ", xfer("T9"), to="GW01")
    assert (rsp.type, rsp.body["Code"]) == ("SYS.ERROR", "E208"), rsp.body


def test_a_query_naming_another_partys_bizsn_is_still_answered(live) -> None:  # type: ignore[no-untyped-def]
    """XFER.QUERY's BizSn names the record asked about: the broker asks about the bank's
    XFER.IN (a CCB serial) and gets it; an unknown serial of nobody's is B313, not E111."""
    gw, bank, broker = live
    fund, wallet = "100020007777", "0071130812097777"  # a client of this test's own
    signed(bank, broker, "GTJAQS1", fund=fund, wallet=wallet)
    rsp = call(bank, "XFER.IN.REQ", xfer("CCBQ1", amount="66.00", fund=fund, wallet=wallet),
               to=BROKER, bank=broker)
    assert rsp.body["Result"] == "0000", rsp.body
    q = call(broker, "XFER.QUERY.REQ", [("BizSn", "CCBQ1"), ("OrigType", "XFER.IN"),
                                        ("OrigFrom", BANK)], to="GW01")
    assert q.type == "XFER.QUERY.RSP" and q.body["Result"] == "0000", q.body
    assert q.records("Record")[0]["Status"] == "SUCCEEDED"
    unknown = call(broker, "XFER.QUERY.REQ", [("BizSn", "NOSUCH1"), ("OrigType", "XFER.IN")],
                   to="GW01")
    assert (unknown.type, unknown.body["Result"]) == ("XFER.QUERY.RSP", "B313"), unknown.body
