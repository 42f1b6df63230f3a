"""Hostile input through a real socket (issue 9): every bad input gets a §7 SYS.ERROR
or a clean close; a healthy session keeps transferring; nothing crashes."""
from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import RESULT_TEXT

from conftest import BANK, BROKER, RunningGateway, make_home
from flows import answer, signed, xfer
from peer import TestPeer

CODES = set(RESULT_TEXT) - {"0000"}
VALID_XML = (Path(__file__).parent / "samples" / "valid" / "XFER.OUT.REQ.xml").read_bytes()


@pytest.fixture(scope="module")
def fuzz_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, Any]]:
    home = make_home(tmp_path_factory.mktemp("fuzz") / "gw")
    home.write_config(max_frame_bytes=65536)
    gw = RunningGateway(home)
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker)
    state = {"n": 0, "bank": bank, "broker": broker, "errors": []}
    yield gw, state
    gw.kill()
    log = gw.log_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


def healthy_round_trip(state: dict[str, Any]) -> None:
    state["n"] += 1
    msg_id = state["broker"].send("XFER.IN.REQ", xfer(f"GTJAH{state['n']}", amount="1.00"), to=BANK)
    answer(state["bank"])
    rsp = state["broker"]._answer_to(msg_id, "XFER.IN.REQ")
    assert rsp.body["Result"] == "0000"


def outcome(gw: RunningGateway, data: bytes) -> str:
    """Send ``data`` on a fresh connection; return the SYS.ERROR code, 'closed' or 'silent'."""
    peer = TestPeer(BROKER, "BROKER", gw.home.keys[BROKER], gw.port)
    peer.connect()
    try:
        peer.send_raw(data)
        try:
            frame = peer.recv_frame(timeout=3)
        except ConnectionError:
            return "closed"
        except TimeoutError:
            return "silent"  # an incomplete frame: the gateway waits for the rest
        assert frame.type == "SYS.ERROR", frame.type
        return frame.body["Code"]
    finally:
        peer.close()


def framed(payload: bytes) -> bytes:
    return b"%08d" % len(payload) + payload


def envelope(xml: bytes) -> bytes:
    return framed(b"SBDX1 - - -\n" + xml)


def nested(depth: int) -> bytes:
    return (b'<?xml version="1.0"?><Msg xmlns="urn:sbdx:1">' + b"<a>" * depth + b"</a>" * depth
            + b"</Msg>")


HOSTILE: dict[str, bytes] = {
    "billion-laughs": b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                      b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;">]>'
                      b'<Msg xmlns="urn:sbdx:1">&c;</Msg>',
    "xxe-file": b'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                b'<Msg xmlns="urn:sbdx:1">&x;</Msg>',
    "xxe-network": b'<?xml version="1.0"?><!DOCTYPE m SYSTEM "http://127.0.0.1:9/evil.dtd">'
                   b'<Msg xmlns="urn:sbdx:1"/>',
    "xinclude": b'<?xml version="1.0"?><Msg xmlns="urn:sbdx:1" xmlns:xi="http://www.w3.org/2001/'
                b'XInclude"><xi:include href="file:///etc/passwd"/></Msg>',
    "deep-nesting": nested(5_000),  # 35 KB: inside the frame limit, beyond libxml2's depth
    "invalid-utf8": VALID_XML.replace(b"<Memo>", b"<Memo>\xff\xfe\xc3("),
    "wrong-namespace": VALID_XML.replace(b"urn:sbdx:1", b"urn:sbdx:9"),
    "duplicated-element": VALID_XML.replace(b"<Ccy>CNY</Ccy>", b"<Ccy>CNY</Ccy><Ccy>CNY</Ccy>"),
    "utf16": VALID_XML.decode().replace("UTF-8", "UTF-16").encode("utf-16"),
    "pi-and-comments": VALID_XML.replace(b"<Head>", b"<!-- x --><?pi x?><Head>"),
    # UTF-16 with a BOM and no declaration: a byte search finds no DOCTYPE, lxml reports
    # UTF-8, and the entity node made XSD validation raise (S900 and a traceback).
    "utf16-doctype-entity": (b'<!DOCTYPE Msg [<!ENTITY amt "1.00">]>'
                             + VALID_XML.split(b"\n", 1)[1].replace(b"<Memo>", b"<Memo>&amt;")
                             ).decode().encode("utf-16"),
    "utf16-no-declaration": VALID_XML.split(b"\n", 1)[1].decode().encode("utf-16"),
    "utf8-bom": b"\xef\xbb\xbf" + VALID_XML,
    "declared-latin1": VALID_XML.replace(b"UTF-8", b"ISO-8859-1"),
}


#: The code each hostile document gets.  E110 for pi-and-comments: no comment or
#: processing instruction inside Msg (§4).  E207 for utf8-bom: a UTF-8 BOM is allowed
#: (docs/protocol.md), so that document is valid and is refused only because the
#: connection has not logged on.
EXPECTED = {"billion-laughs": "E110", "xxe-file": "E110", "xxe-network": "E110",
            "xinclude": "E111", "deep-nesting": "E110", "invalid-utf8": "E110",
            "wrong-namespace": "E111", "duplicated-element": "E111", "utf16": "E110",
            "pi-and-comments": "E110", "utf16-doctype-entity": "E110",
            "utf16-no-declaration": "E110", "utf8-bom": "E207", "declared-latin1": "E110"}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_xml_is_refused_with_a_code(fuzz_gw, name: str) -> None:  # type: ignore[no-untyped-def]
    gw, state = fuzz_gw
    got = outcome(gw, envelope(HOSTILE[name]))
    assert got == EXPECTED[name], got
    healthy_round_trip(state)
    log = gw.log_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


@pytest.mark.parametrize(("data", "expected"), [
    (b"99999999", {"E101"}),
    (b"00065537" + b"x" * 10, {"E101"}),
    (b"GET / HTTP/1.1\r\n\r\n", {"E100"}),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", {"E100"}),  # a TLS hello
    (framed(b"no envelope line at all"), {"E100"}),
    (framed(b"SBDX1 - - -\n"), {"E110"}),
    (b"00000000", {"E100"}),
])
def test_broken_frames_get_e1xx(fuzz_gw, data: bytes, expected: set[str]) -> None:  # type: ignore[no-untyped-def]
    gw, state = fuzz_gw
    assert outcome(gw, data) in expected | {"closed"}
    healthy_round_trip(state)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=st.one_of(
    st.binary(min_size=1, max_size=400),
    st.binary(max_size=300).map(framed),
    st.binary(max_size=300).map(lambda b: framed(b"SBDX1 - - -\n" + b)),
    st.integers(min_value=1, max_value=len(VALID_XML) - 1).map(lambda n: envelope(VALID_XML[:n])),
    st.tuples(st.integers(0, len(VALID_XML) - 1), st.binary(min_size=1, max_size=4)).map(
        lambda t: envelope(VALID_XML[:t[0]] + t[1] + VALID_XML[t[0] + 1:])),
    st.text(max_size=200).map(lambda t: envelope(t.encode("utf-8", "surrogatepass"))),
))
def test_random_input_never_crashes_and_always_gets_a_code_or_close(fuzz_gw, junk: bytes) -> None:  # type: ignore[no-untyped-def]
    gw, state = fuzz_gw
    got = outcome(gw, junk)
    assert got in CODES | {"closed", "silent"}, got
    state["errors"].append(got)


def test_healthy_session_still_works_after_the_fuzzing(fuzz_gw) -> None:  # type: ignore[no-untyped-def]
    gw, state = fuzz_gw
    for _ in range(5):
        healthy_round_trip(state)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5):
        pass  # still accepting
