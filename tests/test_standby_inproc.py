"""PROTOCOL §12 in one process (tests/inproc.py): a real Gateway, its real SQLite
journal and sessions, the real lease machine and LeaseDriver, the server's factory —
no sockets, no database (the lease's answers are fed to the machine as the database
would give them), time moved by the test."""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from inproc import Clock, Rig, Side, fast_config
from twisted.internet.task import Clock as ReactorClock

from gateway.server import GatewayFactory, GatewayService
from gateway.standing import LeaseStanding
from gateway.store_pg.lease import Grant, LeaseKeeper, LeaseTimings, Role
from gateway.store_pg.leasedb import Fenced
from gateway.store_pg.leasedriver import LeaseDriver

from conftest import BANK, BROKER, make_home
from peer import TestPeer

F = 4.0  # failover_seconds


class Active:
    """A rig whose gateway holds the lease (epoch 1), wired as GatewayService wires a
    pair: standing from the machine, close_sessions → Gateway.stand_by, the factory's
    guard → LeaseDriver.check."""

    def __init__(self, root: Path) -> None:
        home = make_home(root / "gw")
        self.peers = [TestPeer(p, r, home.keys[p], port=0,
                               gateway_public_key=home.gateway_public_key)
                      for p, r in ((BANK, "BANK"), (BROKER, "BROKER"))]
        self.rig = Rig(home, fast_config(), Clock(time.time()), *self.peers)
        gw = self.rig.gateway
        self.keeper = LeaseKeeper(LeaseTimings.from_failover(F), self.rig.clock)
        self.keeper.acquired(Grant("gateway", "me", 1), self.keeper.sent())
        gw.standing = LeaseStanding(self.keeper)
        self.driver = LeaseDriver(ReactorClock(), self.keeper, None,  # type: ignore[arg-type]
                                  "me", lambda grant: None,
                                  lambda: gw.stand_by("lease lost"))
        self.factory = GatewayFactory(gw, ReactorClock())
        self.factory.guard = self.driver.check
        svc = GatewayService.__new__(GatewayService)  # only its fence handler
        svc.pair = self
        self.factory.fenced = svc._commit_fenced

    def fenced(self) -> None:  # LeasePair.fenced
        self.driver.fenced()


@pytest.fixture
def active(tmp_path: Path) -> Iterator[Active]:
    a = Active(tmp_path)
    yield a
    a.rig.close()


def test_a_paused_active_cuts_its_sessions_before_it_acts_on_what_it_read(
        active: Active) -> None:
    """Resumed past f/2 with no confirmed renewal and a request already read: the
    first thing the turn does is the step-down rule, so the request is never acted on,
    journaled or answered, and no peer gets a frame."""
    rig = active.rig
    rig.clock.advance(F / 2 + 0.1)  # paused: no timer ran, no renewal was confirmed
    msg_id, xml = active.peers[1].build("SYS.ECHO.REQ", [("Text", "while paused")])
    active.factory.read(rig.broker.session, active.peers[1].frame(xml))
    active.factory.flush_now()

    assert active.keeper.role is Role.STANDBY and not rig.gateway.accepts_logons
    for side in (rig.bank, rig.broker):
        assert side.link.closed and side.link.take() == []
    assert rig.gateway.sessions == []
    with sqlite3.connect(rig.journal_path) as journal:
        assert journal.execute("SELECT count(*) FROM message WHERE msg_id = ?",
                               (msg_id,)).fetchone() == (0,)


def test_while_active_a_turn_acts_on_its_reads(active: Active) -> None:
    """The guard lets an active whose renewals are confirmed act as before."""
    rig = active.rig
    msg_id, xml = active.peers[1].build("SYS.ECHO.REQ", [("Text", "hello")])
    active.factory.read(rig.broker.session, active.peers[1].frame(xml))
    active.factory.flush_now()
    frames = rig.broker.link.take()
    assert [f.type for f in frames] == ["SYS.ECHO.RSP"] and active.keeper.role is Role.ACTIVE


def test_a_standby_gateway_answers_logon_with_a_signed_s903_and_closes(active: Active) -> None:
    rig = active.rig
    rig.clock.advance(F)
    active.driver.check()  # the timer's step-down
    assert rig.gateway.sessions == []
    peer = TestPeer(BANK, "BANK", rig.home.keys[BANK], port=0,
                    gateway_public_key=rig.home.gateway_public_key)
    side = Side(rig, peer, "S1")
    _, xml = peer.build("SYS.LOGON.REQ", [("PartyId", BANK), ("Role", "BANK"),
                                          ("Nonce", "ab" * 16), ("HeartbeatSec", 30)])
    side.feed(peer.frame(xml, mac=False))
    (rsp,) = side.take()
    assert rsp.type == "SYS.LOGON.RSP" and rsp.body["Result"] == "S903", rsp.body
    peer.verify_from_gateway(rsp)
    assert side.link.closed and not side.session.ready


def test_a_fenced_commit_makes_the_active_stand_by_instead_of_stopping(
        active: Active, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit the fence refused (the journal on PostgreSQL, another gateway holding
    the lease): no frame of the turn leaves, every session is cut, the gateway stands by
    and keeps running (the factory's reactor has no stop(): calling it would fail)."""
    rig = active.rig
    msg_id, xml = active.peers[1].build("SYS.ECHO.REQ", [("Text", "fenced")])

    def fenced_flush(background: bool = False) -> int:  # what PgUnitOfWork.flush raises (branch pgstore)
        raise Fenced("lease 'gateway' epoch 1 is no longer held by me")

    monkeypatch.setattr(rig.gateway, "flush", fenced_flush)
    active.factory.read(rig.broker.session, active.peers[1].frame(xml))
    active.factory.flush_or_stop()

    assert active.keeper.role is Role.STANDBY and not rig.gateway.accepts_logons
    for side in (rig.bank, rig.broker):
        assert side.link.closed and side.link.take() == []
