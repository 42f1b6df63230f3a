"""`gateway serve` over real loopback sockets: sessions, relay, journal, codes (§1–§7)."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from conftest import BANK, BROKER, RunningGateway, make_home
from flows import FUND, WALLET, accept_gateway_logon, signed
from peer import TestPeer, now_iso


def xfer(biz_sn: str, amount: str = "1234.50") -> list[tuple[str, str]]:
    return [("BizSn", biz_sn), ("FundAcct", FUND), ("WalletId", WALLET), ("Amount", amount),
            ("Ccy", "CNY")]


def bank_answers(bank: TestPeer, result: str = "0000", bank_sn: str = "CCB0001"):  # type: ignore[no-untyped-def]
    req = bank.recv("XFER.OUT.REQ", "XFER.IN.REQ")
    bank.verify_from_gateway(req)
    bank.send(req.type.replace(".REQ", ".RSP"),
              [("Result", result), ("ResultText", "ok" if result == "0000" else "no"),
               ("BizSn", req.body["BizSn"]), ("BankSn", bank_sn), ("SweepRef", "SW1")],
              to=BROKER, ref=req.head("MsgId"))
    return req


@pytest.fixture
def pair(start_gateway):  # type: ignore[no-untyped-def]
    gw = start_gateway()
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker)
    yield gw, bank, broker
    bank.close()
    broker.close()


def test_logon_keyx_and_a_relayed_round_trip(pair) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = pair
    msg_id = broker.send("XFER.OUT.REQ", xfer("GTJAV1"), to=BANK)
    req = bank_answers(bank)
    assert req.head("MsgId") == msg_id and req.head("From") == BROKER
    assert req.body["Amount"] == "1234.50"
    rsp = broker.recv("XFER.OUT.RSP")
    broker.verify_from_gateway(rsp)
    assert rsp.head("RefId") == msg_id
    assert rsp.body["Result"] == "0000" and rsp.body["BankSn"] == "CCB0001"


def test_repeat_is_answered_from_the_journal_and_never_relayed_twice(pair) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = pair
    broker.send("XFER.OUT.REQ", xfer("GTJAV2"), to=BANK)
    bank_answers(bank, bank_sn="CCB0002")
    first = broker.recv("XFER.OUT.RSP")
    repeat_id = broker.send("XFER.OUT.REQ", xfer("GTJAV2"), to=BANK)
    again = broker.recv("XFER.OUT.RSP")
    assert again.head("RefId") == repeat_id
    assert again.body == first.body
    with pytest.raises(TimeoutError):
        bank.recv("XFER.OUT.REQ", timeout=1)


def test_bizsn_reused_with_other_content_is_b312(pair) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = pair
    broker.send("XFER.OUT.REQ", xfer("GTJAV3"), to=BANK)
    bank_answers(bank)
    broker.recv("XFER.OUT.RSP")
    rsp = broker.request("XFER.OUT.REQ", xfer("GTJAV3", amount="1.00"), to=BANK)
    assert rsp.body["Result"] == "B312"
    assert rsp.body["BizSn"] == "GTJAV3"


def test_destination_not_connected_is_s901(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway()
    broker = gw.peer(BROKER).open_session()
    rsp = broker.request("XFER.OUT.REQ", xfer("GTJAV4"), to=BANK)
    assert rsp.type == "XFER.OUT.RSP" and rsp.body["Result"] == "S901"


def test_type_not_allowed_for_the_role_is_e208(pair) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = pair
    rsp = bank.request("PAY.ORDER.REQ", [("BizSn", "CCBP1"), ("OrderNo", "O1"), ("WalletId", WALLET),
                                         ("Amount", "10.00"), ("Ccy", "CNY"),
                                         ("ProductCode", "L2"), ("ProductKind", "LEVEL2"),
                                         ("ServiceEnd", "2026-12-31")], to=BROKER)
    assert rsp.type == "SYS.ERROR" and rsp.body["Code"] == "E208"


def test_bad_messages_get_their_code_while_a_healthy_session_keeps_working(pair) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = pair
    bad = gw.peer(BROKER).open_session()

    def code_of(frame_bytes: bytes) -> str:
        bad.send_raw(frame_bytes)
        f = bad.recv("SYS.ERROR")
        return f.body["Code"]

    def healthy(n: int) -> None:
        broker.send("XFER.OUT.REQ", xfer(f"GTJAH{n}"), to=BANK)
        bank_answers(bank)
        assert broker.recv("XFER.OUT.RSP").body["Result"] == "0000"

    _, good = bad.build("XFER.OUT.REQ", xfer("GTJAX1"), to=BANK)

    def framed(payload: bytes) -> bytes:
        return b"%08d" % len(payload) + payload

    kid, mac = bad.mac(good)
    env = f"SBDX1 {kid} {mac} {bad.sign(good)}".encode()
    assert code_of(framed(env + b"\n<Msg")) == "E110"
    healthy(1)
    _, invalid = bad.build("XFER.OUT.REQ", xfer("GTJAX2", amount="12.5"), to=BANK)
    assert code_of(bad.frame(invalid)) == "E111"
    _, unknown = bad.build("XFER.OUT.REQ", xfer("GTJAX3"), to=BANK)
    unknown = unknown.replace(b"XFER.OUT.REQ", b"XFER.SIDE.REQ")
    assert code_of(bad.frame(unknown)) == "E112"
    _, x4 = bad.build("XFER.OUT.REQ", xfer("GTJAX4"), to=BANK)
    payload = bad.frame(x4)[8:]
    mac_at = payload.index(b"HS256:") + 6
    wrong = b"B" if payload[mac_at:mac_at + 1] == b"A" else b"A"
    assert code_of(framed(payload[:mac_at] + wrong + payload[mac_at + 1:])) == "E200"
    _, x5 = bad.build("XFER.OUT.REQ", xfer("GTJAX5"), to=BANK)
    assert code_of(bad.frame(x5, mac=False)) == "E200"
    _, x6 = bad.build("XFER.OUT.REQ", xfer("GTJAX6"), to=BANK)
    bad.keys["NOPE"] = bad.keys[bad.key_id]
    assert code_of(bad.frame(x6, key_id="NOPE")) == "E201"
    _, x7 = bad.build("XFER.OUT.REQ", xfer("GTJAX7"), to=BANK)
    f7 = bad.frame(x7)
    sig_at = f7.index(b"ES256:") + 6 + 17 + 10
    f7 = f7[:sig_at] + (b"A" if f7[sig_at:sig_at + 1] != b"A" else b"B") + f7[sig_at + 1:]
    assert code_of(f7) == "E202"
    healthy(2)
    _, x8 = bad.build("XFER.OUT.REQ", xfer("GTJAX8"), to=BANK)
    assert code_of(bad.frame(x8, sign=False)) == "E202"
    other = gw.peer(BANK)  # signs with the bank's key on the broker's session
    _, x9 = bad.build("XFER.OUT.REQ", xfer("GTJAX9"), to=BANK)
    kid, mac = bad.mac(x9)
    assert code_of(framed(f"SBDX1 {kid} {mac} {other.sign(x9)}".encode() + b"\n" + x9)) == "E203"
    msg_id, x10 = bad.build("XFER.OUT.REQ", xfer("GTJAX10"), to=BANK)
    bad.send_raw(bad.frame(x10))
    bank_answers(bank)
    bad.recv("XFER.OUT.RSP")
    _, replay = bad.build("XFER.OUT.REQ", xfer("GTJAX11"), to=BANK, msg_id=msg_id)
    assert code_of(bad.frame(replay)) == "E204"
    _, skewed = bad.build("XFER.OUT.REQ", xfer("GTJAX12"), to=BANK, time=now_iso(-3600))
    assert code_of(bad.frame(skewed)) == "E205"
    _, tampered = bad.build("CTS.SIGN.REQ", [
        ("BizSn", "GTJAC1"), ("FundAcct", FUND), ("WalletId", WALLET), ("WalletLevel", "1"),
        ("WalletKind", "PERSONAL"), ("CustName", "张三"), ("IdType", "01"),
        ("IdNo", "110101199003071234"), ("Channel", "APP")], to=BANK, encrypt=("CustName", "IdNo"))
    tampered = tampered.replace(b'enc="A256GCM">', b'enc="A256GCM">AAAA', 1)
    assert code_of(bad.frame(tampered)) == "E209"
    healthy(3)
    # E207: a fresh session that logged on but has no key yet
    fresh = gw.peer(BROKER).connect()
    assert fresh.logon().body["Result"] == "0000"
    fresh.send("XFER.OUT.REQ", xfer("GTJAX13"), to=BANK)
    assert fresh.recv("SYS.ERROR").body["Code"] == "E207"
    # a bad envelope line inside a well-formed frame: E100, the session stays open
    bad.send_raw(framed(b"SBDX2 what\n<Msg/>"))
    assert bad.recv("SYS.ERROR").body["Code"] == "E100"
    echo = bad.request("SYS.ECHO.REQ", [("Text", "still open")])
    assert echo.body["Text"] == "still open"
    # a bad length header (E100) and an oversize one (E101) close the connection
    bad.send_raw(b"0000001xjunk")
    assert bad.recv("SYS.ERROR").body["Code"] == "E100"
    assert bad.closed_by_gateway()
    big = gw.peer(BROKER).open_session()
    big.send_raw(b"99999999")
    assert big.recv("SYS.ERROR").body["Code"] == "E101"
    assert big.closed_by_gateway()
    healthy(4)


def test_logon_with_unknown_party_or_wrong_key_is_refused_and_closed(start_gateway) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    gw = start_gateway()
    stranger = TestPeer("ABC", "BROKER", ec.generate_private_key(ec.SECP256R1()), gw.port)
    stranger.connect()
    rsp = stranger.request("SYS.LOGON.REQ", [("PartyId", "ABC"), ("Role", "BROKER"),
                                             ("Nonce", "00" * 16), ("HeartbeatSec", 30)], mac=False)
    assert rsp.body.get("Code", rsp.body.get("Result")) == "E203"
    assert stranger.closed_by_gateway()
    impostor = TestPeer(BROKER, "BROKER", ec.generate_private_key(ec.SECP256R1()), gw.port)
    impostor.connect()
    rsp = impostor.logon()
    assert rsp.body.get("Code", rsp.body.get("Result")) == "E203"
    assert impostor.closed_by_gateway()


def test_key_rotation_old_key_accepted_in_grace_refused_after(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(grace_seconds=1.0)
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker)
    old = broker.key_id
    broker.keyx()
    assert broker.key_id != old
    broker.send("XFER.OUT.REQ", xfer("GTJAR1"), to=BANK, key_id=old)
    bank_answers(bank)
    assert broker.recv("XFER.OUT.RSP").body["Result"] == "0000"
    time.sleep(1.5)
    rsp = broker.request("XFER.OUT.REQ", xfer("GTJAR2"), to=BANK, key_id=old)
    assert rsp.type == "SYS.ERROR" and rsp.body["Code"] == "E201"
    broker.send("XFER.OUT.REQ", xfer("GTJAR3"), to=BANK)
    bank_answers(bank)
    assert broker.recv("XFER.OUT.RSP").body["Result"] == "0000"


def test_gateway_starts_keyx_when_the_peer_does_not(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(keyx_after_logon_seconds=0.5)
    broker = gw.peer(BROKER).connect()
    broker.logon()
    req = broker.recv("SYS.KEYX.REQ", timeout=5)
    broker.answer_keyx(req)
    rsp = broker.request("SYS.ECHO.REQ", [("Text", "ping")])
    assert rsp.body["Text"] == "ping"
    broker.verify_from_gateway(rsp)


def test_heartbeats_flow_and_silence_closes_the_session(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(min_heartbeat_seconds=1)  # the default minimum is 5 s
    broker = gw.peer(BROKER).connect()
    broker.logon(heartbeat=1)
    broker.keyx()
    started = time.monotonic()  # the last message the gateway heard from us
    hb = broker.recv("SYS.HEARTBEAT", timeout=3)
    broker.verify_from_gateway(hb)
    assert broker.closed_by_gateway(timeout=8)
    assert 2.0 < time.monotonic() - started < 6.0
    gw.wait_for_log("silent")


def test_logoff_ends_the_session(pair) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = pair
    rsp = broker.request("SYS.LOGOFF.REQ", [("Reason", "end of day")])
    assert rsp.body["Result"] == "0000"
    assert broker.closed_by_gateway()


def test_sigterm_drains_and_exits_zero(pair) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = pair
    assert gw.stop() == 0
    assert "journal flushed" in gw.log_text()


def test_acknowledged_request_survives_sigkill_and_repeat_gets_same_answer(home, start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway()
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker)
    broker.send("XFER.OUT.REQ", xfer("GTJAK1"), to=BANK)
    bank_answers(bank, bank_sn="CCB0099")
    first = broker.recv("XFER.OUT.RSP")
    gw.kill()  # SIGKILL right after the acknowledgement reached the broker
    db = sqlite3.connect(home.root / "data" / "journal.sqlite3")
    state, = db.execute("SELECT state FROM record WHERE biz_sn='GTJAK1'").fetchone()
    db.close()
    assert state == "SUCCEEDED"
    gw2 = start_gateway()
    bank2 = gw2.peer(BANK).open_session()
    broker2 = gw2.peer(BROKER).open_session()
    broker2.send("XFER.OUT.REQ", xfer("GTJAK1"), to=BANK)
    again = broker2.recv("XFER.OUT.RSP")
    assert again.body == first.body
    with pytest.raises(TimeoutError):
        bank2.recv("XFER.OUT.REQ", timeout=1)


def test_gateway_connects_out_logs_on_keys_and_relays(home, start_gateway) -> None:  # type: ignore[no-untyped-def]
    import socket

    from cryptography.hazmat.primitives import serialization

    from gateway.keystore import KeyStore

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    pem = home.keys[BANK].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    KeyStore(home.root / "keys").add_peer(BANK, "BANK", pem, connect=f"127.0.0.1:{port}")
    gw = start_gateway()
    listener.settimeout(10)
    conn, _ = listener.accept()
    bank = gw.peer(BANK)
    bank.sock = conn
    logon = bank.recv("SYS.LOGON.REQ")
    bank.verify_from_gateway(logon)  # signed by the gateway's long-term key
    assert (logon.body["PartyId"], logon.body["Role"]) == ("GW01", "GATEWAY")
    assert logon.head("To") == BANK and logon.mac == "-"
    bank.send("SYS.LOGON.RSP", [("Result", "0000"), ("ResultText", "welcome"),
                                ("SessionId", "B1"), ("Nonce", "cd" * 16),
                                ("TradeDate", "2026-11-25")], mac=False,
              ref=logon.head("MsgId"))
    keyx = bank.recv("SYS.KEYX.REQ")  # the gateway keys at once when it dialled out
    bank.answer_keyx(keyx)
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker)
    msg_id = broker.send("XFER.OUT.REQ", xfer("GTJAOUT1"), to=BANK)
    bank_answers(bank)
    assert broker._answer_to(msg_id, "XFER.OUT.REQ").body["Result"] == "0000"
    listener.close()


def test_serve_is_the_party_init_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`gateway init --party GW02` makes the gateway GW02: sessions log on to GW02 and
    its answers come From GW02; a config naming another party refuses to start."""
    home = make_home(tmp_path / "gw", gateway_party="GW02")
    gw = RunningGateway(home)
    try:
        broker = gw.peer(BROKER, gateway="GW02").open_session()
        echo = broker.request("SYS.ECHO.REQ", [("Text", "who")])
        assert echo.head("From") == "GW02"
    finally:
        gw.kill()
    home.write_config(party="GW01")
    out = subprocess.run([sys.executable, "-m", "gateway", "--home", str(home.root), "serve"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "differs from GW02" in out.stderr, out.stderr


def framed(payload: bytes) -> bytes:
    return b"%08d" % len(payload) + payload


def journal_of(gw: RunningGateway) -> sqlite3.Connection:
    return sqlite3.connect(gw.home.root / "data" / "journal.sqlite3")


def register_dialled_bank(home, port: int) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    from gateway.keystore import KeyStore

    pem = home.keys[BANK].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    KeyStore(home.root / "keys").add_peer(BANK, "BANK", pem, connect=f"127.0.0.1:{port}")


def test_a_refused_message_is_kept_in_the_journal_as_evidence(pair) -> None:  # type: ignore[no-untyped-def]
    """§3: the gateway keeps the bytes and envelope of everything it received, refused
    messages too: exactly as received, with what of the head could be read."""
    gw, bank, broker = pair
    msg_id, xml = broker.build("XFER.OUT.REQ", xfer("GTJAE1"), to=BANK)
    payload = broker.frame(xml)[8:]
    mac_at = payload.index(b"HS256:") + 6
    wrong = b"B" if payload[mac_at:mac_at + 1] == b"A" else b"A"
    payload = payload[:mac_at] + wrong + payload[mac_at + 1:]
    broker.send_raw(framed(payload))
    err = broker.recv("SYS.ERROR")
    assert (err.body["Code"], err.body["RefMsgId"]) == ("E200", msg_id)
    db = journal_of(gw)
    envelope = payload.split(b"\n", 1)[0]
    kept = db.execute("SELECT direction, party, msg_type, ref_id, envelope, xml FROM message"
                      " WHERE msg_id=?", (msg_id,)).fetchall()
    assert kept == [("IN", BROKER, "XFER.OUT.REQ", None, envelope, xml)]
    # not well-formed (E110), a bad envelope line (E100): kept, their head unknown (NULL)
    for junk, code in ((envelope + b"\n<Msg", "E110"), (b"SBDX2 what\n<Msg/>", "E100")):
        broker.send_raw(framed(junk))
        assert broker.recv("SYS.ERROR").body["Code"] == code
        env, rest = junk.split(b"\n", 1)
        rows = db.execute("SELECT party, msg_type, msg_id FROM message WHERE direction='IN'"
                          " AND envelope=? AND xml=?", (env, rest)).fetchall()
        assert rows == [(BROKER, None, None)], (code, rows)
    # refused after it was journaled (E208): kept once, not twice
    rsp = bank.request("PAY.ORDER.REQ", [("BizSn", "CCBP1"), ("OrderNo", "O1"),
                                         ("WalletId", WALLET), ("Amount", "10.00"),
                                         ("Ccy", "CNY"), ("ProductCode", "L2"),
                                         ("ProductKind", "LEVEL2"),
                                         ("ServiceEnd", "2026-12-31")], to=BROKER)
    assert rsp.body["Code"] == "E208"
    refused = db.execute("SELECT count(*) FROM message WHERE direction='IN' AND msg_id=?",
                         (rsp.body["RefMsgId"],)).fetchone()[0]
    assert refused == 1


def test_a_flood_of_refused_frames_is_journaled_without_growing_memory(pair) -> None:  # type: ignore[no-untyped-def]
    """Each refused frame is written to the journal in its turn's transaction and
    dropped: 30 MiB of refused 256 KiB frames leave the gateway's memory where it was."""
    import re
    from pathlib import Path

    gw, bank, broker = pair
    bad = gw.peer(BROKER).open_session()
    junk = framed(b"SBDX1 - - -\n<Msg>" + b"x" * (256 * 1024))  # E110, not well-formed

    def flood(n: int) -> None:
        for _ in range(n):
            bad.send_raw(junk)
        for _ in range(n):
            assert bad.recv("SYS.ERROR", timeout=30).body["Code"] == "E110"

    def rss_kib() -> int:
        status = Path(f"/proc/{gw.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    flood(20)  # warm up: buffers, SQLite page cache
    before = rss_kib()
    flood(120)
    assert rss_kib() - before < 12 * 1024, (before, rss_kib())
    kept = journal_of(gw).execute("SELECT count(*), max(length(xml)) FROM message WHERE "
                                  "direction='IN' AND msg_type IS NULL").fetchone()
    assert kept == (140, len(junk) - 8 - len(b"SBDX1 - - -\n"))
    assert bad.request("SYS.ECHO.REQ", [("Text", "alive")]).body["Text"] == "alive"


def test_a_relayed_type_sent_to_the_gateway_itself_is_e208(pair) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = pair
    rsp = broker.request("XFER.OUT.REQ", xfer("GTJAG1"), to="GW01")
    assert (rsp.type, rsp.body["Code"]) == ("SYS.ERROR", "E208"), rsp.body
    assert "GW01 does not answer it" in rsp.body["Text"]
    unknown = broker.request("XFER.OUT.REQ", xfer("GTJAG2"), to="NOBODY")
    assert (unknown.type, unknown.body["Code"]) == ("SYS.ERROR", "E203")
    with pytest.raises(TimeoutError):
        bank.recv("XFER.OUT.REQ", timeout=0.8)


def test_logon_with_a_bad_or_missing_signature_is_e202_and_closed(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway()
    for tampered in (True, False):
        broker = gw.peer(BROKER).connect()
        msg_id, xml = broker.build("SYS.LOGON.REQ", [
            ("PartyId", BROKER), ("Role", "BROKER"), ("Nonce", os.urandom(16).hex()),
            ("HeartbeatSec", 30)])
        frame = broker.frame(xml, mac=False, sign=tampered)
        if tampered:
            at = frame.index(b"ES256:") + 6 + 17 + 10
            frame = frame[:at] + (b"A" if frame[at:at + 1] != b"A" else b"B") + frame[at + 1:]
        broker.send_raw(frame)
        rsp = broker.recv("SYS.LOGON.RSP")  # the refusal of a logon is its answer
        assert (rsp.body["Result"], rsp.head("RefId")) == ("E202", msg_id), rsp.body
        assert broker.closed_by_gateway()
        kept = journal_of(gw).execute("SELECT party, msg_type FROM message WHERE direction='IN'"
                                      " AND msg_id=?", (msg_id,)).fetchall()
        assert kept == [(None, "SYS.LOGON.REQ")]  # evidence; no party was logged on


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_drain_refuses_new_work_times_out_what_is_held_and_exits_zero(start_gateway,
                                                                       signum) -> None:  # type: ignore[no-untyped-def]
    """During the drain a new request gets S902; the one the bank holds is answered B330
    when it times out, its reversal stays queued in the journal, and serve exits 0."""
    gw = start_gateway(relay_timeout_seconds=2.0)
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker)
    held = broker.send("XFER.OUT.REQ", xfer("GTJAH1"), to=BANK)
    bank.recv("XFER.OUT.REQ")  # the bank never answers
    gw.proc.send_signal(signum)
    gw.wait_for_log("new requests to relay are refused")
    busy = broker.request("XFER.OUT.REQ", xfer("GTJAH2"), to=BANK)
    assert busy.body["Result"] == "S902" and "shutting down" in busy.body["ResultText"]
    assert broker._answer_to(held, "XFER.OUT.REQ").body["Result"] == "B330"
    assert gw.proc.wait(30) == 0
    assert "journal flushed" in gw.log_text()
    db = journal_of(gw)
    assert db.execute("SELECT state FROM record WHERE biz_sn='GTJAH1'").fetchall() == [("REVERSING",)]
    assert db.execute("SELECT state FROM reversal WHERE biz_sn='GTJAH1'").fetchall() == [("QUEUED",)]
    assert db.execute("SELECT count(*) FROM record WHERE biz_sn='GTJAH2'").fetchone()[0] == 0
    relayed = db.execute("SELECT count(*) FROM message WHERE direction='OUT' AND "
                         "msg_type='XFER.OUT.REQ'").fetchone()[0]
    assert relayed == 1


def test_dial_out_reconnects_after_the_peer_drops(home, start_gateway) -> None:  # type: ignore[no-untyped-def]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(15)
    register_dialled_bank(home, listener.getsockname()[1])
    gw = start_gateway()
    broker = gw.peer(BROKER).open_session()
    for attempt in range(2):
        conn, _ = listener.accept()  # the first dial, then the redial after the drop
        bank = gw.peer(BANK)
        bank.sock = conn
        accept_gateway_logon(bank)
        if attempt == 0:
            signed(bank, broker)
        msg_id = broker.send("XFER.OUT.REQ", xfer(f"GTJARC{attempt}"), to=BANK)
        bank_answers(bank)
        assert broker._answer_to(msg_id, "XFER.OUT.REQ").body["Result"] == "0000"
        conn.close()  # the bank drops the connection
    listener.close()


def test_before_logon_refused_bytes_are_kept_only_up_to_4_kib(pair) -> None:  # type: ignore[no-untyped-def]
    """Nobody vouches for bytes sent before logon: a peer that has not logged on cannot
    fill the disk with megabyte frames — its refused payloads are kept truncated."""
    from gateway.session import UNAUTHENTICATED_EVIDENCE_BYTES

    gw, bank, broker = pair
    stranger = gw.peer(BROKER).connect()  # connected, never logged on
    junk = b"SBDX1 - - -\n<Msg>" + b"y" * (512 * 1024)
    stranger.send_raw(framed(junk))
    assert stranger.recv("SYS.ERROR", timeout=30).body["Code"] == "E110"
    kept = journal_of(gw).execute("SELECT party, envelope, xml FROM message WHERE "
                                  "direction='IN' AND party IS NULL AND length(xml) > 1000").fetchall()
    assert kept == [(None, b"SBDX1 - - -", junk[12:UNAUTHENTICATED_EVIDENCE_BYTES])]


def test_frames_of_one_write_from_two_sessions_are_relayed_in_order_even_if_it_closes(
        pair) -> None:  # type: ignore[no-untyped-def]
    """A reactor turn's reads are acted on together, in stages (gateway.session.
    receive_reads): order within a session is kept, and a connection that writes its
    requests and closes at once still has them journaled and relayed."""
    gw, bank, broker = pair
    second = gw.peer(BROKER).open_session()
    try:
        first_ids, second_ids = [], []
        data1, data2 = b"", b""
        for i in range(5):
            msg_id, xml = broker.build("XFER.OUT.REQ", xfer(f"GTJAT1{i}", amount="1.00"), to=BANK)
            first_ids.append(msg_id)
            data1 += broker.frame(xml)
            msg_id, xml = second.build("XFER.OUT.REQ", xfer(f"GTJAT2{i}", amount="2.00"), to=BANK)
            second_ids.append(msg_id)
            data2 += second.frame(xml)
        second.send_raw(data2)
        broker.send_raw(data1)
        broker.close()  # gone before any answer can reach it
        relayed = [bank_answers(bank).head("MsgId") for _ in range(10)]
        assert [m for m in relayed if m in first_ids] == first_ids
        assert [m for m in relayed if m in second_ids] == second_ids
        answers = [second.recv("XFER.OUT.RSP") for _ in range(5)]
        assert [a.head("RefId") for a in answers] == second_ids
        assert all(a.body["Result"] == "0000" for a in answers)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            states = journal_of(gw).execute(
                "SELECT biz_sn, state FROM record WHERE biz_sn LIKE 'GTJAT1%'").fetchall()
            if len(states) == 5 and all(s == "SUCCEEDED" for _, s in states):
                break
            time.sleep(0.1)
        assert sorted(states) == [(f"GTJAT1{i}", "SUCCEEDED") for i in range(5)]
    finally:
        second.close()
