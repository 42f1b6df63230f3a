"""PROTOCOL §12 in one process (tests/inproc.py): a real Gateway, its real SQLite
journal and sessions, the real lease machine and LeaseDriver, the server's factory —
no sockets, no database (the lease's answers are fed to the machine as the database
would give them), time moved by the test."""
from __future__ import annotations

import io
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# --- the stop and the ops API when the lease is lost (GatewayService in memory) -----
class Service:
    """A real GatewayService (SQLite journal, ops endpoint) on Twisted's memory reactor,
    wired as a pair: its fence handler and stand-by are the service's own; the lease
    pair is a stub whose ``fenced`` does what LeasePair.fenced leads to (the driver
    calls the service's ``_stand_by``)."""

    def __init__(self, root: Path) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from gateway.opsconfig import OpsConfig, make_token

        home = make_home(root / "gw")
        make_token(home.root / "keys")
        self.reactor = MemoryReactorClock()
        self.svc = GatewayService(home.root, fast_config(), self.reactor,
                                  listen="127.0.0.1:0", ops=OpsConfig(listen="127.0.0.1:0"))
        self.keeper = LeaseKeeper(LeaseTimings.from_failover(F), self.reactor.seconds)
        self.keeper.acquired(Grant("gateway", "me", 1), self.keeper.sent())
        self.svc.gateway.standing = LeaseStanding(self.keeper)
        self.svc.factory.fenced = self.svc._commit_fenced
        self.fenced_calls = 0
        self.svc.pair = self

    def fenced(self) -> None:  # LeasePair.fenced → LeaseDriver → close_sessions
        self.fenced_calls += 1
        self.keeper.lost()
        self.svc._stand_by()
        self.keeper.stepped_down()

    def start(self) -> None:  # LeasePair.start: the lease is held already
        pass

    def stop(self) -> Any:  # LeasePair.stop
        from twisted.internet import defer
        return defer.succeed(None)

    def post(self, path: bytes, body: bytes) -> Any:
        from twisted.web.test.requesthelper import DummyRequest

        from gateway.ops import OpsResource

        request = DummyRequest([])
        request.method, request.path, request.uri = b"POST", path, path
        request.content = io.BytesIO(body)
        token = self.svc.ops.token
        request.requestHeaders.addRawHeader(b"authorization", b"Bearer " + token)
        rendered = OpsResource(self.svc.ops).render(request)
        if isinstance(rendered, bytes):
            request.write(rendered)
            request.finish()
        return request


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    s = Service(tmp_path)
    yield s
    s.svc.journal.close()


def _fence_next_commit(svc: GatewayService, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The gateway's next commit is refused by the fence, as PgUnitOfWork's would be
    (its transaction rolled back, its after-commit actions dropped, Fenced raised);
    later ones go through."""
    real, uow, refused = svc.gateway.flush, svc.journal.store.uow, []

    def flush(background: bool = False) -> int:
        if not refused and uow.dirty:
            refused.append(1)
            if uow._in_tx:
                uow.connection.execute("ROLLBACK")
                uow._in_tx = False
            uow._before.clear()
            uow._after.clear()
            raise Fenced("lease 'gateway' epoch 1 is no longer held by me")
        return real(background)

    monkeypatch.setattr(svc.gateway, "flush", flush)
    return refused


def test_a_stop_whose_commit_is_fenced_stands_by_and_still_stops(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """§12: the lease taken over just as the active stops — the stop's own commit is
    refused by the fence.  It stands by (the fence handler) and the stop goes on to the
    end, instead of failing out of stopService with the journal left open."""
    svc = service.svc
    svc.startService()
    svc.gateway.suspensions.suspend("CCB", "written in the stop's last turn")
    refused = _fence_next_commit(svc, monkeypatch)
    done: list[Any] = []
    d = svc.stopService()
    d.addBoth(done.append)
    for _ in range(200):
        if done:
            break
        service.reactor.advance(0.2)
    assert done and done[0] is None, done  # the stop ended, not with a Failure
    assert refused and service.fenced_calls == 1
    assert not svc.gateway.accepts_logons


def test_a_suspend_at_a_standby_is_refused_with_503_and_changes_nothing(
        service: Service) -> None:
    import json

    svc = service.svc
    svc.startService()
    service.keeper.lost()
    service.keeper.stepped_down()  # a standby now
    request = service.post(b"/api/suspend", b'{"party": "CCB", "reason": "r"}')
    assert request.responseCode == 503, request.written
    error = json.loads(b"".join(request.written))["error"]
    assert "standby" in error and "active" in error
    assert svc.gateway.suspensions.suspended_parties(["CCB"]) == []
    svc.factory.flush_now()
    svc.gateway.suspensions.reload()
    assert svc.gateway.suspensions.suspended_parties(["CCB"]) == []


def test_a_suspend_whose_commit_is_fenced_gets_503_not_silence(
        service: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    """The POST waits for its commit; the commit is fenced (another gateway took the
    lease): the request is answered 503 at once — not left open until the client's
    timeout — and the gateway stands by."""
    import json

    svc = service.svc
    svc.startService()
    _fence_next_commit(svc, monkeypatch)
    request = service.post(b"/api/resume", b"{}")
    assert not request.finished  # waiting for its commit
    service.reactor.advance(0)  # the turn's group commit: fenced
    assert service.fenced_calls == 1 and not svc.gateway.accepts_logons
    assert request.finished and request.responseCode == 503, request.written
    assert "not committed" in json.loads(b"".join(request.written))["error"]


def test_the_two_gateways_of_a_pair_never_make_the_same_msg_id_whatever_their_clocks(
        tmp_path: Path) -> None:
    """§12, §4: the gateways of a pair sign as one party, so a MsgId of one must never
    be one the other already sent, however their clocks stand.  Here the worst case:
    both clocks at the same millisecond and both counters from the same start — the
    active at lease epoch 1, the one that took over at epoch 2, and a standby answering
    S903 — and still no MsgId twice; a gateway alone (SQLite, no lease) keeps the
    format it had: its six digits are all its counter's."""
    from gateway.journal import Journal
    from gateway.keystore import KeyStore
    from gateway.relay import Gateway

    home = make_home(tmp_path / "gw")

    def at_one_instant() -> float:
        return 1_800_000_000.123

    def same_random(n: int) -> bytes:
        return b"\x01" * n

    made: list[list[str]] = []
    for n, epoch in enumerate((1, 2, None, "alone")):
        journal = Journal(tmp_path / f"j{n}.sqlite3", synchronous="OFF")
        gw = Gateway(fast_config(), KeyStore(home.root / "keys"), journal, at_one_instant,
                     same_random)
        if epoch != "alone":
            keeper = LeaseKeeper(LeaseTimings.from_failover(F), at_one_instant)
            if isinstance(epoch, int):
                keeper.acquired(Grant("gateway", f"holder{epoch}", epoch), keeper.sent())
            gw.standing = LeaseStanding(keeper)
        made.append([gw.next_msg_id() for _ in range(2000)])
        journal.close()
    pair = made[:3]
    assert len(set().union(*pair)) == sum(len(ids) for ids in pair)
    for ids in made:
        assert all(i.startswith("GW01") and len(i) == 4 + 13 + 6 and i.isalnum() for i in ids)
    start = int.from_bytes(b"\x01" * 3, "big")
    assert made[3][0] == f"GW01{1_800_000_000_123:013d}{start % 10**6:06d}"
