"""Shared fixtures: a real gateway process on loopback with real keys."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from peer import TestPeer

#: PostgreSQL fixtures (pg_server, pg_url, pg_store_url): tests/pg.py
pytest_plugins = ["pg"]

BANK, BROKER = "CCB", "GTJA"


@dataclass
class GatewayHome:
    root: Path
    keys: dict[str, ec.EllipticCurvePrivateKey]
    gateway_public_key: Any

    def write_config(self, **settings: Any) -> None:
        lines = ["[gateway]"]
        for k, v in settings.items():
            lines.append(f"{k} = {v!r}".replace("'", '"') if isinstance(v, str)
                         else f"{k} = {str(v).lower() if isinstance(v, bool) else v}")
        (self.root / "gateway.toml").write_text("\n".join(lines) + "\n")

    def add_party(self, party: str, role: str) -> None:
        """Register one more bank or broker (its own ES256 key) with the gateway."""
        from gateway.keystore import KeyStore

        self.keys[party] = _register(KeyStore(self.root / "keys"), party, role)


def _register(store: Any, party: str, role: str) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    store.add_peer(party, role, key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def make_home(root: Path, parties: dict[str, str] | None = None,
              gateway_party: str = "GW01") -> GatewayHome:
    from gateway.keystore import KeyStore

    store = KeyStore.create(root / "keys", party=gateway_party)
    keys = {party: _register(store, party, role)
            for party, role in (parties or {BANK: "BANK", BROKER: "BROKER"}).items()}
    return GatewayHome(root, keys, store.signer().public_key)


@pytest.fixture
def home(tmp_path: Path) -> GatewayHome:
    return make_home(tmp_path / "gw")


class RunningGateway:
    """``gateway serve`` in a subprocess; its log is collected for assertions."""

    def __init__(self, home: GatewayHome, *args: str, listen: str = "127.0.0.1:0",
                 ops_listen: str | None = "127.0.0.1:0") -> None:
        """``ops_listen``: the ops endpoint (§10) on a free port unless told (None: as
        gateway.toml's ``[ops]`` says); its port is :attr:`ops_port`."""
        self.home = home
        self.log: list[str] = []
        self._port_seen = threading.Event()
        self.port = self.ops_port = 0
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        ops = [] if ops_listen is None else ["--ops-listen", ops_listen]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--home", str(home.root), "serve",
             "--listen", listen, *ops, *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        threading.Thread(target=self._drain, daemon=True).start()
        if not self._port_seen.wait(30):
            self.kill()
            raise RuntimeError("gateway did not start:\n" + self.log_text())

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            ops = re.search(r"ops HTTP on [\d.]+:(\d+)", line)
            if ops:
                self.ops_port = int(ops.group(1))
            m = re.search(r"serving on [\d.]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self._port_seen.set()

    def log_text(self) -> str:
        return "".join(self.log)

    def peer(self, party: str, role: str | None = None, **kw: Any) -> TestPeer:
        role = role or ("BANK" if party == BANK else "BROKER")
        return TestPeer(party, role, self.home.keys[party], self.port,
                        gateway_public_key=self.home.gateway_public_key, **kw)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def wait_for_log(self, pattern: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log:
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"log never matched {pattern!r}:\n{self.log_text()}")


@pytest.fixture
def start_gateway(home: GatewayHome) -> Iterator[Any]:
    running: list[RunningGateway] = []

    def start(*args: str, listen: str = "127.0.0.1:0", ops_listen: str | None = "127.0.0.1:0",
              **settings: Any) -> RunningGateway:
        if settings:
            home.write_config(**settings)
        gw = RunningGateway(home, *args, listen=listen, ops_listen=ops_listen)
        running.append(gw)
        return gw

    yield start
    for gw in running:
        gw.kill()
        assert "Traceback" not in gw.log_text(), gw.log_text()


@pytest.fixture
def day(start_gateway):  # type: ignore[no-untyped-def]
    """A gateway with quick timeouts and reversal retries, a bank and a broker logged on."""
    gw = start_gateway(relay_timeout_seconds=1.5, reversal_retry_initial_seconds=0.5,
                       reversal_retry_max_seconds=1.0)
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    yield gw, bank, broker
    bank.close()
    broker.close()
