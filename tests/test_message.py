"""PROTOCOL §4 through the codec: samples parse, bad ones map to E110/E111/E112."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from lxml import etree

from gateway import catalog
from gateway.errors import GatewayError, SchemaInvalid, UnknownMessageType, XmlMalformed
from gateway.message import Head, build_xml, parse_message, replace_texts

SAMPLES = Path(__file__).parent / "samples"
VALID = sorted((SAMPLES / "valid").glob("*.xml"))
INVALID = json.loads((SAMPLES / "invalid" / "expected.json").read_text("utf-8"))


def test_every_message_type_of_the_catalogue_has_a_valid_sample() -> None:
    assert {p.stem for p in VALID} == set(catalog.ALL_TYPES)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_sample_parses_with_head_and_body(path: Path) -> None:
    xml = path.read_bytes()
    msg = parse_message(xml)
    assert msg.type == path.stem
    assert msg.xml is xml
    assert msg.head.from_party and msg.head.msg_id
    if msg.kind.is_response:
        assert msg.head.ref_id
        assert "Result" in msg.body and "ResultText" in msg.body


@pytest.mark.parametrize("name", sorted(INVALID), ids=str)
def test_data_type_rule_violation_is_e111_naming_the_element(name: str) -> None:
    xml = (SAMPLES / "invalid" / name).read_bytes()
    with pytest.raises(GatewayError) as info:
        parse_message(xml)
    assert info.value.code == "E111", info.value
    assert INVALID[name]["element"] in info.value.text


def test_e111_text_names_the_path_of_the_bad_element() -> None:
    xml = (SAMPLES / "valid" / "XFER.OUT.REQ.xml").read_bytes()
    bad = xml.replace(b"<Amount>", b"<Amount>9", 1).replace(b".50</Amount>", b".5</Amount>")
    bad = etree.tostring(etree.fromstring(xml))  # normalise, then break the amount
    root = etree.fromstring(bad)
    amount = root.find(".//{urn:sbdx:1}Amount")
    amount.text = "12.5"
    with pytest.raises(SchemaInvalid) as info:
        parse_message(etree.tostring(root))
    assert "Msg/Body/XferOutReq/Amount" in info.value.text
    assert info.value.ref_msg_id == parse_message(xml).head.msg_id


def test_type_body_mismatch_is_e111() -> None:
    xml = (SAMPLES / "valid" / "XFER.OUT.REQ.xml").read_bytes()
    swapped = xml.replace(b"<Type>XFER.OUT.REQ</Type>", b"<Type>XFER.IN.REQ</Type>")
    assert swapped != xml
    with pytest.raises(SchemaInvalid) as info:
        parse_message(swapped)
    assert "XferOutReq" in info.value.text and "XFER.IN.REQ" in info.value.text


def test_unknown_type_is_e112() -> None:
    xml = (SAMPLES / "valid" / "XFER.OUT.REQ.xml").read_bytes()
    with pytest.raises(UnknownMessageType) as info:
        parse_message(xml.replace(b"<Type>XFER.OUT.REQ</Type>", b"<Type>XFER.SIDEWAYS.REQ</Type>"))
    assert info.value.code == "E112"


@pytest.mark.parametrize(
    "xml",
    [
        b"<Msg xmlns='urn:sbdx:1'><Head>",
        b"not xml at all",
        b"",
        b"\xff\xfe<Msg/>",
        b"<?xml version='1.0'?><!DOCTYPE Msg [<!ENTITY x 'y'>]><Msg xmlns='urn:sbdx:1'>&x;</Msg>",
        b"<?xml version='1.0'?><!DOCTYPE Msg SYSTEM 'http://127.0.0.1:1/x.dtd'><Msg/>",
        "<?xml version='1.0' encoding='UTF-16'?><Msg xmlns='urn:sbdx:1'/>".encode("utf-16"),
        b"<?xml version='1.0' encoding='ISO-8859-1'?><Msg xmlns='urn:sbdx:1'/>",
    ],
    ids=["truncated", "text", "empty", "bad-encoding", "entity", "external-dtd", "utf-16",
         "latin-1"],
)
def test_not_well_formed_or_doctype_is_e110(xml: bytes) -> None:
    with pytest.raises(XmlMalformed) as info:
        parse_message(xml)
    assert info.value.code == "E110"


def test_builder_output_validates_and_round_trips() -> None:
    head = Head(type="CTS.SIGN.REQ", msg_id="GTJA1", from_party="GTJA", to_party="CCB",
                time="2026-11-25T09:30:00+08:00", trade_date="2026-11-25")
    body = {"BizSn": "GTJAS1", "FundAcct": "100020003000", "WalletId": "0071130812093028",
            "WalletLevel": "1", "WalletKind": "PERSONAL", "CustName": "C" * 40,
            "IdType": "01", "IdNo": "A" * 40, "Phone": None, "Channel": "APP"}
    xml = build_xml(head, body)
    assert b'<CustName enc="A256GCM">' in xml and b'<IdNo enc="A256GCM">' in xml  # §4
    msg = parse_message(xml)
    assert msg.head == head
    assert msg.body["CustName"] == "C" * 40
    assert "Phone" not in msg.body
    again = parse_message(replace_texts(msg.xml, {"IdNo": "B" * 40}))
    assert again.body["IdNo"] == "B" * 40 and again.body["CustName"] == msg.body["CustName"]
    rsp = Head(type="CTS.SIGN.RSP", msg_id="CCB1", ref_id="GTJA1", from_party="CCB",
               to_party="GTJA", time="2026-11-25T09:30:00+08:00")
    text = parse_message(build_xml(rsp, {"Result": "B303", "ResultText": "张三 & <李四>",
                                         "BizSn": "GTJAS1"})).body["ResultText"]
    assert text == "张三 & <李四>"  # escaped and read back


def test_builder_handles_repeated_records() -> None:
    head = Head(type="CTS.QUERY.RSP", msg_id="GW011", ref_id="GTJA9", from_party="GW01",
                to_party="GTJA", time="2026-11-25T09:30:00+08:00")
    rec = {"AgreementNo": "A1", "FundAcct": "100020003000", "WalletId": "0071130812093028",
           "WalletLevel": "1", "WalletKind": "PERSONAL", "Status": "ACTIVE",
           "SignDate": "2026-11-25"}
    msg = parse_message(build_xml(head, {"Result": "0000", "ResultText": "ok",
                                         "Agreement": [rec, {**rec, "AgreementNo": "A2"}]}))
    assert [r["AgreementNo"] for r in msg.body["Agreement"]] == ["A1", "A2"]


@pytest.mark.parametrize(("day", "ok"), [("2028-02-29", True), ("2000-02-29", True),
                                         ("2027-02-29", False), ("2100-02-29", False)])
def test_february_29_only_in_leap_years(day: str, ok: bool) -> None:
    """The XSD's Date pattern knows days per month but not leap years: the codec does."""
    xml = (SAMPLES / "valid" / "XFER.OUT.REQ.xml").read_bytes().replace(
        b"<TradeDate>2026-11-25</TradeDate>", f"<TradeDate>{day}</TradeDate>".encode())
    assert f"<TradeDate>{day}</TradeDate>".encode() in xml
    if ok:
        assert parse_message(xml).head.trade_date == day
    else:
        with pytest.raises(SchemaInvalid) as info:
            parse_message(xml)
        assert info.value.code == "E111" and "Msg/Head/TradeDate" in info.value.text


# --- §4 "UTF-8" and DTD hardening ------------------------------------------------
SAMPLE = (SAMPLES / "valid" / "XFER.OUT.REQ.xml").read_bytes()
_DECL = '<?xml version="1.0" encoding="UTF-8"?>'
_ENTITY_DTD = '<!DOCTYPE Msg [<!ENTITY amt "1.00">]>'


def _text_without_declaration() -> str:
    text = SAMPLE.decode("utf-8")
    assert text.startswith(_DECL)
    return text[len(_DECL):].lstrip("\n")


def _entity_doc(encoding: str) -> bytes:
    """The sample in another encoding (BOM included), with an internal DTD and ``&amt;``."""
    text = _ENTITY_DTD + _text_without_declaration().replace("<Memo>", "<Memo>&amt;")
    return text.encode(encoding)


@pytest.mark.parametrize("xml", [
    _entity_doc("utf-16"),  # BOM, no declaration: lxml reports UTF-8 for it
    _entity_doc("utf-32"),
    _text_without_declaration().encode("utf-16"),  # valid message, wrong encoding
    _text_without_declaration().encode("utf-16-be"),
    _text_without_declaration().encode("utf-16-le"),  # no BOM: recognised by its NULs
    _text_without_declaration().encode("utf-32"),
    SAMPLE.replace(b"UTF-8", b"UTF-16"),  # declared other than UTF-8
    SAMPLE.replace(b"UTF-8", b"utf8"),
    SAMPLE.replace(b'encoding="UTF-8"', b"encoding='windows-1252'"),
    SAMPLE.decode().replace("UTF-8", "GB18030").encode("gb18030"),
    SAMPLE.replace("证转银".encode(), "证转银".encode("gbk")),  # GBK bytes: not UTF-8
    SAMPLE.replace(b"<Memo>", b"<Memo>\xc0\xaf"),  # overlong encoding
], ids=["utf16-bom-dtd-entity", "utf32-bom-dtd-entity", "utf16-bom", "utf16be-bom",
        "utf16le-no-bom", "utf32-bom", "declared-utf16", "declared-utf8-alias",
        "declared-cp1252", "gb18030", "gbk-bytes", "overlong-utf8"])
def test_anything_but_utf8_is_e110(xml: bytes) -> None:
    with pytest.raises(XmlMalformed) as info:
        parse_message(xml)
    assert info.value.code == "E110"


def test_utf8_bom_is_accepted_and_the_exact_bytes_are_kept() -> None:
    xml = b"\xef\xbb\xbf" + SAMPLE
    msg = parse_message(xml)
    assert msg.xml is xml and msg.xml.startswith(b"\xef\xbb\xbf")
    assert msg.body["Memo"] == "证转银"


def test_declared_utf8_in_lower_case_is_accepted() -> None:
    assert parse_message(SAMPLE.replace(b'"UTF-8"', b"'utf-8'")).type == "XFER.OUT.REQ"


def test_a_dtd_the_byte_guard_misses_is_refused_from_the_parsed_tree(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import gateway.message as message

    monkeypatch.setattr(message, "check_utf8", lambda xml: None)
    xml = _entity_doc("utf-16")
    assert b"<!DOCTYPE" not in xml  # the byte search alone cannot see it
    with pytest.raises(XmlMalformed) as info:
        message.parse_message(xml)
    assert info.value.code == "E110" and "DOCTYPE" in info.value.text


def test_lxml_error_inside_schema_validation_is_e111_not_an_exception() -> None:
    from gateway.message import _PARSER, validate

    root = etree.fromstring(_entity_doc("utf-16"), _PARSER)  # what used to get through
    with pytest.raises(SchemaInvalid) as info:
        validate(root)
    assert info.value.code == "E111"


# --- §3 which types must be signed ------------------------------------------------
SIGNATURE_OPTIONAL = {"SYS.HEARTBEAT", "SYS.ECHO.REQ", "SYS.ECHO.RSP", "SYS.LOGOFF.REQ",
                      "SYS.LOGOFF.RSP", "SYS.ERROR"}


@pytest.mark.parametrize("msg_type", catalog.ALL_TYPES)
def test_signature_required_exactly_on_logon_keyx_and_business(msg_type: str) -> None:
    required = msg_type.startswith(("SYS.LOGON.", "SYS.KEYX.")) or not msg_type.startswith("SYS.")
    assert catalog.needs_signature(msg_type) is required
    assert catalog.needs_signature(msg_type) is (msg_type not in SIGNATURE_OPTIONAL)
