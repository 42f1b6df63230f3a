"""PROTOCOL §12: two gateways with the same party and keys on one PostgreSQL lease, as
real processes over loopback, the lease on a real throwaway PostgreSQL (tests/pg.py).

Both gateways journal to that one PostgreSQL database (``[journal] url``); these tests
are of the roles — who accepts logons, who dials out, who takes over, who is fenced
(the paused old active's echo is not in the shared journal). tests/test_failover.py
holds the money under load across a failover.
"""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.keystore import KeyStore
from gateway.sim.runtime import ensure_key

from conftest import BANK, BROKER, GatewayHome, RunningGateway, make_home
from peer import TestPeer

pytest.importorskip("psycopg")

#: f: the lease lasts 0.75 f, the active steps down after f/2 without a confirmed
#: renewal, a standby polls every f/8 (gateway/store_pg/lease.py).
FAILOVER = 4.0
#: Third party, a bank the gateway dials (its address registered): who dials it.
DIALLED = "ICBC"
#: A bank whose key the tests hold (CCB's is the sim's).
BOC = "BOC"


def http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as rsp:
            return rsp.status, rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def role(gw: RunningGateway) -> tuple[str, int | None, str]:
    """(role, lease epoch, store) from the gateway's /api/status."""
    import json

    token = (gw.home.root / "keys" / "ops.token").read_text().strip()
    request = urllib.request.Request(f"http://127.0.0.1:{gw.ops_port}/api/status",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as rsp:
        g = json.loads(rsp.read())["gateway"]
    return g["role"], g["lease_epoch"], g["store"]


def metric(port: int, name: str) -> float:
    _, text = http(port, "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


class Pair:
    """Two gateway homes with the same keys and registry, on one lease."""

    def __init__(self, root: Path, url: str, listener: socket.socket) -> None:
        self.url = url
        self.a = make_home(root / "a", {BANK: "BANK", BROKER: "BROKER", DIALLED: "BANK",
                                            BOC: "BANK"})
        store = KeyStore(self.a.root / "keys")
        self.bank_home = root / "ccb"  # the sim bank's own key, registered
        store.add_peer(BANK, "BANK", ensure_key(self.bank_home, BANK).read_bytes(),
                       replace=True)
        store.add_peer(DIALLED, "BANK", store.peer(DIALLED).pem,  # type: ignore[union-attr]
                       connect=f"127.0.0.1:{listener.getsockname()[1]}")
        shutil.copytree(self.a.root, root / "b")
        self.b = GatewayHome(root / "b", self.a.keys, self.a.gateway_public_key)
        for home in (self.a, self.b):
            (home.root / "gateway.toml").write_text(
                f'[gateway]\nrelay_timeout_seconds = 1.5\n\n[journal]\nurl = "{url}"\n'
                f"failover_seconds = {FAILOVER}\n")
        self.running: list[RunningGateway] = []
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, home: GatewayHome) -> RunningGateway:
        gw = RunningGateway(home)
        self.running.append(gw)
        return gw

    def sim_bank(self, *ports: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--home", str(self.bank_home), "sim", "bank",
             "--connect", ",".join(f"127.0.0.1:{p}" for p in ports), "--gateway-cert",
             str(self.a.root / "keys" / "gateway.crt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        for gw in self.running:
            if gw.proc.poll() is None:
                gw.proc.send_signal(signal.SIGCONT)
            gw.kill()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    yield s
    s.close()


@pytest.fixture
def pair(tmp_path: Path, pg_store_url: str, listener: socket.socket) -> Iterator[Pair]:
    p = Pair(tmp_path, pg_store_url, listener)
    yield p
    p.close()
    for gw in p.running:
        assert "Traceback" not in gw.log_text(), gw.log_text()


def dialled(listener: socket.socket, timeout: float) -> TestPeer:
    """The next connection a gateway dials to ICBC: its first frame is SYS.LOGON.REQ."""
    listener.settimeout(timeout)
    conn, _ = listener.accept()
    from cryptography.hazmat.primitives.asymmetric import ec

    peer = TestPeer(DIALLED, "BANK", ec.generate_private_key(ec.SECP256R1()), 0)
    peer.sock = conn
    assert peer.recv_frame(10).type == "SYS.LOGON.REQ"
    return peer


def refused_as_standby(gw: RunningGateway, party: str = BROKER) -> None:
    """A LOGON to ``gw`` gets LOGON.RSP S903, then the connection is closed."""
    peer = gw.peer(party, "BANK" if party == BOC else None).connect()
    rsp = peer.logon()
    assert rsp.type == "SYS.LOGON.RSP" and rsp.body["Result"] == "S903", rsp.body
    peer.verify_from_gateway(rsp)  # signed by the pair's key, as every LOGON.RSP
    assert peer.closed_by_gateway(5)
    peer.close()


def test_a_standby_answers_s903_and_is_not_ready_then_takes_over_when_the_active_is_killed(
        pair: Pair, listener: socket.socket) -> None:
    a = pair.start(pair.a)
    a.wait_for_log(r"active: lease epoch 1 taken", timeout=20)
    first_dial = dialled(listener, 20)  # the active dials out
    b = pair.start(pair.b)
    b.wait_for_log(r"PostgreSQL lease at .* standby until the lease is ours")

    refused_as_standby(b)
    code, text = http(b.ops_port, "/readyz")
    assert code == 503 and "standby" in text, (code, text)
    assert http(a.ops_port, "/readyz")[0] == 200
    assert metric(b.ops_port, "sbdx_active") == 0 and metric(a.ops_port, "sbdx_active") == 1
    assert metric(a.ops_port, "sbdx_lease_epoch") == 1
    assert role(a) == ("active", 1, "postgresql") and role(b) == ("standby", None, "postgresql")
    with pytest.raises(TimeoutError):
        dialled(listener, 2.0)  # the standby dials nobody (the active dials once)

    sim = pair.sim_bank(b.port, a.port)  # both addresses, the standby's first: S903, next
    a.wait_for_log(r"CCB logged on as BANK", timeout=30)
    broker = a.peer(BROKER).open_session()

    a.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    b.wait_for_log(r"active: lease epoch 2 taken", timeout=FAILOVER + 5)
    took = time.monotonic() - killed
    # 0.75 f lease life + f/8 poll < f; 1 s for the test reading a loaded machine's log
    assert took < FAILOVER + 1.0, took
    broker.close()
    first_dial.close()

    b.wait_for_log(r"CCB logged on as BANK", timeout=30)  # the sim failed over
    b.peer(BROKER).open_session().close()  # and so does a peer without a list
    dialled(listener, 20).close()  # the new active dials out
    assert metric(b.ops_port, "sbdx_active") == 1
    assert metric(b.ops_port, "sbdx_lease_epoch") == 2
    assert role(b) == ("active", 2, "postgresql")
    assert http(b.ops_port, "/readyz")[0] == 200
    sim.terminate()
    _, err = sim.communicate(timeout=30)
    assert "Traceback" not in err, err
    assert f"the gateway at 127.0.0.1:{b.port} is a standby" in err, err


def test_a_paused_active_is_fenced_it_cuts_its_sessions_stands_by_and_relays_nothing(
        pair: Pair, listener: socket.socket) -> None:
    a = pair.start(pair.a)
    a.wait_for_log(r"active: lease epoch 1 taken", timeout=20)
    b = pair.start(pair.b)
    b.wait_for_log(r"standby until the lease is ours")
    dialled(listener, 20).close()
    bank = a.peer(BOC, "BANK").open_session()
    broker = a.peer(BROKER).open_session()

    a.proc.send_signal(signal.SIGSTOP)
    b.wait_for_log(r"active: lease epoch 2 taken", timeout=FAILOVER + 10)
    # while A is stopped its peer sends a request: it waits in A's socket buffer
    echo = broker.send("SYS.ECHO.REQ", [("Text", "while paused")])
    a.proc.send_signal(signal.SIGCONT)
    a.wait_for_log(r"standing by: 2 session\(s\) cut", timeout=20)

    for peer in (bank, broker):  # closed, and not one frame more from A
        with pytest.raises((ConnectionError, OSError)):
            frame = peer.recv_frame(10)
            raise AssertionError(f"{peer.party} got {frame.type} from the fenced gateway")
    log = a.log_text()
    assert "the lease is not confirmed ours" in log, log
    import psycopg

    with psycopg.connect(pair.url) as journal:  # the pair's one journal (§12)
        assert journal.execute("SELECT count(*) FROM message WHERE msg_id = %s",
                               (echo,)).fetchone() == (0,)  # never acted on, never journaled
    refused_as_standby(a, BOC)  # a standby now, the lease being B's
    assert metric(a.ops_port, "sbdx_active") == 0
    assert http(a.ops_port, "/readyz")[0] == 503
    b.peer(BROKER).open_session().close()  # the new active serves
