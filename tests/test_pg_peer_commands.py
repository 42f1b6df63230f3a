"""PROTOCOL §12: "With PostgreSQL the peer registry (§9 peer commands) lives in the
shared store too."  Two homes on one real throwaway PostgreSQL (tests/pg.py): a `peer`
command on one is what the other's `peer list` shows and what its running gateway
applies; the first reader imports its keys/peers.json; a lost race is refused."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_peer_lifecycle import WITHIN, closing_frames, error_codes, new_key

from gateway.keystore import KeyStore, RegistryRefusal
from gateway.registry import set_enabled

from conftest import BANK, BROKER, GatewayHome, RunningGateway, make_home

psycopg = pytest.importorskip("psycopg")


def two_homes(root: Path, url: str) -> tuple[GatewayHome, GatewayHome]:
    """Homes A and B with the same keys and peers.json, then both on ``url``."""
    a = make_home(root / "a")
    shutil.copytree(a.root, root / "b")
    b = GatewayHome(root / "b", a.keys, a.gateway_public_key)
    for home in (a, b):
        (home.root / "gateway.toml").write_text(
            f'[gateway]\n\n[journal]\nurl = "{url}"\nfailover_seconds = 4.0\n')
    return a, b


def cli(home: GatewayHome, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--home", str(home.root), *args],
                          capture_output=True, text=True, timeout=60)


def listed(home: GatewayHome) -> dict[str, list[str]]:
    out = cli(home, "peer", "list")
    assert out.returncode == 0, out.stderr
    return {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}


def stored_revision(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT revision FROM peer_registry").fetchone()
    return int(row[0]) if row else 0


def test_a_peer_command_on_one_home_is_what_the_other_home_lists(
        tmp_path: Path, pg_store_url: str) -> None:
    a, b = two_homes(tmp_path, pg_store_url)
    b_file = (b.root / "keys" / "peers.json").read_bytes()
    assert stored_revision(pg_store_url) == 0
    assert set(listed(b)) == {BANK, BROKER}  # B's keys/peers.json imported: revision 1
    assert stored_revision(pg_store_url) == 1

    _, pem = new_key(tmp_path, "boc")
    out = cli(a, "peer", "add", "--id", "BOC", "--role", "BANK", "--cert", pem,
              "--connect", "127.0.0.1:7999")
    assert out.returncode == 0, out.stderr
    seen = listed(b)
    assert set(seen) == {BANK, BROKER, "BOC"}
    assert seen["BOC"][1] == "BANK" and "127.0.0.1:7999" in seen["BOC"]

    out = cli(b, "peer", "disable", "--id", "BOC")
    assert out.returncode == 0, out.stderr
    assert "DISABLED" in listed(a)["BOC"]
    out = cli(a, "peer", "remove", "--id", BROKER)
    assert out.returncode == 0, out.stderr
    assert set(listed(b)) == {BANK, "BOC"}
    assert stored_revision(pg_store_url) == 4
    # the homes' files are not the registry any more: B's was never written
    assert (b.root / "keys" / "peers.json").read_bytes() == b_file
    assert BROKER in json.loads(b_file)["peers"]


def test_a_change_made_from_a_revision_another_command_replaced_is_refused(
        tmp_path: Path, pg_store_url: str) -> None:
    a, b = two_homes(tmp_path, pg_store_url)
    store_a, store_b = KeyStore(a.root / "keys"), KeyStore(b.root / "keys")

    def meanwhile(table):  # type: ignore[no-untyped-def]
        store_a.set_peer_enabled(BANK, False)  # A's command lands after B read the registry
        return set_enabled(table, BROKER, False)

    with pytest.raises(RegistryRefusal, match="run the command again"):
        store_b._change(meanwhile)
    assert not store_b.peer(BANK).enabled  # type: ignore[union-attr]
    assert store_b.peer(BROKER).enabled  # type: ignore[union-attr]  # B's change: not written
    assert store_b.set_peer_enabled(BROKER, False).enabled is False  # run again: done


def test_a_key_replaced_on_one_home_closes_the_session_on_the_others_gateway(
        tmp_path: Path, pg_store_url: str) -> None:
    a, b = two_homes(tmp_path, pg_store_url)
    gw = RunningGateway(b)
    try:
        gw.wait_for_log(r"active: lease epoch 1 taken", timeout=20)
        idle = gw.peer(BANK).open_session()
        _, pem = new_key(tmp_path, "ccb-new")
        out = cli(a, "peer", "add", "--id", BANK, "--role", "BANK", "--cert", pem,
                  "--replace")
        assert out.returncode == 0, out.stderr
        began = time.monotonic()
        frames = closing_frames(idle, 3.0)
        assert time.monotonic() - began < WITHIN
        assert error_codes(frames) == ["E203"], [f.body for f in frames]
        gw.wait_for_log(r"closing: key [0-9a-f]{16} is no longer registered for CCB")
        assert gw.stop() == 0
    finally:
        gw.kill()
    assert "Traceback" not in gw.log_text(), gw.log_text()


def test_a_peer_command_with_the_database_away_is_refused_in_one_line(
        tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    try:
        a, _ = two_homes(tmp_path, f"postgresql://sbdx@127.0.0.1:{closed.getsockname()[1]}/x")
        for args in (("peer", "list"), ("peer", "disable", "--id", BANK)):
            out = cli(a, *args)
            assert out.returncode == 1, (out.stdout, out.stderr)
            assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
            assert "unreachable" in out.stderr and "run the command again" in out.stderr
    finally:
        closed.close()
