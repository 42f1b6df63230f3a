"""Issue 18 defect 2: what a peer costs before and after logon (PROTOCOL §3, §5).

Before a verified logon the first refused frame ends the connection, the answer is an
unsigned SYS.ERROR and the evidence is bounded per connection and gateway-wide; a
connection with no logon is closed at ``logon_timeout_seconds``; slots held by
connections that never log on are given to ones that do.  After logon heartbeats,
echoes and key exchanges are bounded per session and heartbeats leave no evidence row;
a HeartbeatSec below ``min_heartbeat_seconds`` is refused at logon.  Measured in rows
and bytes of the journal, not in time (docs/operations.md "Limits on a peer").
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

from gateway.session import CLOSED, UNAUTHENTICATED_EVIDENCE_BYTES

from conftest import BANK, BROKER, RunningGateway
from flows import answer, signed, xfer
from peer import Frame, TestPeer, now_iso


def framed(payload: bytes) -> bytes:
    return b"%08d" % len(payload) + payload


def journal_of(gw: RunningGateway) -> sqlite3.Connection:
    return sqlite3.connect(gw.home.root / "data" / "journal.sqlite3")


def rows_of(gw: RunningGateway, where: str = "1", args: tuple[Any, ...] = ()) -> tuple[int, int]:
    """(rows, bytes of envelope + xml) of the message table matching ``where``."""
    with journal_of(gw) as db:
        n, size = db.execute("SELECT count(*), coalesce(sum(length(envelope) + length(xml)), 0)"
                             f" FROM message WHERE {where}", args).fetchone()
    return int(n), int(size)


def unauthenticated_rows(gw: RunningGateway) -> tuple[int, int]:
    """Rows kept for connections that never logged on: refused frames (party NULL) and
    the SYS.ERROR answers to them (sessions with no logon row)."""
    return rows_of(gw, "session NOT IN (SELECT session FROM message WHERE msg_type LIKE"
                       " 'SYS.LOGON.%' AND direction = 'IN' AND party IS NOT NULL)")


def junk_echo(peer: TestPeer) -> bytes:
    """A well-formed SYS.ECHO.REQ from a connection that has not logged on (E207)."""
    _, xml = peer.build("SYS.ECHO.REQ", [("Text", "knock knock")])
    return peer.frame(xml, mac=False, sign=False)


def send_all(peer: TestPeer, frames: list[bytes]) -> None:
    """Write ``frames`` in one go; the gateway may close the connection part-way."""
    try:
        peer.send_raw(b"".join(frames))
    except OSError:
        pass


def round_trip(bank: TestPeer, broker: TestPeer, sn: str) -> None:
    msg_id = broker.send("XFER.IN.REQ", xfer(sn, amount="1.00"), to=BANK)
    answer(bank)
    assert broker._answer_to(msg_id, "XFER.IN.REQ").body["Result"] == "0000"


# --- before logon ---------------------------------------------------------------------
def test_the_first_refused_frame_before_logon_ends_the_connection_unsigned(
        start_gateway) -> None:  # type: ignore[no-untyped-def]
    """Four connections keep sending a junk frame every 0.1 s (the issue's case): each
    gets one unsigned SYS.ERROR (no MAC, no signature: no private-key operation for a
    stranger) and is closed; it leaves at most two rows, the refused one ≤ 4 KiB."""
    gw = start_gateway()
    before = rows_of(gw)
    peers = [gw.peer(BROKER).connect() for _ in range(4)]
    junk = b"SBDX1 - - -\n<Msg>" + b"j" * 20_000
    for p in peers:
        p.send_raw(junk_echo(p))
    errors: list[Frame] = [p.recv_frame() for p in peers]
    assert [(e.type, e.body["Code"], e.key_id, e.mac, e.sig) for e in errors] == [
        ("SYS.ERROR", "E207", "-", "-", "-")] * 4
    for p in peers:
        for _ in range(5):  # a junk frame now and then is no sign of life any more
            try:
                p.send_raw(framed(junk))
            except OSError:
                break
            time.sleep(0.1)
        assert p.closed_by_gateway(timeout=5)
    rows, size = rows_of(gw)
    assert rows - before[0] <= 2 * len(peers), rows - before[0]
    assert size - before[1] <= len(peers) * (UNAUTHENTICATED_EVIDENCE_BYTES + 1024)


def test_unauthenticated_evidence_is_bounded_gateway_wide(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """120 connections each send one 6 KiB junk frame: the journal keeps at most
    ``unauthenticated_evidence_bytes_per_minute`` (256 KiB) for all of them together;
    the rest are closed unanswered and counted."""
    gw = start_gateway()
    socks = [socket.create_connection(("127.0.0.1", gw.port), timeout=10) for _ in range(120)]
    frame = framed(b"SBDX1 - - -\n<Msg>" + b"z" * 6000)
    for s in socks:
        s.sendall(frame)
    answered = 0
    for s in socks:
        s.settimeout(10)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        answered += bool(data)  # EOF reached either way: the connection was closed
        s.close()
    rows, size = unauthenticated_rows(gw)
    assert size <= 256 * 1024, size
    assert 0 < answered < 120 and rows <= 2 * answered, (answered, rows)
    gw.wait_for_log("evidence budget for connections not logged on")


def test_a_silent_connection_is_closed_at_the_logon_deadline(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """No verified SYS.LOGON within ``logon_timeout_seconds`` (10 s): closed, although
    3 heartbeat intervals (90 s) have not passed."""
    gw = start_gateway()
    idle = socket.create_connection(("127.0.0.1", gw.port), timeout=15)
    started = time.monotonic()
    assert idle.recv(100) == b""
    assert 9.5 < time.monotonic() - started < 13
    gw.wait_for_log(r"no verified logon within 10 s: closing")


def test_slots_of_connections_that_never_log_on_go_to_a_bank(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """``max_connections`` = 10, filled by connections sending junk now and then, then
    again by silent ones: the bank still logs on at once both times."""
    gw = start_gateway(max_connections=10)
    junk = [gw.peer(BROKER).connect() for _ in range(10)]
    for p in junk:
        p.send_raw(junk_echo(p))
    time.sleep(0.3)
    bank = gw.peer(BANK).connect()
    assert bank.logon().body["Result"] == "0000"
    bank.close()
    silent = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(10)]
    time.sleep(0.3)
    bank = gw.peer(BANK).connect()
    assert bank.logon().body["Result"] == "0000"  # the oldest silent one made room
    bank.keyx()
    assert bank.request("SYS.ECHO.REQ", [("Text", "in")]).body["Text"] == "in"
    for s in silent:
        s.close()
    for p in junk:
        p.close()


# --- after logon ----------------------------------------------------------------------
def test_heartbeat_below_the_minimum_is_refused_at_logon(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway()
    fast = gw.peer(BROKER).connect()
    rsp = fast.logon(heartbeat=1)
    assert (rsp.type, rsp.body["Result"]) == ("SYS.LOGON.RSP", "E111"), rsp.body
    assert "HeartbeatSec" in rsp.body["ResultText"] and "5" in rsp.body["ResultText"]
    fast.verify_from_gateway(rsp)  # the peer is verified: the answer is signed
    assert fast.closed_by_gateway()
    ok = gw.peer(BROKER).connect()
    assert ok.logon(heartbeat=5).body["Result"] == "0000"


def test_2000_heartbeats_add_no_message_rows(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """2,000 heartbeats in one write: none is journaled as a message, the excess is
    dropped and the flooding session is closed; the others keep working."""
    gw = start_gateway()
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker)
    flood = gw.peer(BROKER).connect()
    session = flood.logon().body["SessionId"]
    flood.keyx()
    before = rows_of(gw)
    send_all(flood, [flood.frame(flood.build("SYS.HEARTBEAT", [])[1]) for _ in range(2000)])
    assert flood.closed_by_gateway()
    round_trip(bank, broker, "GTJAHB1")
    assert rows_of(gw, "msg_type = 'SYS.HEARTBEAT'") == (0, 0)
    assert rows_of(gw, "session = ?", (session,))[0] == 4  # LOGON and KEYX only, both ways
    after = rows_of(gw)
    assert after[0] - before[0] == 4, after[0] - before[0]  # the round trip's 4 rows


def test_echo_and_keyx_floods_are_limited(start_gateway) -> None:  # type: ignore[no-untyped-def]
    """SYS.ECHO.REQ: 10 at once, then 1/s, beyond that S902 (MAC, no signature); 200 in
    one write close the session (over ``max_over_limit_per_minute`` = 100).  A peer may
    start 2 KEYX at once, then 1 per 10 s."""
    gw = start_gateway()
    peer = gw.peer(BROKER).open_session()  # its one KEYX so far
    ids = [peer.send("SYS.ECHO.REQ", [("Text", str(i))]) for i in range(30)]
    answers = [peer._answer_to(i, "SYS.ECHO.REQ") for i in ids]
    kinds = [a.type for a in answers]
    echoed = kinds.count("SYS.ECHO.RSP")
    assert 10 <= echoed <= 11 and kinds[:10] == ["SYS.ECHO.RSP"] * 10, kinds
    busy = [a for a in answers if a.type == "SYS.ERROR"]
    assert len(busy) == 30 - echoed and {a.body["Code"] for a in busy} == {"S902"}
    assert all(a.sig == "-" and a.mac.startswith("HS256:") for a in busy)
    for a in busy:  # the MAC holds
        want = hmac.new(peer.keys[a.key_id][0], a.xml, hashlib.sha256).digest()
        assert base64.b64decode(a.mac[6:]) == want
    peer.keyx()  # the second of the burst
    rsp = peer.request("SYS.KEYX.REQ", [("KeyId", "PX1"), ("Curve", "X25519"),
                                        ("PublicKey", "A" * 43 + "="), ("Nonce", "ab" * 16)],
                       mac=False)
    assert (rsp.type, rsp.body["Code"]) == ("SYS.ERROR", "S902"), rsp.body
    flood = gw.peer(BROKER).open_session()
    before = rows_of(gw)[0]
    send_all(flood, [flood.frame(flood.build("SYS.ECHO.REQ", [("Text", "f")])[1])
                     for _ in range(200)])
    assert flood.closed_by_gateway()
    gw.wait_for_log("messages over their limits within 60 s: closing")
    grown = rows_of(gw)[0] - before
    assert grown <= 2 * (11 + 101), grown  # two rows each, never all 200 answered


# --- the same, sans-IO (fake clock): heartbeats at their allowed pace ----------------
def test_heartbeats_at_their_pace_are_all_accepted_and_never_journaled(tmp_path: Path) -> None:
    from test_session import Harness

    h = Harness(tmp_path, heartbeat_seconds=30.0, rotate_seconds=10.0**9)
    h.logon(heartbeat=10)
    h.tick(5.1)
    h.answer_keyx()
    rows = len(list(h.journal.messages()))
    for _ in range(2000):
        h.clock.advance(5.0)  # 2 per HeartbeatSec: the most allowed
        _, xml = h.peer.build("SYS.HEARTBEAT", [], time=now_iso(h.clock.t - time.time()))
        h.session.receive_bytes(h.peer.frame(xml))
        h.gateway.tick()
        h.gateway.flush()
    assert h.session.state != CLOSED
    assert "SYS.ERROR" not in h.link.types()
    assert len(list(h.journal.messages())) == rows  # ours, sent meanwhile, neither
    assert "SYS.HEARTBEAT" in h.link.types()


def test_one_read_of_junk_before_logon_gets_one_unsigned_answer(tmp_path: Path) -> None:
    """A frame and a bad length header in one read, before logon: the frame's refusal
    closes the session; the framing error after it is neither answered nor journaled."""
    from test_session import Harness

    h = Harness(tmp_path)
    _, xml = h.peer.build("SYS.ECHO.REQ", [("Text", "early")])
    junk = h.peer.frame(xml, mac=False)
    h.session.receive_bytes(junk + b"XXXXXXXX")  # the framing error comes after it
    h.gateway.flush()
    assert [(f.type, f.body["Code"], f.sig) for f in h.link.frames] == [("SYS.ERROR", "E207", "-")]
    assert h.session.state == CLOSED and h.link.closed
    assert [(r.direction, r.msg_type) for r in h.journal.messages()] == [
        ("IN", "SYS.ECHO.REQ"), ("OUT", "SYS.ERROR")]
