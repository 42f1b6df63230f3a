"""PROTOCOL §5.3 key order: the side answering a KEYX sends its SYS.KEYX.RSP before
anything under the new key, since the peer cannot derive that key until it has the
answer (issue 17, case 7)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import x25519
from test_session import Harness, _raw

from conftest import BANK, BROKER
from flows import FAST_REVERSALS, signed, xfer
from peer import Frame, TestPeer


def keyx_request(peer: TestPeer, key_id: str) -> tuple[str, bytes, Callable[[Frame], None]]:
    """A SYS.KEYX.REQ of ``peer`` (its id, its frame) and what completes it from the
    answer: check the KCV and make the derived key the peer's current one."""
    eph = x25519.X25519PrivateKey.generate()
    nonce = os.urandom(16).hex()
    pub = base64.b64encode(eph.public_key().public_bytes_raw()).decode()
    msg_id, xml = peer.build("SYS.KEYX.REQ", [("KeyId", key_id), ("Curve", "X25519"),
                                              ("PublicKey", pub), ("Nonce", nonce)])

    def complete(rsp: Frame) -> None:
        body = rsp.body
        assert body["Result"] == "0000", body
        shared = eph.exchange(x25519.X25519PublicKey.from_public_bytes(
            base64.b64decode(body["PublicKey"])))
        mac_key, data_key = peer.derive(shared, nonce, body["Nonce"], key_id)
        assert hmac.new(mac_key, b"SBDX KCV", hashlib.sha256).hexdigest()[:8] == body["Kcv"]
        peer.keys[key_id] = (mac_key, data_key)
        peer.key_id = key_id

    return msg_id, peer.frame(xml, mac=False), complete


def test_after_a_restart_the_keyx_answer_goes_before_the_queued_reversal(
        home: Any, start_gateway: Any) -> None:
    """A reversal queued for the bank is sent when its session becomes ready, which is
    when the gateway installs the key the bank asked for: after the RSP, not before."""
    gw = start_gateway(**FAST_REVERSALS)
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker, "GTJAS1")
    broker.send("XFER.OUT.REQ", xfer("GTJAT1"), to=BANK)
    bank.recv("XFER.OUT.REQ")  # never answered
    assert broker.recv("XFER.OUT.RSP", timeout=5).body["Result"] == "B330"
    bank.recv("XFER.REVERSE.REQ", timeout=5)  # never answered either: still queued
    gw.kill()

    gw2 = start_gateway(**FAST_REVERSALS)
    bank2 = gw2.peer(BANK).connect()
    assert bank2.logon().body["Result"] == "0000"
    msg_id, frame, complete = keyx_request(bank2, "BK1")
    bank2.send_raw(frame)
    first = bank2.recv_frame()
    assert (first.type, first.head("RefId")) == ("SYS.KEYX.RSP", msg_id), first.xml
    complete(first)
    rev = bank2.recv_frame(timeout=5)
    assert rev.type == "XFER.REVERSE.REQ" and rev.key_id == "BK1", rev.xml
    bank2.verify_from_gateway(rev)  # its MAC holds under the key derived from the RSP
    assert (rev.body["OrigType"], rev.body["OrigFrom"], rev.body["OrigBizSn"]) == (
        "XFER.OUT", BROKER, "GTJAT1")
    bank2.send("XFER.REVERSE.RSP", [("Result", "0000"), ("ResultText", "reversed"),
                                    ("BizSn", rev.body["BizSn"])], to="GW01",
               ref=rev.head("MsgId"))
    gw2.wait_for_log("REVERSED")
    assert "SYS.ERROR" not in [f.type for f in bank2.inbox]


def _sends_when_ready(h: Harness) -> None:
    """The gateway's owner queues a message the moment the session becomes ready (as
    the reversal queue does)."""
    told = h.gateway.session_ready

    def session_ready(session: Any) -> None:
        told(session)
        session.send("SYS.ECHO.REQ", {"Text": "ready"})

    h.gateway.session_ready = session_ready  # type: ignore[method-assign]


def test_what_the_owner_sends_on_ready_follows_the_answer_to_the_peers_keyx(
        tmp_path: Path) -> None:
    h = Harness(tmp_path, heartbeat_seconds=30.0)
    _sends_when_ready(h)
    h.logon()
    before = len(h.link.frames)
    msg_id, frame, complete = keyx_request(h.peer, "PK1")
    h.session.receive_bytes(frame)
    h.gateway.flush()
    out = h.link.frames[before:]
    assert [f.type for f in out] == ["SYS.KEYX.RSP", "SYS.ECHO.REQ"]
    assert out[0].head("RefId") == msg_id and out[0].key_id == "-"
    complete(out[0])
    assert out[1].key_id == "PK1"
    h.peer.verify_from_gateway(out[1])


def test_a_peer_rotation_is_answered_before_anything_under_the_new_key(
        tmp_path: Path) -> None:
    """Frames queued before the peer's KEYX.REQ keep the old key; the answer comes
    next; only then the new key (a reply, the next heartbeat)."""
    h = Harness(tmp_path, heartbeat_seconds=30.0)
    h.logon()
    h.tick(5.1)
    h.answer_keyx()
    old = h.session.keyring.current
    assert old is not None
    msg_id, keyx, complete = keyx_request(h.peer, "PK2")
    echo_id, echo = h.peer.build("SYS.ECHO.REQ", [("Text", "after")])
    before = len(h.link.frames)
    h.session.receive_bytes(_raw(h, h.peer.build("SYS.ECHO.REQ", [("Text", "before")])[1])
                            + keyx)
    h.gateway.flush()
    out = h.link.frames[before:]
    assert [(f.type, f.key_id) for f in out] == [("SYS.ECHO.RSP", old.key_id),
                                                 ("SYS.KEYX.RSP", "-")]
    complete(out[1])
    h.session.receive_bytes(_raw(h, echo))
    h.tick(30.5)
    after = h.link.frames[before + 2:]
    assert [(f.type, f.key_id) for f in after] == [("SYS.ECHO.RSP", "PK2"),
                                                   ("SYS.HEARTBEAT", "PK2")]
    assert after[0].head("RefId") == echo_id
    for f in after:
        h.peer.verify_from_gateway(f)


def test_a_keyx_reusing_a_key_id_is_refused_and_the_key_stays(tmp_path: Path) -> None:
    h = Harness(tmp_path, heartbeat_seconds=30.0)
    h.logon()
    _, frame, complete = keyx_request(h.peer, "PK3")
    h.session.receive_bytes(frame)
    h.gateway.flush()
    complete(h.link.frames[-1])
    current = h.session.keyring.current
    _, again, _ = keyx_request(h.peer, "PK3")
    h.session.receive_bytes(again)
    h.gateway.flush()
    rsp = h.link.frames[-1]
    assert rsp.type == "SYS.KEYX.RSP" and rsp.body["Result"] != "0000"
    assert "already used" in rsp.body["ResultText"]
    assert h.session.keyring.current is current
