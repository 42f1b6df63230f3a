"""The lease loop (gateway/store_pg/leasedriver.py) on a Twisted task.Clock, its lease
statements on a real throwaway PostgreSQL through each gateway's TurnCommitter."""
from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from twisted.internet.task import Clock  # noqa: E402

from gateway.store_pg.committer import Statement, TurnCommitter  # noqa: E402
from gateway.store_pg.lease import Grant, LeaseKeeper, LeaseTimings, Role  # noqa: E402
from gateway.store_pg.leasedb import Fenced  # noqa: E402
from gateway.store_pg.leasedriver import LeaseDriver  # noqa: E402

T = LeaseTimings.from_failover(600.0)  # database expiry is simulated, never waited for


class Pump:
    """The committer's callFromThread: answers wait here until the test delivers them
    (a reactor turn, in the test's hands)."""

    def __init__(self) -> None:
        self.answers: queue.Queue[tuple[Callable[..., object], tuple[Any, ...]]] = queue.Queue()

    def __call__(self, f: Callable[..., object], *args: Any) -> None:
        self.answers.put((f, args))

    def deliver(self) -> None:
        f, args = self.answers.get(timeout=30)
        f(*args)


class Gateway:
    def __init__(self, url: str, holder: str) -> None:
        self.clock = Clock()
        self.pump = Pump()
        self.committer = TurnCommitter(lambda: psycopg.connect(url), self.pump)
        self.keeper = LeaseKeeper(T, self.clock.seconds)
        self.events: list[str] = []
        self.driver = LeaseDriver(self.clock, self.keeper, self.committer, holder,
                                  lambda g: self.events.append(f"active {g.epoch}"),
                                  lambda: self.events.append("sessions closed"))

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, one timer period at a time."""
        steps = max(1, round(seconds / self.driver.period))
        for _ in range(steps):
            self.clock.advance(seconds / steps)

    def settle(self) -> None:
        """Deliver the answer to the lease statement in flight, if one is."""
        while self.keeper.awaiting_answer:
            self.pump.deliver()

    def close(self) -> None:
        self.committer.close()
        self.pump.deliver()


@pytest.fixture
def pair(pg_store_url: str) -> Iterator[tuple[Gateway, Gateway, Any]]:
    a, b = Gateway(pg_store_url, "A"), Gateway(pg_store_url, "B")
    with psycopg.connect(pg_store_url, autocommit=True) as admin:
        yield a, b, admin
    a.close()
    b.close()


def _expire(admin: Any) -> None:
    admin.execute("UPDATE lease SET expires_at = clock_timestamp() - interval '1 second'")


def test_one_active_the_other_standby_then_a_stalled_active_steps_down_and_is_replaced(
        pair: tuple[Gateway, Gateway, Any]) -> None:
    a, b, admin = pair
    a.driver.start()  # tries at once
    a.pump.deliver()
    b.driver.start()
    b.pump.deliver()
    assert (a.keeper.role, b.keeper.role) == (Role.ACTIVE, Role.STANDBY)
    assert a.events == ["active 1"] and b.events == []
    old = a.keeper.grant
    assert old is not None

    for _ in range(3):  # healthy: renewals confirmed, B keeps polling in vain
        a.advance(T.renew_every)
        a.pump.deliver()
        b.advance(T.renew_every)
        b.settle()
    assert (a.keeper.role, b.keeper.role) == (Role.ACTIVE, Role.STANDBY)

    a.advance(T.renew_every)  # a renewal leaves; its answer does not come back in time
    a.advance(T.step_down_after - T.renew_every + a.driver.period)
    assert a.events == ["active 1", "sessions closed"]
    assert a.keeper.role is Role.STANDBY and not a.keeper.accepts_logons
    a.pump.deliver()  # the late answer changes nothing

    _expire(admin)  # the lease runs out by the database clock
    b.advance(T.standby_poll)
    b.settle()
    assert b.keeper.role is Role.ACTIVE and b.events == ["active 2"]

    stale = a.committer.submit(old, (Statement(
        "INSERT INTO alert (at, kind, severity, subject, text)"
        " VALUES (1, 'k', 'warning', 'stale', 't')"),))
    failures: list[Any] = []
    stale.addErrback(failures.append)
    a.pump.deliver()
    assert failures and failures[0].check(Fenced)
    a.driver.fenced()  # already standby: nothing more to close
    assert a.events == ["active 1", "sessions closed"]
    assert admin.execute("SELECT count(*) FROM alert").fetchone() == (0,)


def test_a_refused_renewal_steps_down_at_once_and_stop_releases_the_lease(
        pair: tuple[Gateway, Gateway, Any]) -> None:
    a, b, admin = pair
    a.driver.start()
    a.pump.deliver()
    assert a.keeper.grant == Grant("gateway", "A", 1)
    admin.execute("UPDATE lease SET holder = 'C', epoch = 2")  # taken behind A's back
    a.advance(T.renew_every)
    a.pump.deliver()
    assert a.events == ["active 1", "sessions closed"] and a.keeper.role is Role.STANDBY

    admin.execute("UPDATE lease SET holder = NULL, expires_at = clock_timestamp()")
    b.driver.start()
    b.pump.deliver()
    assert b.events == ["active 3"]
    released: list[object] = []
    b.driver.stop().addCallback(released.append)
    b.pump.deliver()
    assert released == [True]
    assert admin.execute("SELECT holder FROM lease").fetchone() == (None,)
