"""Hostile input on a logged-on, keyed session and on fresh connections, while two
healthy sessions keep transferring (issue 9): the healthy sessions never see a
SYS.ERROR and every transfer is answered 0000; the hostile session gets §7 codes (and
keeps working unless its byte stream broke); the gateway logs no traceback."""
from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import RESULT_TEXT

from conftest import BANK, BROKER, RunningGateway, make_home
from flows import answer, signed, xfer
from peer import Frame, TestPeer

CODES = set(RESULT_TEXT) - {"0000"}
MAX_PAYLOAD = 65536
#: Examples per run (seeded: the same inputs each run, ~5 s in all).
KEYED, FRESH_EXAMPLES = 150, 80
DIGITS = frozenset(b"0123456789")
#: What the hostile session may receive besides SYS.ERROR: answers the gateway gives
#: itself.  Its requests can never reach the bank: echo, a query, and a transfer of a
#: fund account without agreement (B300 at the gateway) — whatever a corruption makes
#: of them.
ANSWERS = {"SYS.ECHO.RSP", "XFER.QUERY.RSP", "XFER.OUT.RSP", "SYS.ERROR"}
BASES: list[tuple[str, list[tuple[str, Any]]]] = [
    ("SYS.ECHO.REQ", [("Text", "fuzz")]),
    ("XFER.QUERY.REQ", [("BizSn", "NOSUCH1"), ("OrigType", "XFER.IN")]),
    ("XFER.OUT.REQ", xfer("GTJAFZ1", fund="999999999999", wallet="0000000000000000")),
]


def scan(data: bytes) -> str:
    """How the gateway's framer sees ``data``: 'complete' frames, 'incomplete' (it waits
    for more bytes), or 'fatal' (a bad length header: E100/E101 and the connection
    closes)."""
    rest = data
    while rest:
        head = rest[:8]
        if not DIGITS.issuperset(head):
            return "fatal"
        if len(head) < 8:
            return "incomplete"
        n = int(head)
        if n > MAX_PAYLOAD:
            return "fatal"
        if len(rest) < 8 + n:
            return "incomplete"
        rest = rest[8 + n:]
    return "complete"


def framed(payload: bytes) -> bytes:
    return b"%08d" % len(payload) + payload


@dataclass
class Live:
    gw: RunningGateway
    bank: TestPeer
    broker: TestPeer
    hostile: TestPeer | None = None
    transfers: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    _probe: Iterator[int] = field(default_factory=itertools.count)

    def keyed(self) -> TestPeer:
        """The hostile session: logged on as the broker and keyed (reopened if closed)."""
        if self.hostile is None:
            self.hostile = self.gw.peer(BROKER).open_session()
        return self.hostile

    def drop_hostile(self) -> None:
        if self.hostile is not None:
            self.hostile.close()
            self.hostile = None

    def note(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1

    def healthy_transfer(self) -> None:
        """A broker → bank XFER.IN round trip; nothing else reached either of them."""
        self.transfers += 1
        msg_id = self.broker.send("XFER.IN.REQ", xfer(f"GTJALIVE{self.transfers:06d}",
                                                      amount="1.00"), to=BANK)
        req = answer(self.bank)
        assert req.body["BizSn"] == f"GTJALIVE{self.transfers:06d}", req.body  # nothing foreign
        rsp = self.broker._answer_to(msg_id, "XFER.IN.REQ")
        assert rsp.type == "XFER.IN.RSP" and rsp.body["Result"] == "0000", rsp.body
        for peer in (self.bank, self.broker):
            assert [f.type for f in peer.inbox if f.type == "SYS.ERROR"] == [], \
                [f.body for f in peer.inbox]
            assert not [f for f in peer.inbox if f.type.endswith(".REQ")], "unexpected request"

    def check_log(self) -> None:
        log = self.gw.log_text()
        assert "Traceback" not in log and "internal error" not in log, log[-3000:]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = make_home(tmp_path_factory.mktemp("fuzzlive") / "gw")
    # every example probes the hostile session with an echo: far more than the default
    # 10-then-1/s echo limit allows (that limit has its own tests: test_unauth_cost.py)
    home.write_config(max_frame_bytes=MAX_PAYLOAD, max_inflight_per_session=100,
                      echo_burst=100_000)
    gw = RunningGateway(home)
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker)
    state = Live(gw, bank, broker)
    yield state
    state.drop_hostile()
    state.healthy_transfer()
    gw.kill()
    state.check_log()


# --- what a hostile keyed peer sends (built with its real keys) -----------------------
RECIPES = st.one_of(
    st.tuples(st.just("raw"), st.binary(min_size=1, max_size=300)),
    st.tuples(st.just("framed"), st.binary(max_size=300)),
    st.tuples(st.just("envelope"), st.binary(max_size=80)),
    st.tuples(st.just("truncated"), st.floats(min_value=0.0, max_value=0.999)),
    st.tuples(st.just("broken-xml"), st.tuples(st.floats(0.0, 0.999),
                                               st.binary(min_size=1, max_size=4))),
    st.tuples(st.just("wrong-mac"), st.integers(min_value=0, max_value=31)),
    st.tuples(st.just("unknown-key"), st.text("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=1,
                                              max_size=12)),
    st.tuples(st.just("wrong-signature"), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("no-mac"), st.booleans()),
)


def hostile_bytes(peer: TestPeer, recipe: tuple[str, Any], base: int) -> bytes:
    kind, arg = recipe
    msg_type, fields = BASES[base]
    _, xml = peer.build(msg_type, fields)
    if kind == "raw":
        return bytes(arg)
    if kind == "framed":
        return framed(bytes(arg))
    if kind == "envelope":
        return framed(bytes(arg) + b"\n" + xml)
    if kind == "truncated":
        frame = peer.frame(xml)
        return frame[:max(1, int(len(frame) * arg))]
    if kind == "broken-xml":  # MAC and signature over the broken bytes: the parser sees it
        at, junk = arg
        cut = int(len(xml) * at)
        return peer.frame(xml[:cut] + junk + xml[cut + len(junk):])
    if kind == "wrong-mac":
        key_id, mac = peer.mac(xml)
        tag = bytearray(base64.b64decode(mac[6:]))
        tag[arg] ^= 0x01
        return framed(f"SBDX1 {key_id} HS256:{base64.b64encode(bytes(tag)).decode()} "
                      f"{peer.sign(xml)}".encode() + b"\n" + xml)
    if kind == "unknown-key":
        return framed(f"SBDX1 Z{arg} HS256:{base64.b64encode(b'x' * 32).decode()} "
                      f"{peer.sign(xml)}".encode() + b"\n" + xml)
    if kind == "wrong-signature":
        key_id, mac = peer.mac(xml)
        return framed(f"SBDX1 {key_id} {mac} {peer.sign(xml + bytes(arg))}".encode()
                      + b"\n" + xml)
    return peer.frame(xml, mac=False, sign=arg)  # no-mac: business message without MAC


def collect_until_probe(live: Live, peer: TestPeer) -> list[Frame]:
    """Send an echo probe; return every frame received before its answer."""
    text = f"probe{next(live._probe)}"
    probe = peer.send("SYS.ECHO.REQ", [("Text", text)])
    seen = []
    while True:
        frame = peer.recv(timeout=5)
        if frame.head("RefId") == probe:
            assert frame.type == "SYS.ECHO.RSP" and frame.body["Text"] == text, frame.body
            return seen
        seen.append(frame)


@settings(max_examples=KEYED, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(recipe=RECIPES, base=st.integers(min_value=0, max_value=len(BASES) - 1))
def test_hostile_input_on_a_keyed_session_never_reaches_the_healthy_sessions(
        live: Live, recipe: tuple[str, Any], base: int) -> None:
    peer = live.keyed()
    data = hostile_bytes(peer, recipe, base)
    framing = scan(data)
    peer.send_raw(data)
    if framing == "complete":  # the stream is intact: the session must keep working
        seen = collect_until_probe(live, peer)
        for frame in seen:
            assert frame.type in ANSWERS, frame.type
            if frame.type == "SYS.ERROR":
                assert frame.body["Code"] in CODES, frame.body
                live.note(frame.body["Code"])
            else:
                live.note(frame.type)
    elif framing == "fatal":  # E100/E101 (if anything), then the gateway closes it
        try:
            while True:
                frame = peer.recv_frame(timeout=5)
                if frame.type == "SYS.ERROR":
                    assert frame.body["Code"] in CODES, frame.body
                    live.note(frame.body["Code"])
        except ConnectionError:
            live.note("closed")
        live.drop_hostile()
    else:  # the gateway waits for the rest of a frame that never comes
        live.note("incomplete")
        live.drop_hostile()
    live.healthy_transfer()


FRESH = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.binary(max_size=300).map(framed),
    st.binary(max_size=300).map(lambda b: framed(b"SBDX1 - - -\n" + b)),
    st.tuples(st.integers(0, 2), st.floats(0.0, 0.999)).map(lambda t: ("truncated", *t)),
    st.tuples(st.integers(0, 2), st.floats(0.0, 0.999), st.binary(min_size=1, max_size=4)).map(
        lambda t: ("broken", *t)),
)


def fresh_bytes(live: Live, spec: Any) -> bytes:
    if isinstance(spec, bytes):
        return spec
    other = live.gw.peer(BROKER)  # builds and signs, never logged on: no MAC key
    msg_type, fields = BASES[spec[1]]
    _, xml = other.build(msg_type, fields)
    if spec[0] == "truncated":
        frame = other.frame(xml, mac=False)
        return frame[:max(1, int(len(frame) * spec[2]))]
    cut = int(len(xml) * spec[2])
    return other.frame(xml[:cut] + spec[3] + xml[cut + len(spec[3]):], mac=False)


@settings(max_examples=FRESH_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(spec=FRESH)
def test_hostile_input_on_fresh_connections_never_reaches_the_healthy_sessions(
        live: Live, spec: Any) -> None:
    data = fresh_bytes(live, spec)
    framing = scan(data)
    peer = TestPeer(BROKER, "BROKER", live.gw.home.keys[BROKER], live.gw.port)
    peer.connect()
    try:
        peer.send_raw(data)
        if framing != "incomplete":  # a code for the first frame (E207 at the latest) or close
            try:
                frame = peer.recv_frame(timeout=5)
                assert frame.type == "SYS.ERROR" and frame.body["Code"] in CODES, frame.type
                live.note(frame.body["Code"])
            except ConnectionError:
                assert framing == "fatal"
                live.note("closed")
    finally:
        peer.close()
    live.healthy_transfer()


def test_the_gateway_log_has_no_traceback_and_the_healthy_pair_still_works(live: Live) -> None:
    for _ in range(3):
        live.healthy_transfer()
    live.check_log()
    assert live.transfers >= KEYED + FRESH_EXAMPLES + 3  # one per hostile example
    # the inputs reached every refusal a keyed session can earn, and the framer's close
    assert {"E100", "E110", "E200", "E201", "E202", "closed"} <= set(live.outcomes), \
        live.outcomes
