"""The lease machine driven by a reactor timer, against the database (PROTOCOL §12).

:class:`LeaseDriver` is the edge of gateway/store_pg/lease.py: a timer feeds the
machine's ``tick`` and sends what ``due`` asks — acquiring while standby, renewing while
active — through :meth:`TurnCommitter.call`, so lease statements run on the write
connection after every commit already submitted (a renewal never waits for a lock
held by our own commit in flight).  Answers come back to the reactor thread and are
fed to the machine with the send time noted before.  The gateway learns the outcome
through two callbacks: ``became_active(grant)`` (accept logons, dial out) and
``close_sessions()`` (step down: close every session, stop dialing out; the driver then
reports the machine stepped down).  A commit refused by the fence is reported with
:meth:`fenced`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from .committer import TurnCommitter
from .lease import Action, Grant, LeaseKeeper, Role
from .leasedb import LEASE_NAME, acquire, release, renew

log = logging.getLogger(__name__)


class LeaseDriver:
    """One gateway's lease loop.  The machine's clock must be the reactor's clock."""

    def __init__(self, reactor: IReactorTime, keeper: LeaseKeeper, committer: TurnCommitter,
                 holder: str, became_active: Callable[[Grant], object],
                 close_sessions: Callable[[], object], name: str = LEASE_NAME) -> None:
        self.keeper = keeper
        self._committer = committer
        self._holder = holder
        self._name = name
        self._became_active = became_active
        self._close_sessions = close_sessions
        self._loop = LoopingCall(self.step)
        self._loop.clock = reactor
        t = keeper.timings
        #: the timer's period: twice per renewal or poll interval, whichever is shorter
        self.period = min(t.renew_every, t.standby_poll) / 2

    def start(self) -> None:
        self._loop.start(self.period, now=True)

    def stop(self) -> Any:
        """Stop the timer and give the lease up if we hold it (a standby takes it at its
        next poll instead of waiting for it to expire); a Deferred of the release."""
        if self._loop.running:
            self._loop.stop()
        grant = self.keeper.grant
        if grant is None or self.keeper.role is not Role.ACTIVE:
            return self._committer.call(lambda conn: False)
        log.info("releasing the lease (epoch %d)", grant.epoch)
        return self._committer.call(lambda conn: release(conn, grant))

    def fenced(self) -> None:
        """A commit was refused by the fence: the lease is not ours."""
        self._act(self.keeper.lost())

    def check(self) -> None:
        """The step-down rule alone, now (the edge calls it before acting on reads or
        timers: an active paused past the deadline cuts its sessions first)."""
        self._act(self.keeper.tick())

    def step(self) -> None:
        """One timer turn: the step-down rule, then what is due."""
        self._act(self.keeper.tick())
        action = self.keeper.due()
        if action is Action.ACQUIRE:
            self._send_acquire()
        elif action is Action.RENEW:
            self._send_renew()

    def _send_acquire(self) -> None:
        sent = self.keeper.sent()
        ttl = self.keeper.timings.ttl
        d = self._committer.call(lambda conn: acquire(conn, self._holder, ttl, self._name))

        def answered(grant: Grant | None) -> None:
            if grant is None:
                self.keeper.not_acquired()
                return
            self.keeper.acquired(grant, sent)
            log.info("took the lease (epoch %d): active", grant.epoch)
            self._became_active(grant)

        def failed(failure: Any) -> None:
            log.warning("could not try the lease: %s", failure.getErrorMessage())
            self.keeper.not_acquired()

        d.addCallbacks(answered, failed)

    def _send_renew(self) -> None:
        grant = self.keeper.grant
        assert grant is not None
        sent = self.keeper.sent()
        ttl = self.keeper.timings.ttl
        d = self._committer.call(lambda conn: renew(conn, grant, ttl))

        def answered(ok: bool) -> None:
            if ok:
                self._act(self.keeper.renewed(sent))
            else:
                log.error("the lease (epoch %d) was not renewed: another gateway holds it;"
                          " stepping down", grant.epoch)
                self._act(self.keeper.lost())

        def failed(failure: Any) -> None:
            log.warning("lease renewal failed: %s (retrying)", failure.getErrorMessage())
            self._act(self.keeper.renewal_failed())

        d.addCallbacks(answered, failed)

    def _act(self, actions: list[Action]) -> None:
        for action in actions:
            if action is Action.CLOSE_SESSIONS:
                log.error("the lease is not confirmed ours: closing every session and"
                          " standing by")
                self._close_sessions()
                self.keeper.stepped_down()
