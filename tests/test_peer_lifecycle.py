"""PROTOCOL §9 key lifecycle (issue 18 defects 1 and 6, "Peer lifecycle"): `peer add
--replace/--next`, `peer promote/disable/enable/remove`, `key rotate/promote`, key
letters, all acting on a running gateway within 1 s without a signal; SIGHUP reloads
[alerts] and keeps sessions.  The commands run as an operator runs them: in another
process, while the gateway serves."""
from __future__ import annotations

import datetime as dt
import hashlib
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import BANK, BROKER
from flows import call, signed, xfer
from peer import Frame, TestPeer, signer_of

#: §9: a peer or key command is in force on a running gateway within this.
WITHIN = 1.0
CN = dt.timezone(dt.timedelta(hours=8))


def gateway_cli(home: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--home", str(home.root), *args],
                          capture_output=True, text=True, timeout=60)


def new_key(tmp_path: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / f"{name}.pem"
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, str(path)


def full_fingerprint(public_key: Any) -> str:
    return hashlib.sha256(public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def closing_frames(peer: TestPeer, timeout: float) -> list[Frame]:
    """The frames the gateway sends until it closes the connection (AssertionError if it
    is still open after ``timeout``)."""
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"still open after {timeout} s; got {[f.type for f in frames]}")
        try:
            frames.append(peer.recv_frame(left))
        except ConnectionError:
            return frames
        except TimeoutError:
            continue


def error_codes(frames: list[Frame]) -> list[str]:
    return [f.body["Code"] for f in frames if f.type == "SYS.ERROR"]


def refused_logon(gw: Any, party: str, key: ec.EllipticCurvePrivateKey) -> Frame:
    peer = TestPeer(party, "BANK" if party == BANK else "BROKER", key, gw.port).connect()
    try:
        rsp = peer.logon()
        assert rsp.type == "SYS.LOGON.RSP", rsp.body  # its Result and ResultText say why
        assert peer.closed_by_gateway(5)
        return rsp
    finally:
        peer.close()


def echo(peer: TestPeer, text: str = "still here") -> Frame:
    rsp = peer.request("SYS.ECHO.REQ", [("Text", text)])
    assert rsp.body["Text"] == text, rsp.body
    return rsp


# --- defect 1: a replaced key stops at once ----------------------------------------------
def test_after_peer_add_replace_the_old_keys_transfer_is_refused_and_its_session_closed(
        start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The issue's reproduction: a leaked broker key is replaced in another process;
    a 5000.00 XFER.OUT signed with the old key, on the session it logged on with, is
    refused E203 (or finds the session closed), nothing reaches the bank, and the new
    key works."""
    gw = start_gateway(relay_timeout_seconds=1.5)
    bank = gw.peer(BANK).open_session()
    leaked = gw.peer(BROKER).open_session()
    signed(bank, leaked)
    new, pem = new_key(tmp_path, "gtja-new")
    out = gateway_cli(gw.home, "peer", "add", "--id", BROKER, "--role", "BROKER", "--cert", pem,
                      "--replace")
    assert out.returncode == 0, out.stderr
    assert leaked.signer in out.stdout and signer_of(new.public_key()) in out.stdout
    assert "BROKER" in out.stdout

    try:
        msg_id = leaked.send("XFER.OUT.REQ", xfer(f"{BROKER}LEAK1", "5000.00"), to=BANK)
        rsp = leaked._answer_to(msg_id, "XFER.OUT.REQ", timeout=5)
        assert rsp.type == "SYS.ERROR" and rsp.body.get("Code") == "E203", (rsp.type, rsp.body)
        assert "no longer registered" in rsp.body["Text"]
    except ConnectionError:
        pass  # already closed by the registry watch: also refused
    assert closing_frames(leaked, WITHIN) is not None
    with pytest.raises(TimeoutError):
        bank.recv("XFER.OUT.REQ", timeout=1.0)

    gw.home.keys[BROKER] = new
    broker = gw.peer(BROKER).open_session()
    rsp = call(broker, "XFER.OUT.REQ", xfer(f"{BROKER}NEW1", "5000.00"), bank=bank)
    assert rsp.body["Result"] == "0000", rsp.body
    assert refused_logon(gw, BROKER, leaked.key).body["Result"] == "E203"


def test_after_a_banks_key_is_replaced_nothing_more_is_relayed_to_its_old_session(
        start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The other direction: a request sent the moment after the command returned is not
    handed to the session of the replaced key (it would read the client's data)."""
    gw = start_gateway(relay_timeout_seconds=1.5)
    old_bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(old_bank, broker)
    _, pem = new_key(tmp_path, "ccb-new")
    out = gateway_cli(gw.home, "peer", "add", "--id", BANK, "--role", "BANK", "--cert", pem,
                      "--replace")
    assert out.returncode == 0, out.stderr
    rsp = call(broker, "XFER.IN.REQ", xfer(f"{BROKER}AFTER1"))
    assert rsp.body["Result"] == "S901", rsp.body
    frames = closing_frames(old_bank, 3.0)
    assert [f.type for f in frames] == ["SYS.ERROR"], [f.type for f in frames]
    assert error_codes(frames) == ["E203"]


def test_an_idle_session_of_a_replaced_key_is_closed_within_1s_with_the_reason(
        start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway()
    idle = gw.peer(BANK).open_session()
    _, pem = new_key(tmp_path, "ccb-new")
    out = gateway_cli(gw.home, "peer", "add", "--id", BANK, "--role", "BANK", "--cert", pem,
                      "--replace")
    assert out.returncode == 0, out.stderr
    began = time.monotonic()
    frames = closing_frames(idle, 3.0)
    assert time.monotonic() - began < WITHIN
    assert error_codes(frames) == ["E203"], [f.body for f in frames]
    gw.wait_for_log(r"closing: key [0-9a-f]{16} is no longer registered for CCB")


def test_a_role_change_needs_replace_and_then_closes_the_sessions_of_the_old_role(
        start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Defect 6: a bank silently became a BROKER (the next transfer got E208)."""
    gw = start_gateway()
    bank = gw.peer(BANK).open_session()
    pem = tmp_path / "ccb.pem"
    pem.write_bytes(gw.home.keys[BANK].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    refused = gateway_cli(gw.home, "peer", "add", "--id", BANK, "--role", "BROKER",
                          "--cert", str(pem))
    assert refused.returncode == 1
    assert "role" in refused.stderr and "--replace" in refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    echo(bank)  # nothing changed
    listed = gateway_cli(gw.home, "peer", "list").stdout
    assert next(x for x in listed.splitlines() if x.startswith(BANK)).split()[1] == "BANK"

    out = gateway_cli(gw.home, "peer", "add", "--id", BANK, "--role", "BROKER", "--cert",
                      str(pem), "--replace")
    assert out.returncode == 0, out.stderr
    assert "role BANK" in out.stdout and "role BROKER" in out.stdout
    assert bank.signer in out.stdout
    assert error_codes(closing_frames(bank, WITHIN + 0.5)) == ["E203"]


# --- defect 6: peer add refuses what it silently accepted ---------------------------------
def test_peer_add_refuses_the_gateways_own_certificate_and_party_id(home, tmp_path) -> None:  # type: ignore[no-untyped-def]
    own_cert = home.root / "keys" / "gateway.crt"
    out = gateway_cli(home, "peer", "add", "--id", "ICBC", "--role", "BANK", "--cert",
                      str(own_cert))
    assert out.returncode == 1 and "own key" in out.stderr, out.stderr
    assert "register the peer's certificate" in out.stderr
    _, pem = new_key(tmp_path, "x")
    out = gateway_cli(home, "peer", "add", "--id", "GW01", "--role", "BANK", "--cert", pem)
    assert out.returncode == 1 and "own PartyId" in out.stderr
    assert "ICBC" not in gateway_cli(home, "peer", "list").stdout


def test_peer_add_of_another_key_without_replace_is_refused_and_changes_nothing(
        home, tmp_path) -> None:  # type: ignore[no-untyped-def]
    before = signer_of(home.keys[BANK].public_key())
    _, pem = new_key(tmp_path, "other")
    out = gateway_cli(home, "peer", "add", "--id", BANK, "--role", "BANK", "--cert", pem)
    assert out.returncode == 1
    assert "--replace" in out.stderr and "--next" in out.stderr and before in out.stderr
    listed = gateway_cli(home, "peer", "list").stdout
    assert before in next(x for x in listed.splitlines() if x.startswith(BANK))


def test_a_registered_peer_keeps_its_connect_address_unless_told(home, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def connect_of_bank() -> str:
        listed = gateway_cli(home, "peer", "list").stdout
        return next(x for x in listed.splitlines() if x.startswith(BANK)).split()[4]

    _, pem = new_key(tmp_path, "ccb-new")
    args = ("peer", "add", "--id", BANK, "--role", "BANK", "--cert", pem, "--replace")
    assert gateway_cli(home, *args, "--connect", "127.0.0.1:7801").returncode == 0
    assert connect_of_bank() == "127.0.0.1:7801"
    out = gateway_cli(home, *args)  # the same key and role again, no --connect
    assert out.returncode == 0 and "unchanged" in out.stdout
    assert connect_of_bank() == "127.0.0.1:7801"
    out = gateway_cli(home, *args, "--no-connect")
    assert out.returncode == 0 and "127.0.0.1:7801 -> -" in out.stdout
    assert connect_of_bank() == "-"


def test_peer_add_without_role_is_a_usage_error_but_with_next(home, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, pem = new_key(tmp_path, "ccb-next")
    out = gateway_cli(home, "peer", "add", "--id", BANK, "--cert", pem)
    assert out.returncode == 64 and "--role is required" in out.stderr
    assert gateway_cli(home, "peer", "add", "--id", BANK, "--cert", pem, "--next").returncode == 0
    wrong = gateway_cli(home, "peer", "add", "--id", BANK, "--role", "BROKER", "--cert", pem,
                        "--next")
    assert wrong.returncode == 1 and "--replace" in wrong.stderr


# --- disable / enable / remove --------------------------------------------------------------
def test_disable_closes_live_sessions_within_1s_and_refuses_logons_until_enabled(
        start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway()
    first, second = gw.peer(BANK).open_session(), gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    out = gateway_cli(gw.home, "peer", "disable", "--id", BANK)
    assert out.returncode == 0, out.stderr
    assert "peer enable --id CCB" in out.stdout
    began = time.monotonic()
    for session in (first, second):
        assert error_codes(closing_frames(session, 3.0)) == ["E203"]
    assert time.monotonic() - began < WITHIN
    rsp = refused_logon(gw, BANK, gw.home.keys[BANK])
    assert rsp.body["Result"] == "E203" and "disabled" in rsp.body["ResultText"]
    echo(broker)  # the other party's session is untouched
    assert "DISABLED" in gateway_cli(gw.home, "peer", "list").stdout

    assert gateway_cli(gw.home, "peer", "enable", "--id", BANK).returncode == 0
    bank = gw.peer(BANK).open_session()
    signed(bank, broker)


def test_remove_closes_sessions_forgets_the_party_and_keeps_its_journal(
        start_gateway) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    gw = start_gateway()
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker)
    out = gateway_cli(gw.home, "peer", "remove", "--id", BANK)
    assert out.returncode == 0, out.stderr
    began = time.monotonic()
    assert error_codes(closing_frames(bank, 3.0)) == ["E203"]
    assert time.monotonic() - began < WITHIN
    rsp = refused_logon(gw, BANK, gw.home.keys[BANK])
    assert rsp.body["Result"] == "E203" and "not registered" in rsp.body["ResultText"]
    assert BANK not in gateway_cli(gw.home, "peer", "list").stdout.split()
    again = gateway_cli(gw.home, "peer", "remove", "--id", BANK)
    assert again.returncode == 1 and "peer list" in again.stderr
    db = sqlite3.connect(gw.home.root / "data" / "journal.sqlite3")
    try:
        kept = db.execute("SELECT count(*) FROM message WHERE party = ?", (BANK,)).fetchone()[0]
    finally:
        db.close()
    assert kept > 0


# --- a key change without a flag day --------------------------------------------------------
def test_a_next_key_logs_on_and_works_beside_the_current_until_promote(
        start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(relay_timeout_seconds=1.5)
    bank = gw.peer(BANK).open_session()
    current = gw.peer(BROKER).open_session()
    signed(bank, current)
    nxt, pem = new_key(tmp_path, "gtja-next")
    out = gateway_cli(gw.home, "peer", "add", "--id", BROKER, "--cert", pem, "--next")
    assert out.returncode == 0, out.stderr
    assert signer_of(nxt.public_key()) in out.stdout and current.signer in out.stdout
    listed = gateway_cli(gw.home, "peer", "list").stdout
    assert signer_of(nxt.public_key()) in next(x for x in listed.splitlines()
                                               if x.startswith(BROKER))

    upcoming = TestPeer(BROKER, "BROKER", nxt, gw.port,
                        gateway_public_key=gw.home.gateway_public_key).open_session()
    for n, broker in enumerate((upcoming, current, upcoming)):
        rsp = call(broker, "XFER.IN.REQ", xfer(f"{BROKER}NX{n}"), bank=bank)
        assert rsp.body["Result"] == "0000", rsp.body

    out = gateway_cli(gw.home, "peer", "promote", "--id", BROKER)
    assert out.returncode == 0, out.stderr
    began = time.monotonic()
    assert error_codes(closing_frames(current, 3.0)) == ["E203"]
    assert time.monotonic() - began < WITHIN
    rsp = call(upcoming, "XFER.IN.REQ", xfer(f"{BROKER}NX9"), bank=bank)
    assert rsp.body["Result"] == "0000", rsp.body
    assert refused_logon(gw, BROKER, current.key).body["Result"] == "E203"
    again = gateway_cli(gw.home, "peer", "promote", "--id", BROKER)
    assert again.returncode == 1 and "--next" in again.stderr


# --- the gateway's own key --------------------------------------------------------------
def test_key_rotate_then_promote_signs_with_the_new_key_within_1s_and_keeps_sessions(
        start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(echo_burst=1000)  # the test polls with echoes, beyond the default limit
    bank = gw.peer(BANK).open_session()
    storage_key = (gw.home.root / "keys" / "storage.key").read_bytes()
    old_pk = gw.home.gateway_public_key

    assert gateway_cli(gw.home, "cert", "--next").returncode == 1  # none yet
    rotated = gateway_cli(gw.home, "key", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    next_pem = gateway_cli(gw.home, "cert", "--next").stdout
    next_pk = x509.load_pem_x509_certificate(next_pem.encode()).public_key()
    assert signer_of(next_pk) in rotated.stdout and signer_of(next_pk) != signer_of(old_pk)
    bank.verify_from_gateway(echo(bank))  # still the current key

    promoted = gateway_cli(gw.home, "key", "promote")
    assert promoted.returncode == 0, promoted.stderr
    began = time.monotonic()
    while echo(bank).sig.split(":")[1] != signer_of(next_pk):
        assert time.monotonic() - began < WITHIN, "still signing with the old key"
        time.sleep(0.05)
    bank.gateway_public_key = next_pk  # a peer that registered the next certificate
    bank.verify_from_gateway(echo(bank))  # the same session, kept
    fresh = TestPeer(BANK, "BANK", gw.home.keys[BANK], gw.port,
                     gateway_public_key=next_pk).connect()
    logon = fresh.logon()
    assert logon.body["Result"] == "0000"
    fresh.verify_from_gateway(logon)
    fresh.close()
    assert gateway_cli(gw.home, "cert").stdout == next_pem
    assert (gw.home.root / "keys" / "storage.key").read_bytes() == storage_key
    assert (gw.home.root / "keys" / "retired" / f"gateway-{signer_of(old_pk)}.crt").exists()
    assert (gw.home.root / "keys" / "gateway.key").stat().st_mode & 0o077 == 0
    gw.wait_for_log(f"signs as {signer_of(next_pk)}")


# --- key letters ------------------------------------------------------------------------
def test_key_letters_show_party_role_type_full_fingerprint_and_date(home, tmp_path) -> None:  # type: ignore[no-untyped-def]
    today = dt.datetime.now(CN).date().isoformat()
    own = gateway_cli(home, "cert", "--letter")
    assert own.returncode == 0, own.stderr
    for text in ("GW01", "GATEWAY", "EC-P256", full_fingerprint(home.gateway_public_key), today):
        assert text in own.stdout, (text, own.stdout)
    letter = gateway_cli(home, "peer", "list", "--letter", BANK)
    assert letter.returncode == 0, letter.stderr
    for text in (BANK, "BANK", "EC-P256", full_fingerprint(home.keys[BANK].public_key()), today):
        assert text in letter.stdout, (text, letter.stdout)
    nxt, pem = new_key(tmp_path, "ccb-next")
    assert gateway_cli(home, "peer", "add", "--id", BANK, "--cert", pem, "--next").returncode == 0
    both = gateway_cli(home, "peer", "list", "--letter", BANK).stdout
    assert full_fingerprint(nxt.public_key()) in both and "next" in both
    unknown = gateway_cli(home, "peer", "list", "--letter", "ICBC")
    assert unknown.returncode == 1 and "peer list" in unknown.stderr


@pytest.mark.parametrize(("command", "options"), [
    (("peer", "add"), ("--replace", "--next", "default")),
    (("peer", "list"), ("--letter",)),
    (("peer", "promote"), ("--id",)),
    (("peer", "disable"), ("--id", "E203")),
    (("peer", "enable"), ("--id",)),
    (("peer", "remove"), ("--id", "journal")),
    (("key", "rotate"), ("--type", "default: ES256", "--replace", "storage key")),
    (("key", "promote"), ("within 1 s",)),
    (("cert",), ("--next", "--letter")),
])
def test_every_key_and_peer_command_has_help(home, command: tuple[str, ...],
                                             options: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    out = gateway_cli(home, *command, "--help")
    assert out.returncode == 0 and "usage: gateway" in out.stdout
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for option in options:
        assert option in text, (option, out.stdout)


# --- dial-outs follow the registry --------------------------------------------------------
def test_a_connect_address_added_while_serving_is_dialled_and_disable_stops_it(
        start_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(5)
    pem = tmp_path / "ccb.pem"
    pem.write_bytes(gw.home.keys[BANK].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    out = gateway_cli(gw.home, "peer", "add", "--id", BANK, "--role", "BANK", "--cert",
                      str(pem), "--connect", f"127.0.0.1:{listener.getsockname()[1]}")
    assert out.returncode == 0 and "connect" in out.stdout, out

    def dialled() -> TestPeer:
        conn, _ = listener.accept()
        peer = TestPeer(BANK, "BANK", gw.home.keys[BANK], 0)
        peer.sock = conn
        assert peer.recv_frame(5).type == "SYS.LOGON.REQ"
        return peer

    first = dialled()
    _, new_pem = new_key(tmp_path, "ccb-new")  # re-keyed: hung up, dialled again
    assert gateway_cli(gw.home, "peer", "add", "--id", BANK, "--role", "BANK", "--cert",
                       new_pem, "--replace").returncode == 0
    assert error_codes(closing_frames(first, 3.0)) == ["E203"]
    second = dialled()
    assert gateway_cli(gw.home, "peer", "disable", "--id", BANK).returncode == 0
    assert closing_frames(second, 3.0) is not None
    listener.settimeout(2.5)
    with pytest.raises(TimeoutError):
        listener.accept()  # a disabled peer is not dialled
    listener.close()


# --- SIGHUP ---------------------------------------------------------------------------------
def test_sighup_reloads_the_alerts_table_and_keeps_the_process_and_its_sessions(
        start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(heartbeat_seconds=30)
    toml = gw.home.root / "gateway.toml"
    toml.write_text(toml.read_text() + '\n[alerts]\ncommand = "logger -t sbdx"\n')
    bank = gw.peer(BANK).open_session()
    gw.proc.send_signal(signal.SIGHUP)
    gw.wait_for_log(r"SIGHUP: \[alerts\] reloaded .*: command; 1 session\(s\) kept")
    assert gw.proc.poll() is None
    echo(bank)
    toml.write_text("[alerts\n")  # a broken file keeps what is in use
    gw.proc.send_signal(signal.SIGHUP)
    gw.wait_for_log(r"SIGHUP: .* unreadable")
    assert gw.proc.poll() is None
    echo(bank)
    bank.close()
    assert gw.stop() == 0


# --- the registry is never read half-written ------------------------------------------------
def test_a_reader_never_sees_a_registry_between_two_states(home, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gateway.keystore import KeyStore
    from gateway.signature import signer_id

    writer = KeyStore(home.root / "keys")
    pems = [new_key(tmp_path, f"k{i}")[1] for i in range(2)]
    signers = {signer_of(home.keys[BANK].public_key())}
    stop, failures = threading.Event(), []

    def read() -> None:
        reader = KeyStore(home.root / "keys")
        while not stop.is_set():
            try:
                peer = reader.peer(BANK)
                assert peer is not None and peer.signer == signer_id(peer.public_key)
                assert peer.signer in signers
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                failures.append(exc)
                return

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for i in range(30):
            pem = Path(pems[i % 2]).read_bytes()
            signers.add(signer_of(serialization.load_pem_public_key(pem)))
            writer.add_peer(BANK, "BANK", pem, replace=True)
    finally:
        stop.set()
        thread.join(10)
    assert failures == []


def test_why_untrusted_names_each_reason_a_logon_key_stops(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from gateway.registry import Peer, PeerKey, why_untrusted

    def key(name: str) -> PeerKey:
        return PeerKey.from_pem(Path(new_key(tmp_path, name)[1]).read_bytes(), "2026-12-02")

    a, b = key("a"), key("b")
    logged_on = Peer.with_key(BANK, "BANK", a)
    assert why_untrusted(logged_on, logged_on) is None
    assert why_untrusted(Peer.with_key(BANK, "BANK", a), logged_on) is None
    assert "removed" in str(why_untrusted(None, logged_on))
    assert "disabled" in str(why_untrusted(replace(logged_on, enabled=False), logged_on))
    assert "BROKER" in str(why_untrusted(replace(logged_on, role="BROKER"), logged_on))
    assert "no longer registered" in str(why_untrusted(Peer.with_key(BANK, "BANK", b), logged_on))
    with_next = Peer.with_key(BANK, "BANK", a, next_key=b)
    by_next = with_next.signing_with(f"ES256:{b.signer}:AAAA")
    assert by_next.signer == b.signer and with_next.signing_with(f"ES256:{a.signer}:AAAA") is with_next
    assert why_untrusted(with_next, by_next) is None
    promoted = Peer.with_key(BANK, "BANK", b)
    assert why_untrusted(promoted, by_next) is None
    assert why_untrusted(promoted, logged_on) is not None  # the un-promoted key



# --- the key store's files -------------------------------------------------------------
def test_an_interrupted_key_promote_is_finished_by_running_it_again(home) -> None:  # type: ignore[no-untyped-def]
    import os

    from gateway import rotation
    from gateway.keystore import KeyStore

    store = KeyStore(home.root / "keys")
    old = store.signer().signer
    nxt = rotation.rotate(store)
    keys = store.keys_dir
    os.replace(keys / "gateway.next.crt", keys / "gateway.crt")  # killed between the renames
    assert store.reload_signer() is None  # a running gateway keeps signing with the old key
    assert rotation.promote(store) == (old, nxt.signer)
    assert store.reload_signer() is not None and store.signer().signer == nxt.signer
    assert not (keys / "gateway.next.key").exists()


def test_a_registry_of_the_first_format_is_read_and_written_whole_afterwards(
        tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from gateway.keystore import KeyStore

    store = KeyStore.create(tmp_path / "keys")
    key, pem = new_key(tmp_path, "ccb")
    (store.keys_dir / "peers" / "CCB.pem").write_bytes(Path(pem).read_bytes())
    (store.keys_dir / "peers.json").write_text(json.dumps({"CCB": {
        "role": "BANK", "connect": None, "key_type": "EC-P256",
        "signer": signer_of(key.public_key())}}))
    peer = KeyStore(store.keys_dir).peer("CCB")
    assert peer is not None and peer.signer == signer_of(key.public_key()) and peer.enabled
    store.add_peer("GTJA", "BROKER", Path(new_key(tmp_path, "gtja")[1]).read_bytes())
    doc = json.loads((store.keys_dir / "peers.json").read_text())
    assert doc["version"] == 2 and sorted(doc["peers"]) == ["CCB", "GTJA"]
    assert "BEGIN PUBLIC KEY" in doc["peers"]["CCB"]["key"]["pem"]


def test_a_hand_broken_registry_keeps_the_peers_last_read_and_a_new_reader_refuses(
        home, caplog) -> None:  # type: ignore[no-untyped-def]
    from gateway.keystore import KeyStore

    running = KeyStore(home.root / "keys")
    assert running.peer(BANK) is not None
    (home.root / "keys" / "peers.json").write_text('{"version": 2, "peers": {"CCB": ')
    assert running.peer(BANK) is not None and running.peer(BANK) is not None
    assert sum("unreadable" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ValueError, match="unreadable"):
        KeyStore(home.root / "keys").peers()


def test_key_files_for_people_follow_the_registry_and_old_keys_are_retired(
        home, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gateway.keystore import KeyStore

    store = KeyStore(home.root / "keys")
    peers = store.keys_dir / "peers"
    old = signer_of(home.keys[BANK].public_key())
    new, pem = new_key(tmp_path, "ccb-new")
    store.add_peer(BANK, "BANK", Path(pem).read_bytes(), replace=True)
    assert (peers / "CCB.pem").read_bytes() == Path(pem).read_bytes()
    assert (peers / "retired" / f"CCB-{old}.pem").exists()
    nxt, next_pem = new_key(tmp_path, "ccb-next")
    store.add_next_key(BANK, Path(next_pem).read_bytes())
    assert (peers / "CCB.next.pem").read_bytes() == Path(next_pem).read_bytes()
    store.promote_peer(BANK)
    assert (peers / "CCB.pem").read_bytes() == Path(next_pem).read_bytes()
    assert not (peers / "CCB.next.pem").exists()
    assert (peers / "retired" / f"CCB-{signer_of(new.public_key())}.pem").exists()
    store.remove_peer(BANK)
    assert not (peers / "CCB.pem").exists()
    assert (peers / "retired" / f"CCB-{signer_of(nxt.public_key())}.pem").exists()
