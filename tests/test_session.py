"""The session machine without sockets: a fake clock and a link that records (§5)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from gateway.config import Config
from gateway.framing import FrameDecoder
from gateway.journal import Journal
from gateway.keystore import KeyStore
from gateway.relay import Gateway
from gateway.session import CLOSED, Session

from conftest import BROKER, make_home
from peer import Frame, TestPeer


class FakeClock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class RecordingLink:
    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            line, xml = payload.split(b"\n", 1)
            _, key_id, mac, sig = line.decode().split(" ")
            self.frames.append(Frame(key_id, mac, sig, xml, etree.fromstring(xml)))

    def close(self) -> None:
        self.closed = True

    def peer_public_key(self) -> Any:
        return None

    def types(self) -> list[str]:
        return [f.type for f in self.frames]


class Harness:
    def __init__(self, tmp: Path, **settings: Any) -> None:
        home = make_home(tmp / "gw")
        self.clock = FakeClock()
        cfg = Config(**settings)
        self.journal = Journal(tmp / "gw" / "data" / "j.sqlite3")
        self.gateway = Gateway(cfg, KeyStore(home.root / "keys"), self.journal, self.clock)
        self.link = RecordingLink()
        self.session = Session(self.gateway, self.link, "S1")
        self.gateway.add_session(self.session)
        self.peer = TestPeer(BROKER, "BROKER", home.keys[BROKER], port=0)

    def feed(self, msg_type: str, fields: list[tuple[str, Any]], mac: bool = True) -> None:
        _, xml = self.peer.build(msg_type, fields)
        self.session.receive_bytes(self.peer.frame(xml, mac=mac))
        self.gateway.flush()

    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.gateway.tick()
        self.gateway.flush()

    def logon(self, heartbeat: int = 30) -> None:
        self.feed("SYS.LOGON.REQ", [("PartyId", BROKER), ("Role", "BROKER"),
                                    ("Nonce", "ab" * 16), ("HeartbeatSec", heartbeat)], mac=False)
        assert self.link.frames[-1].body["Result"] == "0000"

    def answer_keyx(self) -> None:
        req = self.link.frames[-1]
        assert req.type == "SYS.KEYX.REQ"
        sent = []
        self.peer.send_raw = sent.append  # type: ignore[method-assign]
        self.peer.answer_keyx(req)
        self.session.receive_bytes(sent[0])
        self.gateway.flush()


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path, heartbeat_seconds=30.0)


def test_gateway_starts_keyx_five_seconds_after_logon(harness: Harness) -> None:
    harness.logon()
    harness.tick(4.8)
    assert "SYS.KEYX.REQ" not in harness.link.types()
    harness.tick(0.4)
    assert harness.link.types()[-1] == "SYS.KEYX.REQ"
    harness.answer_keyx()
    assert harness.session.ready


def test_heartbeat_every_interval_and_close_after_three_silent_ones(harness: Harness) -> None:
    harness.logon(heartbeat=10)
    harness.tick(5.1)
    harness.answer_keyx()
    harness.tick(10.0)
    assert harness.link.types()[-1] == "SYS.HEARTBEAT"
    harness.tick(19.8)  # 29.8 s of silence since the KEYX answer
    assert harness.session.state != CLOSED
    harness.tick(0.4)
    assert harness.session.state == CLOSED and harness.link.closed


def test_rotation_after_rotate_messages(tmp_path: Path) -> None:
    h = Harness(tmp_path, rotate_messages=3)
    h.logon()
    h.tick(5.1)
    h.answer_keyx()
    first = h.session.keyring.current
    for i in range(3):
        h.feed("SYS.ECHO.REQ", [("Text", str(i))])
    h.tick(0.2)
    assert h.link.types()[-1] == "SYS.KEYX.REQ"
    h.answer_keyx()
    assert h.session.keyring.current != first


def test_rotation_after_rotate_seconds(tmp_path: Path) -> None:
    h = Harness(tmp_path, rotate_seconds=60.0, heartbeat_seconds=1000.0)
    h.logon(heartbeat=1000)
    h.tick(5.1)
    h.answer_keyx()
    h.tick(59.0)
    assert h.link.types().count("SYS.KEYX.REQ") == 1
    h.tick(1.5)
    assert h.link.types().count("SYS.KEYX.REQ") == 2


def test_message_before_logon_is_e207_kept_as_evidence_and_not_acted_on(
        harness: Harness) -> None:
    harness.feed("SYS.ECHO.REQ", [("Text", "x")], mac=False)
    error = harness.link.frames[-1]
    assert error.body["Code"] == "E207" and error.head("To") == BROKER
    rows = list(harness.journal.messages())
    inbound = [r for r in rows if r.direction == "IN"]
    # §3: the refused bytes are kept as evidence, with no party (nobody has logged on)
    assert len(inbound) == 1 and inbound[0].party is None
    assert inbound[0].msg_type == "SYS.ECHO.REQ" and b"<Text>x</Text>" in inbound[0].xml
    assert [r.msg_type for r in rows if r.direction == "OUT"] == ["SYS.ERROR"]
    assert harness.journal.store.seen.count() == 0


def test_msgids_are_remembered_for_the_retention_period_then_forgotten(tmp_path: Path) -> None:
    h = Harness(tmp_path, replay_retention_days=7)
    h.logon()
    h.tick(5.1)
    h.answer_keyx()
    sender_count = h.journal.store.seen.count()
    assert sender_count == 2  # LOGON and KEYX answer
    h.tick(6 * 86400)  # heartbeats aside, nothing is forgotten within 7 days
    assert h.journal.store.seen.count() == 2
    h.tick(1.01 * 86400 + 3600)
    assert h.journal.store.seen.count() == 0


def test_retention_below_seven_days_is_refused() -> None:
    from gateway.config import ConfigError, from_mapping

    with pytest.raises(ConfigError):
        from_mapping({"replay_retention_days": 3})


# --- §3/§5.3: SYS messages before the first key ------------------------------------
def test_echo_and_heartbeat_before_any_key_are_answered_without_mac(harness: Harness) -> None:
    harness.logon()
    harness.feed("SYS.ECHO.REQ", [("Text", "before keyx")], mac=False)
    echo = harness.link.frames[-1]
    assert echo.type == "SYS.ECHO.RSP" and echo.body["Text"] == "before keyx"
    assert (echo.key_id, echo.mac) == ("-", "-")  # no key: our answer carries none either
    count = len(harness.link.frames)
    harness.feed("SYS.HEARTBEAT", [], mac=False)
    assert len(harness.link.frames) == count  # accepted: no answer, no SYS.ERROR
    assert harness.session.state != CLOSED and not harness.session.ready


def test_logoff_before_any_key_is_answered_and_closes(harness: Harness) -> None:
    harness.logon()
    harness.feed("SYS.LOGOFF.REQ", [], mac=False)
    assert harness.link.frames[-1].type == "SYS.LOGOFF.RSP"
    assert harness.link.frames[-1].body["Result"] == "0000"
    assert harness.session.state == CLOSED and harness.link.closed


def test_business_message_before_any_key_is_still_e207(harness: Harness) -> None:
    from flows import xfer

    harness.logon()
    harness.feed("XFER.OUT.REQ", xfer("GTJAK1"), mac=False)
    error = harness.link.frames[-1]
    assert error.type == "SYS.ERROR" and error.body["Code"] == "E207"


@pytest.mark.parametrize(("key_id", "mac", "code"), [
    ("K1", "HS256:" + "A" * 44, "E201"),  # a key id the session cannot have
    ("-", "HS256:" + "A" * 44, "E200"),  # a MAC with no key to check it against
])
def test_sys_message_before_any_key_must_not_claim_a_mac(harness: Harness, key_id: str,
                                                          mac: str, code: str) -> None:
    harness.logon()
    msg_id, xml = harness.peer.build("SYS.ECHO.REQ", [("Text", "x")])
    payload = f"SBDX1 {key_id} {mac} {harness.peer.sign(xml)}".encode() + b"\n" + xml
    harness.session.receive_bytes(b"%08d" % len(payload) + payload)
    harness.gateway.flush()
    error = harness.link.frames[-1]
    assert error.type == "SYS.ERROR" and error.body["Code"] == code
    assert error.body["RefMsgId"] == msg_id


def test_once_keyed_sys_messages_need_the_mac_again(harness: Harness) -> None:
    harness.logon()
    harness.tick(5.1)
    harness.answer_keyx()
    harness.feed("SYS.ECHO.REQ", [("Text", "x")], mac=False)
    error = harness.link.frames[-1]
    assert error.type == "SYS.ERROR" and error.body["Code"] == "E200"


# --- §3: which messages must be signed ----------------------------------------------
def _feed_unsigned(h: Harness, msg_type: str, fields: list[tuple[str, Any]]) -> str:
    msg_id, xml = h.peer.build(msg_type, fields)
    h.session.receive_bytes(h.peer.frame(xml, sign=False))
    h.gateway.flush()
    return msg_id


def test_unsigned_logoff_and_error_are_accepted_alike(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.logon()
    h.tick(5.1)
    h.answer_keyx()
    count = len(h.link.frames)
    _feed_unsigned(h, "SYS.ERROR", [("Code", "E110"), ("Text", "peer could not parse")])
    assert len(h.link.frames) == count  # no SYS.ERROR back
    _feed_unsigned(h, "SYS.LOGOFF.REQ", [])
    assert h.link.frames[-1].type == "SYS.LOGOFF.RSP"
    assert h.session.state == CLOSED


def test_unsigned_keyx_is_e202(harness: Harness) -> None:
    harness.logon()
    msg_id = _feed_unsigned(harness, "SYS.KEYX.REQ", [
        ("KeyId", "P1"), ("Curve", "X25519"), ("PublicKey", "A" * 43 + "="), ("Nonce", "cd" * 16)])
    error = harness.link.frames[-1]
    assert error.type == "SYS.ERROR" and error.body["Code"] == "E202"
    assert error.body["RefMsgId"] == msg_id and not harness.session.keyring.has_key


def test_a_bad_signature_on_an_optional_one_is_still_e202(harness: Harness) -> None:
    harness.logon()
    _, xml = harness.peer.build("SYS.LOGOFF.REQ", [])
    payload = f"SBDX1 - - {harness.peer.sign(xml + b' ')}".encode() + b"\n" + xml
    harness.session.receive_bytes(b"%08d" % len(payload) + payload)
    harness.gateway.flush()
    error = harness.link.frames[-1]
    assert error.type == "SYS.ERROR" and error.body["Code"] == "E202"
    assert harness.session.state != CLOSED


# --- one read holding several frames: parsed and signature-checked ahead, acted on in order
def _raw(h: Harness, xml: bytes, *, sig: str | None = None, mac: str | None = None) -> bytes:
    kid, good_mac = h.peer.mac(xml)
    line = f"SBDX1 {kid} {mac or good_mac} {sig or h.peer.sign(xml)}"
    payload = line.encode() + b"\n" + xml
    return b"%08d" % len(payload) + payload


def test_frames_of_one_read_are_answered_in_order_with_the_3_precedence(
        harness: Harness) -> None:
    harness.logon()
    harness.tick(5.1)
    harness.answer_keyx()
    ids, frames = [], []
    for text in ("a", "b", "c", "d", "e"):
        msg_id, xml = harness.peer.build("SYS.ECHO.REQ", [("Text", text)])
        ids.append(msg_id)
        frames.append(xml)
    bad_sig = harness.peer.sign(frames[1] + b" ")  # a signature over other bytes
    data = (_raw(harness, frames[0])
            + _raw(harness, frames[1], sig=bad_sig)                          # E202
            + _raw(harness, frames[2], sig=bad_sig, mac="HS256:" + "A" * 44)  # MAC first: E200
            + _raw(harness, b"<Msg", sig=bad_sig)                           # E110
            + _raw(harness, frames[4]))
    before = len(harness.link.frames)
    harness.session.receive_bytes(data)
    harness.gateway.flush()
    out = harness.link.frames[before:]
    assert [(f.type, f.body.get("Code")) for f in out] == [
        ("SYS.ECHO.RSP", None), ("SYS.ERROR", "E202"), ("SYS.ERROR", "E200"),
        ("SYS.ERROR", "E110"), ("SYS.ECHO.RSP", None)]
    assert [out[0].head("RefId"), out[1].body["RefMsgId"], out[2].body["RefMsgId"],
            out[4].head("RefId")] == [ids[0], ids[1], ids[2], ids[4]]
    # every frame out carries a valid MAC and signature, sealed at the flush
    harness.peer.gateway_public_key = harness.gateway.signer.public_key
    for f in out:
        harness.peer.verify_from_gateway(f)
    assert harness.session.state != CLOSED


def test_a_frame_whose_mac_fails_never_has_its_signature_checked(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ECDSA verify costs ~20 HMACs: bad MACs must not buy verifies (E200 each)."""
    harness.logon()
    harness.tick(5.1)
    harness.answer_keyx()
    import gateway.verification as verification
    calls: list[bytes] = []
    real_verify = verification.verify

    def counting_verify(key: Any, field: Any, xml: bytes) -> None:
        calls.append(xml)
        real_verify(key, field, xml)

    monkeypatch.setattr(verification, "verify", counting_verify)
    frames = [harness.peer.build("SYS.ECHO.REQ", [("Text", str(i))])[1] for i in range(3)]
    data = b"".join(_raw(harness, xml, mac="HS256:" + "A" * 44) for xml in frames[:2])
    before = len(harness.link.frames)
    harness.session.receive_bytes(data + _raw(harness, frames[2]))
    harness.gateway.flush()
    out = harness.link.frames[before:]
    assert [(f.type, f.body.get("Code")) for f in out] == [
        ("SYS.ERROR", "E200"), ("SYS.ERROR", "E200"), ("SYS.ECHO.RSP", None)]
    assert calls == [frames[2]]  # only the frame whose MAC held


def test_a_frame_keyed_by_an_earlier_frame_of_the_same_read_is_accepted(
        harness: Harness) -> None:
    """The MAC checked ahead of the turn fails (no key yet); in its turn it holds."""
    harness.logon()
    harness.tick(5.1)
    req = harness.link.frames[-1]
    assert req.type == "SYS.KEYX.REQ"
    sent: list[bytes] = []
    harness.peer.send_raw = sent.append  # type: ignore[method-assign]
    harness.peer.answer_keyx(req)  # the peer now MACs with the new key
    msg_id, echo = harness.peer.build("SYS.ECHO.REQ", [("Text", "new key")])
    before = len(harness.link.frames)
    harness.session.receive_bytes(sent[0] + _raw(harness, echo))
    harness.gateway.flush()
    out = harness.link.frames[before:]
    assert [(f.type, f.head("RefId")) for f in out] == [("SYS.ECHO.RSP", msg_id)]


def test_frames_after_a_logoff_in_the_same_read_are_never_acted_on(harness: Harness) -> None:
    harness.logon()
    harness.tick(5.1)
    harness.answer_keyx()
    _, logoff = harness.peer.build("SYS.LOGOFF.REQ", [])
    _, echo = harness.peer.build("SYS.ECHO.REQ", [("Text", "late")])
    before = len(harness.link.frames)
    harness.session.receive_bytes(_raw(harness, logoff) + _raw(harness, echo))
    harness.gateway.flush()
    assert [f.type for f in harness.link.frames[before:]] == ["SYS.LOGOFF.RSP"]
    assert harness.session.state == CLOSED and harness.link.closed
    inbound = [r.msg_type for r in harness.journal.messages() if r.direction == "IN"]
    assert "SYS.ECHO.REQ" not in inbound


def test_an_outgoing_message_is_sealed_at_the_flush_with_the_key_of_its_queueing(
        harness: Harness) -> None:
    harness.logon()
    harness.tick(5.1)
    harness.answer_keyx()
    key = harness.session.keyring.current
    _, echo = harness.peer.build("SYS.ECHO.REQ", [("Text", "x")])
    harness.session.receive_bytes(_raw(harness, echo))
    assert harness.journal.dirty
    out_rows = [r for r in harness.journal.messages() if r.direction == "OUT"]
    count = len(out_rows)
    harness.gateway.flush()
    frame = harness.link.frames[-1]
    assert frame.type == "SYS.ECHO.RSP" and frame.key_id == key.key_id
    rows = [r for r in harness.journal.messages() if r.direction == "OUT"]
    assert len(rows) == count + 1  # its evidence row was written in the flush
    assert rows[-1].envelope.decode() == f"SBDX1 {frame.key_id} {frame.mac} {frame.sig}"


def _echo_frame(h: Harness, text: str) -> bytes:
    return _raw(h, h.peer.build("SYS.ECHO.REQ", [("Text", text)])[1])


def _ready(tmp_path: Path) -> Harness:
    h = Harness(tmp_path, heartbeat_seconds=30.0)
    h.logon()
    h.tick(5.1)
    h.answer_keyx()
    return h


def test_reads_of_one_session_in_one_turn_are_one_stream_for_framing_errors(
        tmp_path: Path) -> None:
    """TLS hands over every record as a read of its own: the good frames of a later read
    are still acted on before the framing error that follows them (E100, close)."""
    from gateway.session import receive_reads

    h = _ready(tmp_path)
    before = len(h.link.frames)
    receive_reads([(h.session, _echo_frame(h, "a")), (h.session, _echo_frame(h, "b")),
                   (h.session, _echo_frame(h, "c") + b"XXXXXXXX")])
    h.gateway.flush()
    out = h.link.frames[before:]
    assert [(f.type, f.body.get("Code") or f.body.get("Text")) for f in out] == [
        ("SYS.ECHO.RSP", "a"), ("SYS.ECHO.RSP", "b"), ("SYS.ECHO.RSP", "c"),
        ("SYS.ERROR", "E100")]
    assert h.session.state == CLOSED


def test_a_read_already_received_is_acted_on_before_the_timers_run(tmp_path: Path) -> None:
    """The server acts on a turn's reads at the end of the turn; a timer tick that comes
    first (a relay timeout, the silence check) must see them acted on already."""
    from twisted.internet.task import Clock

    from gateway.server import GatewayFactory

    h = _ready(tmp_path)
    clock = Clock()
    factory = GatewayFactory(h.gateway, clock)
    before = len(h.link.frames)
    h.clock.advance(89.0)  # one more second of silence and the tick closes the session
    factory.read(h.session, _echo_frame(h, "queued"))
    h.clock.advance(2.0)
    factory.tick()  # due before the end-of-turn flush
    clock.advance(0)
    out = h.link.frames[before:]
    assert [(f.type, f.body.get("Text")) for f in out] == [("SYS.ECHO.RSP", "queued")]
    assert h.session.state != CLOSED  # the frame counted as a sign of life
