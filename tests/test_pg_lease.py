"""PROTOCOL §12 lease and fencing: the database side on a real throwaway PostgreSQL, the
active/standby decisions as a sans-IO machine on an injected clock."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from gateway.store_pg import leasedb  # noqa: E402
from gateway.store_pg.lease import (  # noqa: E402
    Action,
    Grant,
    IllegalTransition,
    LeaseKeeper,
    LeaseTimings,
    Role,
)
from gateway.store_pg.leasedb import Fenced, acquire, fenced, release, renew  # noqa: E402

TTL = 30.0  # seconds, database clock: expiry is simulated by moving expires_at back


@pytest.fixture
def conns(pg_store_url: str) -> Iterator[tuple[Any, Any]]:
    """Two gateways' connections to the shared journal (A and B)."""
    with psycopg.connect(pg_store_url) as a, psycopg.connect(pg_store_url) as b:
        yield a, b


def _expire(conn: Any) -> None:
    """The lease's time runs out (as if its holder stopped renewing TTL seconds ago)."""
    conn.execute("UPDATE lease SET expires_at = clock_timestamp() - interval '1 second'")
    conn.commit()


def _alerts(conn: Any) -> list[str]:
    rows = conn.execute("SELECT subject FROM alert ORDER BY id").fetchall()
    conn.commit()
    return [r[0] for r in rows]


def _write_alert(conn: Any, grant: Grant, subject: str) -> None:
    with fenced(conn, grant):
        conn.execute("INSERT INTO alert (at, kind, severity, subject, text)"
                     " VALUES (1, 'k', 'warning', %s, 't')", (subject,))


def test_of_two_holders_only_one_gets_the_lease(conns: tuple[Any, Any]) -> None:
    a, b = conns
    grant = acquire(a, "A", TTL)
    assert grant == Grant("gateway", "A", 1)
    assert acquire(b, "B", TTL) is None
    assert acquire(a, "A2", TTL) is None  # not even a second process of the same host
    assert leasedb.lease_state(b) == ("A", 1, True)


def test_an_expired_lease_is_taken_over_with_a_higher_epoch(conns: tuple[Any, Any]) -> None:
    a, b = conns
    old = acquire(a, "A", TTL)
    assert old is not None
    _expire(a)
    new = acquire(b, "B", TTL)
    assert new == Grant("gateway", "B", 2)
    assert acquire(a, "A", TTL) is None  # the old holder cannot take it back while B renews


def test_the_old_holders_fenced_commit_fails_and_writes_nothing(conns: tuple[Any, Any]) -> None:
    a, b = conns
    old = acquire(a, "A", TTL)
    assert old is not None
    _write_alert(a, old, "before")  # the holder's commits go through
    _expire(a)
    new = acquire(b, "B", TTL)
    assert new is not None
    with pytest.raises(Fenced, match="epoch 1 is no longer held by A"):
        _write_alert(a, old, "stale")
    _write_alert(b, new, "after")
    assert _alerts(b) == ["before", "after"]
    assert _alerts(a) == ["before", "after"]  # A's connection is usable after the refusal


def test_an_expired_lease_fences_commits_even_before_anyone_takes_it(
        conns: tuple[Any, Any]) -> None:
    a, _ = conns
    grant = acquire(a, "A", TTL)
    assert grant is not None
    _expire(a)
    with pytest.raises(Fenced):
        _write_alert(a, grant, "late")
    assert _alerts(a) == []


def test_renewal_only_by_the_holder_at_its_epoch(conns: tuple[Any, Any]) -> None:
    a, b = conns
    grant = acquire(a, "A", TTL)
    assert grant is not None
    assert not renew(b, Grant("gateway", "B", 1), TTL)  # not the holder
    assert not renew(a, Grant("gateway", "A", 2), TTL)  # not its epoch
    assert renew(a, grant, TTL)
    _expire(a)
    assert not renew(a, grant, TTL)  # an expired lease is never revived
    taken = acquire(b, "B", TTL)
    assert taken is not None and taken.epoch == 2
    assert not renew(a, grant, TTL)
    assert renew(b, taken, TTL)


def test_a_released_lease_is_taken_at_once(conns: tuple[Any, Any]) -> None:
    a, b = conns
    grant = acquire(a, "A", TTL)
    assert grant is not None
    assert release(a, grant)
    assert not release(a, grant)  # once
    assert acquire(b, "B", TTL) == Grant("gateway", "B", 2)


def _wait_for(probe: Any, what: str) -> None:
    """Poll ``probe`` (a database question) until it holds; fail after 30 s."""
    deadline = time.monotonic() + 30
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_takeover_waits_for_the_commit_in_flight_then_fences_the_next(
        conns: tuple[Any, Any], pg_store_url: str) -> None:
    """The fence share-locks the lease row: a commit that passed it is ordered before
    the takeover (which waits for it), and every later commit of the old holder fails."""
    a, b = conns
    old = acquire(a, "A", 0.2)  # a short lease, so it expires under the open transaction
    assert old is not None
    ctx = fenced(a, old)
    ctx.__enter__()  # the fence passed: this commit is in flight
    a.execute("INSERT INTO alert (at, kind, severity, subject, text)"
              " VALUES (1, 'k', 'warning', 'in flight', 't')")
    with psycopg.connect(pg_store_url, autocommit=True) as watch:
        _wait_for(lambda: watch.execute("SELECT expires_at <= clock_timestamp() FROM lease")
                  .fetchone()[0], "the lease to expire")
        b_pid = b.info.backend_pid
        taken: list[Grant | None] = []
        thread = threading.Thread(target=lambda: taken.append(acquire(b, "B", TTL)))
        thread.start()
        _wait_for(lambda: watch.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity"
                                        " WHERE pid = %s", (b_pid,)).fetchone()[0],
                  "the takeover to wait for the lease row")
        assert taken == []
        ctx.__exit__(None, None, None)  # A's commit lands first ...
        thread.join(30)
    assert taken == [Grant("gateway", "B", 2)]  # ... then B takes over
    with pytest.raises(Fenced):
        _write_alert(a, old, "after the takeover")
    assert _alerts(b) == ["in flight"]


# --- the active/standby machine (sans-IO, injected clock) -------------------------------

F = 5.0  # failover_seconds
T = LeaseTimings.from_failover(F)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _active(clock: Clock) -> LeaseKeeper:
    keeper = LeaseKeeper(T, clock)
    assert keeper.due() is Action.ACQUIRE
    assert keeper.acquired(Grant("gateway", "A", 1), keeper.sent()) == []
    return keeper


def test_timings_step_down_before_the_lease_can_be_taken_and_take_over_within_failover() -> None:
    assert T.step_down_after == F / 2 < T.ttl
    assert T.ttl + T.standby_poll < F  # a dead active's lease is taken within failover
    assert T.renew_every * 2 < T.step_down_after  # one lost renewal is not a step-down
    with pytest.raises(ValueError):
        LeaseTimings.from_failover(0)


def test_a_standby_refuses_logons_and_polls_for_the_lease() -> None:
    clock = Clock()
    keeper = LeaseKeeper(T, clock)
    assert keeper.role is Role.STANDBY and not keeper.accepts_logons
    assert keeper.due() is Action.ACQUIRE
    keeper.sent()
    assert keeper.due() is None  # one attempt in flight at a time
    keeper.not_acquired()
    assert keeper.due() is None
    clock.t += T.standby_poll
    assert keeper.due() is Action.ACQUIRE


def test_the_active_renews_and_stays_active_while_renewals_are_confirmed() -> None:
    clock = Clock()
    keeper = _active(clock)
    assert keeper.accepts_logons
    for _ in range(20):
        clock.t += T.renew_every
        assert keeper.due() is Action.RENEW
        sent = keeper.sent()
        clock.t += 0.3  # the answer takes a while
        assert keeper.renewed(sent) == []
    assert keeper.role is Role.ACTIVE


def test_the_active_steps_down_when_renewals_stall_for_half_the_failover_time() -> None:
    clock = Clock()
    keeper = _active(clock)
    clock.t += T.renew_every
    keeper.sent()  # no answer ever comes (the database is out of reach)
    clock.t = 1000.0 + T.step_down_after
    assert keeper.tick() == []  # exactly half: still confirmed
    clock.t += 0.01
    assert keeper.tick() == [Action.CLOSE_SESSIONS]
    assert keeper.role is Role.STEPPING_DOWN and not keeper.accepts_logons
    assert keeper.tick() == []  # said once
    assert keeper.due() is None  # no renewals while stepping down
    keeper.stepped_down()
    assert keeper.role is Role.STANDBY and keeper.grant is None


def test_a_late_renewal_confirms_the_lease_only_from_when_it_was_sent() -> None:
    clock = Clock()
    keeper = _active(clock)
    clock.t += T.renew_every
    sent = keeper.sent()
    clock.t = sent + T.step_down_after - 0.1  # the answer arrives just in time ...
    assert keeper.renewed(sent) == []
    clock.t = sent + T.step_down_after + 0.1  # ... but covers only from its send time
    assert keeper.tick() == [Action.CLOSE_SESSIONS]


def test_failed_renewals_are_retried_until_the_deadline() -> None:
    clock = Clock()
    keeper = _active(clock)
    clock.t += T.renew_every
    keeper.sent()
    assert keeper.renewal_failed() == []  # a lost connection: try again at the next turn
    clock.t += T.renew_every
    assert keeper.due() is Action.RENEW
    sent = keeper.sent()
    assert keeper.renewed(sent) == []
    assert keeper.role is Role.ACTIVE


def test_a_refused_renewal_or_a_fenced_commit_steps_down_at_once() -> None:
    clock = Clock()
    keeper = _active(clock)
    assert keeper.lost() == [Action.CLOSE_SESSIONS]
    assert keeper.lost() == []
    keeper.stepped_down()
    with pytest.raises(IllegalTransition, match="standby cannot become standby"):
        keeper.stepped_down()


def test_stalled_renewals_step_down_and_the_standby_takes_over_on_the_database(
        conns: tuple[Any, Any]) -> None:
    """Two keepers driven against the real lease: A's renewals stall (its answers never
    come back), it steps down at f/2 and closes its sessions; once the lease expires
    B takes it at a higher epoch and A's late commit is fenced."""
    a, b = conns
    clock_a, clock_b = Clock(), Clock()
    keeper_a, keeper_b = LeaseKeeper(T, clock_a), LeaseKeeper(T, clock_b)

    def drive(keeper: LeaseKeeper, conn: Any, holder: str) -> None:
        action = keeper.due()
        if action is Action.ACQUIRE:
            sent = keeper.sent()
            grant = acquire(conn, holder, T.ttl)
            if grant is None:
                keeper.not_acquired()
            else:
                keeper.acquired(grant, sent)
        elif action is Action.RENEW:
            sent = keeper.sent()
            assert keeper.grant is not None
            if renew(conn, keeper.grant, T.ttl):
                keeper.renewed(sent)
            else:
                keeper.lost()

    drive(keeper_a, a, "A")
    drive(keeper_b, b, "B")
    assert (keeper_a.role, keeper_b.role) == (Role.ACTIVE, Role.STANDBY)
    grant_a = keeper_a.grant
    assert grant_a is not None
    clock_a.t += T.renew_every
    keeper_a.sent()  # A's renewal leaves; its answer is lost
    closed: list[Action] = []
    while keeper_a.role is Role.ACTIVE:
        clock_a.t += 0.1
        clock_b.t += 0.1
        closed += keeper_a.tick()
        drive(keeper_b, b, "B")
        assert keeper_b.role is Role.STANDBY  # the lease has not expired yet
    assert closed == [Action.CLOSE_SESSIONS]
    assert clock_a.t - 1000.0 <= T.step_down_after + 0.1
    keeper_a.stepped_down()
    _expire(a)  # 0.75 f after A's last renewal by the database clock
    clock_b.t += T.standby_poll
    drive(keeper_b, b, "B")
    assert keeper_b.role is Role.ACTIVE and keeper_b.grant == Grant("gateway", "B", 2)
    with pytest.raises(Fenced):
        _write_alert(a, grant_a, "late")
    assert _alerts(b) == []
