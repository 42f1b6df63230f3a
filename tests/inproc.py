"""The gateway's sans-IO core in one process, with no sockets: for sequence tests.

A real :class:`gateway.relay.Gateway` with its real journal file (SQLite, WAL), real key
store and sessions whose links only collect the bytes written; the bank and the broker
are :class:`peer.TestPeer` builders (their own ES256 keys, session keys from a real X25519
exchange with the gateway).  Time is a :class:`Clock` the test moves; a restart is a new
Gateway on the same journal file, with new sessions (what was in memory is gone).

With a PostgreSQL ``[journal] url`` (§12) each gateway of the rig takes the database's
lease as it starts (the one before it loses it: its commits are fenced from then on), and
:meth:`Rig.take_over` hands over to the standby of the pair (the active before the last
take-over, else a gateway started then) as GatewayService does: the active stands by, the
standby takes the lease and runs ``take_over()``.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lxml import etree

from gateway.config import Config
from gateway.framing import FrameDecoder
from gateway.journal import Journal
from gateway.keystore import KeyStore
from gateway.relay import Gateway
from gateway.session import Session

from conftest import BANK, BROKER, GatewayHome
from peer import Frame, TestPeer

#: Gateway seconds a peer waiting for a frame lets pass per tick (see Side.recv_frame).
WAIT_STEP = 0.1


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
        self.pending: list[Frame] = []
        #: While set, what the peer sends is read but its turn is not committed (a
        #: gateway stalled mid-turn: see Rig.take_over).
        self.stalled = False
        peer.send_raw = self.feed  # type: ignore[method-assign]
        peer.recv_frame = self.recv_frame  # type: ignore[method-assign]

    def feed(self, data: bytes) -> None:
        self.session.receive_bytes(data)
        if not self.stalled:
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
        frames, self.pending = [*self.pending, *self.link.take()], []
        return frames

    def recv_frame(self, timeout: float = 10) -> Frame:
        """The next frame the gateway wrote to this session.  While there is none,
        waiting is the gateway's time passing: its clock moves WAIT_STEP and it ticks
        (timeouts, retries), up to ``timeout`` gateway seconds, then TimeoutError, as a
        socket read would; ConnectionError once the gateway closed the session."""
        waited = 0.0
        while True:
            self.pending += self.link.take()
            if self.pending:
                return self.pending.pop(0)
            if self.link.closed:
                raise ConnectionError("gateway closed the connection")
            if waited >= timeout:
                raise TimeoutError("timed out")
            self.rig.clock.advance(WAIT_STEP)
            self.rig.tick()
            waited += WAIT_STEP


class Rig:
    """A gateway, a bank side and a broker side, in one process."""

    def __init__(self, home: GatewayHome, config: Config, clock: Clock,
                 bank: TestPeer, broker: TestPeer) -> None:
        self.home, self.config, self.clock = home, config, clock
        self.peers = (bank, broker)
        self.generation = 0
        self.journal: Journal | None = None
        #: §12 (PostgreSQL): the other gateway of the pair once there was a take-over
        #: (the active before, stood by), with its journal.
        self.standby: tuple[Gateway, Journal] | None = None
        self.start()

    @property
    def journal_path(self) -> Path:
        return self.home.root / "data" / "journal.sqlite3"

    @property
    def postgresql(self) -> bool:
        return self.config.journal_url.startswith("postgresql")

    def start(self, standby: tuple[Gateway, Journal] | None = None,
              grant: Any = None) -> None:
        """A gateway on the journal, with new sessions: a new one, or (a take-over)
        ``standby``, which already holds the lease ``grant``."""
        self.generation += 1
        if standby is not None:
            self.gateway, self.journal = standby
        else:
            self.gateway, self.journal = self._open_gateway()
        if self.postgresql:  # as GatewayService._became_active (§12)
            uow: Any = self.journal.store.uow
            uow.grant = grant or self._take_lease(self.journal)
            self.gateway.standing = Held(uow.grant.epoch)
            self.gateway.take_over()
        self.gateway.flush()
        g = self.generation
        self.bank = Side(self, self.peers[0], f"B{g}")
        self.broker = Side(self, self.peers[1], f"K{g}")
        self.bank.open()
        self.broker.open()

    def _open_gateway(self) -> tuple[Gateway, Journal]:
        """A gateway process starting: its journal and Gateway, as GatewayService opens
        them (on PostgreSQL a standby until it holds the lease: what was in flight is
        reversed by take_over(), not at start)."""
        if self.postgresql:  # [journal] url (§12)
            journal = Journal(self.config.journal_url, home=self.home.root)
        else:
            journal = Journal(self.journal_path, synchronous="OFF")
        gateway = Gateway(self.config, KeyStore(self.home.root / "keys"), journal,
                          self.clock, recover=not self.postgresql)
        if self.postgresql:
            gateway.standing = Held(None)
        return gateway, journal

    def restart(self) -> None:
        """Stop (what was in memory is lost; what was committed stays) and start."""
        assert self.journal is not None
        self.journal.close()
        self.start()

    def _take_lease(self, journal: Journal) -> Any:
        """§12: the database's lease for a new holder (epoch + 1); the holder before is
        taken to have stalled: its lease is expired first."""
        from gateway.store_pg.leasedb import acquire

        conn: Any = journal.store.uow.connection  # type: ignore[attr-defined]
        conn.execute("UPDATE lease SET expires_at = clock_timestamp()")
        grant = acquire(conn, f"rig-{self.generation}-{id(journal)}", 3600.0)
        assert grant is not None, "the lease could not be taken"
        return grant

    def take_over(self) -> None:
        """§12 on PostgreSQL: the standby (the active before the last take-over, else a
        gateway started now) takes the lease, then over (``take_over()``: suspensions
        read again, the requests the active left in flight reversed).  The active stands
        by as GatewayService._stand_by does, and stays the standby: a turn of it not
        committed yet (a side was :attr:`Side.stalled`) is fenced, then discarded; its
        sessions are cut and get nothing more."""
        from gateway.store_pg.leasedb import Fenced

        assert self.postgresql and self.journal is not None
        old, old_journal, old_sides = self.gateway, self.journal, (self.bank, self.broker)
        uow: Any = old_journal.store.uow
        new_gateway, new_journal = self.standby or self._open_gateway()
        new_journal.flush()  # a standby holds no transaction open
        grant = self._take_lease(new_journal)  # the old one's commits are fenced from now
        if uow.dirty:
            try:
                old.flush()
            except Fenced:
                pass
            else:
                raise AssertionError("a commit of the active before was not fenced")
        old.standing = Held(None)
        old.stand_by("this gateway is not the active one any more (test: take-over)")
        uow.discard()
        uow.grant = None
        for side in old_sides:
            assert side.link.closed and side.link.take() == [], "a stood-by session got frames"
        self.standby = (old, old_journal)
        self.start((new_gateway, new_journal), grant)

    def tick(self) -> None:
        self.gateway.tick()
        self.gateway.flush()

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        if self.standby is not None:
            self.standby[1].close()
            self.standby = None


class Held:
    """A §12 standing without the lease machine (tests/test_standby_inproc.py drives
    that): active with lease ``epoch``, or (None) a standby."""

    lease = True

    def __init__(self, epoch: int | None) -> None:
        self.epoch = epoch
        self.accepts_logons = epoch is not None
        self.name = "standby" if epoch is None else "active"


def fast_config(**overrides: Any) -> Config:
    settings: dict[str, Any] = {"keyx_after_logon_seconds": 0.0, "relay_timeout_seconds": 2.0,
                                "reversal_retry_initial_seconds": 1.0,
                                "reversal_retry_max_seconds": 2.0}
    settings.update(overrides)
    return Config(**settings)


class LogTap(logging.Handler):
    """The gateway's log lines, as the socket tests read a gateway process's stderr."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record) + "\n")


class InprocGateway:
    """What the business-rule tests use of a gateway process (conftest.RunningGateway),
    over a :class:`Rig`: its home, its log, waiting for a log line (gateway time passes
    meanwhile, as for a peer waiting for a frame)."""

    def __init__(self, rig: Rig, tap: LogTap) -> None:
        self.rig, self.tap, self.home = rig, tap, rig.home
        self.sessions = 0

    def peer(self, party: str, role: str | None = None) -> TestPeer:
        """One more peer; its ``open_session`` logs on over a new in-process session."""
        peer = TestPeer(party, role or ("BANK" if party == BANK else "BROKER"),
                        self.home.keys[party], port=0,
                        gateway_public_key=self.home.gateway_public_key)

        def open_session() -> TestPeer:
            self.sessions += 1
            Side(self.rig, peer, f"X{self.sessions}").open()
            return peer

        peer.open_session = open_session  # type: ignore[method-assign]
        return peer

    def log_text(self) -> str:
        return "".join(self.tap.lines)

    def wait_for_log(self, pattern: str, timeout: float = 10) -> str:
        waited = 0.0
        while True:
            for line in self.tap.lines:
                if re.search(pattern, line):
                    return line
            if waited >= timeout:
                raise AssertionError(f"log never matched {pattern!r}:\n{self.log_text()}")
            self.rig.clock.advance(WAIT_STEP)
            self.rig.tick()
            waited += WAIT_STEP


@contextmanager
def inproc_day(root: Path, **settings: Any) -> Iterator[tuple[InprocGateway, TestPeer, TestPeer]]:
    """conftest's ``day`` in process: a gateway with ``settings``, a bank and a broker
    keyed on their sessions; the log holds no traceback at the end."""
    from conftest import make_home

    home = make_home(root / "gw")
    peers = [TestPeer(party, role, home.keys[party], port=0,
                      gateway_public_key=home.gateway_public_key)
             for party, role in ((BANK, "BANK"), (BROKER, "BROKER"))]
    tap = LogTap()
    logger = logging.getLogger()
    level = logger.level
    logger.addHandler(tap)
    logger.setLevel(logging.INFO)
    rig = Rig(home, fast_config(**settings), Clock(time.time()), peers[0], peers[1])
    try:
        yield InprocGateway(rig, tap), peers[0], peers[1]
        assert "Traceback" not in InprocGateway(rig, tap).log_text()
    finally:
        rig.close()
        logger.removeHandler(tap)
        logger.setLevel(level)
