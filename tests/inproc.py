"""The gateway's sans-IO core in one process, with no sockets: for sequence tests.

A real :class:`gateway.relay.Gateway` with its real journal file (SQLite, WAL), real key
store and sessions whose links only collect the bytes written; the bank and the broker
are :class:`peer.TestPeer` builders (their own ES256 keys, session keys from a real X25519
exchange with the gateway).  Time is a :class:`Clock` the test moves; a restart is a new
Gateway on the same journal file, with new sessions (what was in memory is gone).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lxml import etree

from gateway.config import Config
from gateway.framing import FrameDecoder
from gateway.journal import Journal
from gateway.keystore import KeyStore
from gateway.relay import Gateway
from gateway.session import Session

from conftest import GatewayHome
from peer import Frame, TestPeer


class Clock:
    """The gateway's clock: real time at the start (the peers stamp Time and TradeDate
    from the wall clock, which the skew check compares), then moved by the test."""

    def __init__(self, start: float) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Link:
    """Collects what the gateway writes to one session."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.decoder = FrameDecoder()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closed = True

    def peer_public_key(self) -> Any:
        return None

    def take(self) -> list[Frame]:
        data, self.out = bytes(self.out), bytearray()
        frames = []
        for payload in self.decoder.feed(data):
            line, xml = payload.split(b"\n", 1)
            _, key_id, mac, sig = line.decode().split(" ")
            frames.append(Frame(key_id, mac, sig, xml, etree.fromstring(xml)))
        return frames


class Side:
    """One peer on its own session of the gateway."""

    def __init__(self, rig: Rig, peer: TestPeer, sid: str) -> None:
        self.rig = rig
        self.peer = peer
        self.link = Link()
        self.session = Session(rig.gateway, self.link, sid)
        rig.gateway.add_session(self.session)
        peer.send_raw = self.feed  # type: ignore[method-assign]

    def feed(self, data: bytes) -> None:
        self.session.receive_bytes(data)
        self.rig.gateway.flush()

    def open(self) -> None:
        _, xml = self.peer.build("SYS.LOGON.REQ", [
            ("PartyId", self.peer.party), ("Role", self.peer.role), ("Nonce", "ab" * 16),
            ("HeartbeatSec", 3600)])
        self.feed(self.peer.frame(xml, mac=False))
        self.rig.tick()  # keyx_after_logon_seconds = 0: the gateway starts KEYX
        for frame in self.link.take():
            if frame.type == "SYS.KEYX.REQ":
                self.peer.answer_keyx(frame)
        assert self.session.ready, f"{self.peer.party} session not keyed"

    def send(self, msg_type: str, fields: list[tuple[str, Any]], **kw: Any) -> str:
        return self.peer.send(msg_type, fields, **kw)

    def take(self) -> list[Frame]:
        return self.link.take()


class Rig:
    """A gateway, a bank side and a broker side, in one process."""

    def __init__(self, home: GatewayHome, config: Config, clock: Clock,
                 bank: TestPeer, broker: TestPeer) -> None:
        self.home, self.config, self.clock = home, config, clock
        self.peers = (bank, broker)
        self.generation = 0
        self.journal: Journal | None = None
        self.start()

    @property
    def journal_path(self) -> Path:
        return self.home.root / "data" / "journal.sqlite3"

    def start(self) -> None:
        self.generation += 1
        self.journal = Journal(self.journal_path, synchronous="OFF")
        self.gateway = Gateway(self.config, KeyStore(self.home.root / "keys"), self.journal,
                               self.clock)
        self.gateway.flush()
        g = self.generation
        self.bank = Side(self, self.peers[0], f"B{g}")
        self.broker = Side(self, self.peers[1], f"K{g}")
        self.bank.open()
        self.broker.open()

    def restart(self) -> None:
        """Stop (what was in memory is lost; what was committed stays) and start."""
        assert self.journal is not None
        self.journal.close()
        self.start()

    def tick(self) -> None:
        self.gateway.tick()
        self.gateway.flush()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None


def fast_config(**overrides: Any) -> Config:
    settings: dict[str, Any] = {"keyx_after_logon_seconds": 0.0, "relay_timeout_seconds": 2.0,
                                "reversal_retry_initial_seconds": 1.0,
                                "reversal_retry_max_seconds": 2.0}
    settings.update(overrides)
    return Config(**settings)
