"""Issue 17, cases 6 and 11: values are checked as parsed, never as raw bytes (§4); no
comment or PI inside Msg (E110); XFER.QUERY is no existence oracle (§6)."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from test_session import Harness, _raw

from gateway.errors import GatewayError, SchemaInvalid, XmlMalformed
from gateway.message import DATE_ELEMENTS, parse_message
from gateway.schema import schema_dir
from gateway.session import CLOSED

from conftest import BANK, BROKER
from flows import call, signed, xfer
from peer import CN, Frame, TestPeer

SAMPLES = Path(__file__).parent / "samples" / "valid"
XFER_OUT = (SAMPLES / "XFER.OUT.REQ.xml").read_bytes()
MSG_ID = parse_message(XFER_OUT).head.msg_id
TRADE_DATE = b"<TradeDate>2026-11-25</TradeDate>"
WALLET = b"<WalletId>0071130812093028</WalletId>"


def _with(old: bytes, new: bytes, xml: bytes = XFER_OUT) -> bytes:
    assert xml.count(old) == 1
    return xml.replace(old, new)


def _refused(xml: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        parse_message(xml)
    return info.value


# --- case 6: dates are checked as parsed ------------------------------------------
@pytest.mark.parametrize("spelled", [b"2027-02-2&#57;", b"2027-02-&#x32;9", b"&#50;027-02-29",
                                     b"2027-0&#50;-29", b"2100-02-2&#57;"])
def test_a_february_29_spelled_with_character_references_is_read_as_its_value(
        spelled: bytes) -> None:
    """§4: a character reference is the character; a non-leap February 29 is E111 however
    it is spelled (the byte search for ``-02-29<`` let these through)."""
    exc = _refused(_with(TRADE_DATE, b"<TradeDate>" + spelled + b"</TradeDate>"))
    assert isinstance(exc, SchemaInvalid) and exc.code == "E111"
    assert "Msg/Head/TradeDate" in exc.text and "is not a calendar date" in exc.text
    assert exc.ref_msg_id == MSG_ID


def test_a_leap_day_spelled_with_a_character_reference_is_that_leap_day() -> None:
    msg = parse_message(_with(TRADE_DATE, b"<TradeDate>2028-02-2&#57;</TradeDate>"))
    assert msg.head.trade_date == "2028-02-29"


def test_a_body_date_and_a_record_date_are_checked_too() -> None:
    pay = (SAMPLES / "PAY.ORDER.REQ.xml").read_bytes()
    end = etree.fromstring(pay).findtext(".//{urn:sbdx:1}ServiceEnd").encode()
    exc = _refused(pay.replace(end, b"2027-02-2&#57;"))
    assert exc.code == "E111" and "Msg/Body/PayOrderReq/ServiceEnd" in exc.text
    query = (SAMPLES / "CTS.QUERY.RSP.xml").read_bytes()
    sign = etree.fromstring(query).findtext(".//{urn:sbdx:1}SignDate").encode()
    exc = _refused(query.replace(sign, b"2027-02-2&#57;", 1))
    assert exc.code == "E111" and "/Agreement[1]/SignDate" in exc.text


def test_a_time_on_a_february_29_of_another_year_is_e111() -> None:
    xml = _with(b"<Time>2026-11-25T", b"<Time>2027-02-2&#57;T")
    exc = _refused(xml)
    assert exc.code == "E111" and "Msg/Head/Time" in exc.text


def test_every_date_element_of_the_schemas_is_checked() -> None:
    """DATE_ELEMENTS is the list of elements whose XSD type is Date or DateTime."""
    found = set()
    for xsd in schema_dir().glob("*.xsd"):
        for el in etree.parse(str(xsd)).iter("{http://www.w3.org/2001/XMLSchema}element"):
            if el.get("type") in ("Date", "DateTime"):
                found.add(el.get("name"))
    assert found == DATE_ELEMENTS


# --- case 6: no comment or processing instruction inside Msg ------------------------
@pytest.mark.parametrize(("old", "new", "where"), [
    (WALLET, b"<WalletId>00711308<!---->12093028</WalletId>", "Msg/Body/XferOutReq/WalletId"),
    (TRADE_DATE, b"<TradeDate>2027-02-2<!---->9</TradeDate>", "Msg/Head/TradeDate"),
    (b"<Amount>", b"<Amount><?x 1?>", "Msg/Body/XferOutReq/Amount"),
    (b"<Head>", b"<Head><!-- a note -->", "Msg/Head"),
    (b"</Body>", b"</Body><?pi x?>", "Msg"),
])
def test_a_comment_or_pi_inside_msg_is_e110(old: bytes, new: bytes, where: str) -> None:
    exc = _refused(_with(old, new))
    assert isinstance(exc, XmlMalformed) and exc.code == "E110"
    assert exc.text.startswith(where + ": ") and "inside Msg" in exc.text
    assert exc.ref_msg_id == MSG_ID


def test_a_comment_splitting_the_msgid_leaves_no_refmsgid() -> None:
    """Its first part is not the MsgId: better none than a wrong one."""
    exc = _refused(_with(b"<MsgId>GTJA", b"<MsgId>GT<!---->JA"))
    assert exc.code == "E110" and exc.ref_msg_id is None


def test_comments_and_pis_outside_msg_are_let_be() -> None:
    decl, rest = XFER_OUT.split(b"\n", 1)
    xml = decl + b"\n<!-- exported by a core system -->\n<?note x?>\n" + rest + b"<!-- end -->\n"
    assert parse_message(xml).body["WalletId"] == "0071130812093028"


def test_comment_markup_inside_cdata_is_text() -> None:
    msg = parse_message(_with(b"<Memo>", b"<Memo><![CDATA[<!-- <?x?>]]>"))
    assert str(msg.body["Memo"]).startswith("<!-- <?x?>")


def test_the_session_refuses_a_comment_with_e110_and_keeps_no_half_value(
        tmp_path: Path) -> None:
    """Through the sans-IO session: SYS.ERROR E110 naming the MsgId; the evidence row of
    the refused message does not record the first half of a split Type as its type."""
    h = Harness(tmp_path, heartbeat_seconds=30.0)
    h.logon()
    h.tick(5.1)
    h.answer_keyx()
    msg_id, xml = h.peer.build("XFER.OUT.REQ", xfer("GTJAT1"), to=BANK)
    h.session.receive_bytes(_raw(h, _with(b"<Type>XFER.OUT.REQ</Type>",
                                          b"<Type>XFER.OUT<!---->.REQ</Type>", xml)))
    h.gateway.flush()
    err = h.link.frames[-1]
    assert (err.type, err.body["Code"], err.body["RefMsgId"]) == ("SYS.ERROR", "E110", msg_id)
    row = [r for r in h.journal.messages(msg_id) if r.direction == "IN"][-1]
    assert row.msg_type is None
    assert h.session.state != CLOSED


# --- case 6 through a live gateway --------------------------------------------------
def _send_edited(peer: TestPeer, msg_type: str, fields: list[tuple[str, Any]], old: bytes,
                 new: bytes, to: str) -> tuple[str, Frame]:
    """Send a correctly signed and MACed message whose xml was edited first."""
    msg_id, xml = peer.build(msg_type, fields, to=to)
    peer.send_raw(peer.frame(_with(old, new, xml)))
    return msg_id, peer._answer_to(msg_id, msg_type)


def test_a_live_gateway_refuses_split_values_and_reads_character_references(
        start_gateway: Any) -> None:
    gw = start_gateway()
    broker = gw.peer(BROKER).open_session()
    wallet = b"<WalletId>0071130812093028</WalletId>"
    msg_id, err = _send_edited(broker, "XFER.OUT.REQ", xfer("GTJAT1"), wallet,
                               b"<WalletId>00711308<!---->12093028</WalletId>", BANK)
    assert (err.type, err.body["Code"], err.body["RefMsgId"]) == ("SYS.ERROR", "E110", msg_id)
    assert "WalletId" in err.body["Text"]
    today = str(dt.datetime.now(CN).date()).encode()
    msg_id, err = _send_edited(broker, "XFER.OUT.REQ", xfer("GTJAT2"),
                               b"<TradeDate>" + today + b"</TradeDate>",
                               b"<TradeDate>2027-02-2&#57;</TradeDate>", BANK)
    assert (err.type, err.body["Code"], err.body["RefMsgId"]) == ("SYS.ERROR", "E111", msg_id)
    assert "Msg/Head/TradeDate" in err.body["Text"]
    # a character reference is its character: this BizSn is GTJAQ1, and the session
    # still works after the refusals
    msg_id, rsp = _send_edited(broker, "XFER.QUERY.REQ",
                               [("BizSn", "GTJAQ1"), ("OrigType", "XFER.IN")],
                               b"<BizSn>GTJAQ1</BizSn>", b"<BizSn>GTJAQ&#49;</BizSn>", "GW01")
    assert (rsp.type, rsp.body["Result"], rsp.body["BizSn"]) == ("XFER.QUERY.RSP", "B313",
                                                                 "GTJAQ1")
    broker.close()


# --- case 11: XFER.QUERY is no existence oracle ---------------------------------------
def test_xfer_query_answers_another_brokers_record_exactly_like_an_unknown_one(
        home: Any, start_gateway: Any) -> None:
    home.add_party("HTSC", "BROKER")
    gw = start_gateway()
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    other = gw.peer("HTSC").open_session()
    signed(bank, broker, "GTJAS1")
    assert call(broker, "XFER.IN.REQ", xfer("GTJAT1"), bank=bank).body["Result"] == "0000"

    def ask(peer: TestPeer, biz_sn: str) -> dict[str, str]:
        rsp = call(peer, "XFER.QUERY.REQ", [("BizSn", biz_sn), ("OrigType", "XFER.IN"),
                                            ("OrigFrom", BROKER)], to="GW01")
        assert rsp.type == "XFER.QUERY.RSP" and not rsp.records("Record")
        return {**rsp.body, "BizSn": "-"}

    # the parties see it
    for party in (broker, bank):
        seen = call(party, "XFER.QUERY.REQ", [("BizSn", "GTJAT1"), ("OrigType", "XFER.IN"),
                                              ("OrigFrom", BROKER)], to="GW01")
        assert seen.records("Record")[0]["Status"] == "SUCCEEDED"
    # another broker: the same answer as for a BizSn nobody used
    existing, unknown = ask(other, "GTJAT1"), ask(other, "GTJAT9")
    assert existing["Result"] == "B313"
    assert existing == unknown
    for peer in (bank, broker, other):
        peer.close()
