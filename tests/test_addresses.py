"""PROTOCOL §12: peers and ``--connect`` take a comma-separated list of addresses, tried
in turn (gateway/addresses.py), over loopback with real processes."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.addresses import AddressRing
from gateway.config import ConfigError, check_address_list
from gateway.keystore import KeyStore
from gateway.sim.runtime import ensure_key

from conftest import BANK
from peer import TestPeer


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then released): a connect is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_list_is_read_in_order_and_a_bad_element_is_named() -> None:
    assert check_address_list("a:1, [::1]:2,b:3") == (("a", 1), ("::1", 2), ("b", 3))
    with pytest.raises(ConfigError, match=r"address 2 of 3 .*'nope' is not HOST:PORT"):
        check_address_list("a:1,nope,b:3")
    with pytest.raises(ConfigError, match=r"address 2 of 2 .*'' is not HOST:PORT"):
        check_address_list("a:1,")


def test_each_attempt_after_the_first_dials_the_next_address() -> None:
    ring = AddressRing.parse("a:1,b:2")
    assert [ring.next_attempt() for _ in range(5)] == [("a", 1), ("b", 2), ("a", 1),
                                                      ("b", 2), ("a", 1)]
    one = AddressRing.parse("a:1")
    assert [one.next_attempt() for _ in range(3)] == [("a", 1)] * 3


def test_peer_add_takes_a_list_and_a_bad_element_is_a_usage_error_naming_it(home) -> None:  # type: ignore[no-untyped-def]
    pem = home.root / "ccb.pem"
    pem.write_bytes(KeyStore(home.root / "keys").peer(BANK).pem)  # type: ignore[union-attr]

    def peer_add(connect: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway", "--home", str(home.root),
                               "peer", "add", "--id", BANK, "--role", "BANK", "--cert",
                               str(pem), "--connect", connect],
                              capture_output=True, text=True, timeout=60)

    bad = peer_add("127.0.0.1:7701,bank-b")
    assert bad.returncode == 64 and "address 2 of 2" in bad.stderr and "'bank-b'" in bad.stderr
    good = peer_add("127.0.0.1:7701, 127.0.0.2:7701")
    assert good.returncode == 0, good.stderr
    peer = KeyStore(home.root / "keys").peer(BANK)
    assert peer is not None and peer.connect == "127.0.0.1:7701,127.0.0.2:7701"


def test_a_peer_with_two_addresses_is_dialled_at_the_second_when_the_first_refuses(
        home, start_gateway) -> None:  # type: ignore[no-untyped-def]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(15)
    store = KeyStore(home.root / "keys")
    pem = store.peer(BANK).pem  # type: ignore[union-attr]
    store.add_peer(BANK, "BANK", pem, connect=f"127.0.0.1:{refused_port()},"
                   f"127.0.0.1:{listener.getsockname()[1]}")
    gw = start_gateway()
    conn, _ = listener.accept()
    peer = TestPeer(BANK, "BANK", home.keys[BANK], 0)
    peer.sock = conn
    assert peer.recv_frame(5).type == "SYS.LOGON.REQ"
    gw.wait_for_log(r"dialling CCB at 127\.0\.0\.1:\d+ failed")
    listener.close()
    peer.close()


def test_a_sim_given_a_dead_address_then_the_gateway_logs_on_at_the_second(
        home, start_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bank_home = tmp_path / "ccb"
    KeyStore(home.root / "keys").add_peer(BANK, "BANK", ensure_key(bank_home, BANK).read_bytes(),
                                          replace=True)
    gw = start_gateway()
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--home", str(bank_home), "sim", "bank", "--connect",
         f"127.0.0.1:{refused_port()},127.0.0.1:{gw.port}", "--gateway-cert",
         str(home.root / "keys" / "gateway.crt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        gw.wait_for_log(r"CCB logged on as BANK", timeout=30)
    finally:
        sim.terminate()
        _, err = sim.communicate(timeout=30)
    assert "Traceback" not in err, err
    assert "dialling the gateway at 127.0.0.1:" in err and "failed" in err, err
