"""The XSDs (PROTOCOL §4) against the samples, with three independent validators:
libxml2 through lxml (the gateway's own), the `xmlschema` package, and stock `xmllint`."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import xmlschema
from lxml import etree

HERE = Path(__file__).parent
SCHEMAS = HERE.parent / "schemas"
ROOT = SCHEMAS / "sbdx1.xsd"
VALID = sorted((HERE / "samples" / "valid").glob("*.xml"))
INVALID_DIR = HERE / "samples" / "invalid"
EXPECTED = json.loads((INVALID_DIR / "expected.json").read_text("utf-8"))
INVALID = [INVALID_DIR / name for name in sorted(EXPECTED)]

#: The 32 message types of PROTOCOL §5 and §6, written out from the protocol text.
PROTOCOL_TYPES = {
    "SYS.LOGON.REQ", "SYS.LOGON.RSP", "SYS.KEYX.REQ", "SYS.KEYX.RSP", "SYS.HEARTBEAT",
    "SYS.ECHO.REQ", "SYS.ECHO.RSP", "SYS.LOGOFF.REQ", "SYS.LOGOFF.RSP", "SYS.ERROR",
    "CTS.SIGN.REQ", "CTS.SIGN.RSP", "CTS.UNSIGN.REQ", "CTS.UNSIGN.RSP",
    "CTS.QUERY.REQ", "CTS.QUERY.RSP",
    "XFER.IN.REQ", "XFER.IN.RSP", "XFER.OUT.REQ", "XFER.OUT.RSP",
    "XFER.REVERSE.REQ", "XFER.REVERSE.RSP", "XFER.QUERY.REQ", "XFER.QUERY.RSP",
    "PAY.ORDER.REQ", "PAY.ORDER.RSP", "PAY.REFUND.REQ", "PAY.REFUND.RSP",
    "OTC.SUBSCRIBE.REQ", "OTC.SUBSCRIBE.RSP", "OTC.REDEEM.REQ", "OTC.REDEEM.RSP",
}
NS = "{urn:sbdx:1}"


def body_name(msg_type: str) -> str:
    """The Body child for a Head/Type: XFER.OUT.REQ -> XferOutReq."""
    return "".join(part.capitalize() for part in msg_type.split("."))


@pytest.fixture(scope="module")
def lxml_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(ROOT)))


@pytest.fixture(scope="module")
def second_schema() -> xmlschema.XMLSchema10:
    return xmlschema.XMLSchema10(str(ROOT))


def test_there_is_one_valid_sample_per_protocol_type() -> None:
    assert {p.stem for p in VALID} == PROTOCOL_TYPES
    assert len(EXPECTED) >= 40


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_sample_passes_and_its_body_matches_its_type(path: Path, lxml_schema,
                                                           second_schema) -> None:  # type: ignore[no-untyped-def]
    doc = etree.parse(str(path))
    assert lxml_schema.validate(doc), lxml_schema.error_log
    second_schema.validate(str(path))
    msg_type = doc.findtext(f"{NS}Head/{NS}Type")
    assert msg_type == path.stem
    (child,) = doc.find(f"{NS}Body")
    assert child.tag == NS + body_name(msg_type)


def test_schema_declares_exactly_the_protocol_bodies(second_schema) -> None:  # type: ignore[no-untyped-def]
    declared = set(second_schema.elements) - {"Msg"}
    assert declared == {body_name(t) for t in PROTOCOL_TYPES}
    body = second_schema.types["Body"].content
    assert {e.local_name for e in body.iter_elements()} == declared
    for name in declared:
        children = [e.local_name for e in second_schema.elements[name].type.content.iter_elements()]
        if name.endswith("Rsp"):
            assert children[:2] == ["Result", "ResultText"], name


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_sample_fails_naming_the_element(path: Path, lxml_schema,
                                                 second_schema) -> None:  # type: ignore[no-untyped-def]
    doc = etree.parse(str(path))
    assert not lxml_schema.validate(doc)
    element = EXPECTED[path.name]["element"]
    assert any(f"}}{element}'" in e.message for e in lxml_schema.error_log), \
        str(lxml_schema.error_log)
    assert not second_schema.is_valid(str(path))


XMLLINT = shutil.which("xmllint")


@pytest.mark.skipif(XMLLINT is None, reason="xmllint (libxml2-utils) not installed")
@pytest.mark.parametrize("path", VALID + INVALID, ids=lambda p: p.parent.name + "/" + p.stem)
def test_stock_xmllint_agrees(path: Path) -> None:
    out = subprocess.run([str(XMLLINT), "--noout", "--schema", str(ROOT), str(path)],
                         capture_output=True, text=True, timeout=30)
    assert (out.returncode == 0) == (path.parent.name == "valid"), out.stderr
