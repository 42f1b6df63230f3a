"""Active/standby (PROTOCOL §12) as a sans-IO state machine fed by an injected clock.

STANDBY → ACTIVE (a lease acquired) → STEPPING_DOWN (a renewal refused, a commit fenced,
or no renewal confirmed within half of ``failover_seconds``) → STANDBY (its sessions
closed).  Only ACTIVE accepts logons and dials out; the others answer LOGON with S903.

The machine does no I/O: the edge asks :meth:`LeaseKeeper.due` what to send (acquire,
renew), sends it to the database (gateway/store_pg/leasedb.py), and reports the answer
with the *send* time it noted before (:meth:`acquired`, :meth:`renewed`, …): a
renewal confirms the lease from when it was sent, never from when its answer arrived.
The clock is monotonic seconds (``time.monotonic`` or a test's clock); the lease's
expiry itself is kept by the database clock, so gateway clocks never have to agree.

Timings (:meth:`LeaseTimings.from_failover`, f = ``failover_seconds``): the lease lasts
0.75 f from each renewal by the database clock; the active renews every f/6 and steps
down when no renewal sent in the last f/2 was confirmed — 0.25 f before the lease can
expire, so it has stopped talking to peers before a standby can take over; a standby
polls every f/8, so it takes a dead active's lease within 0.75 f + f/8 < f.
"""
from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class Role(enum.Enum):
    STANDBY = "standby"
    ACTIVE = "active"
    STEPPING_DOWN = "stepping-down"


class Action(enum.Enum):
    """What the edge must do now."""

    ACQUIRE = "acquire"  #: try to take the lease (leasedb.acquire)
    RENEW = "renew"  #: renew ours (leasedb.renew)
    CLOSE_SESSIONS = "close-sessions"  #: close every session, then call stepped_down()


_ALLOWED: dict[Role, frozenset[Role]] = {
    Role.STANDBY: frozenset({Role.ACTIVE}),
    Role.ACTIVE: frozenset({Role.STEPPING_DOWN}),
    Role.STEPPING_DOWN: frozenset({Role.STANDBY}),
}


class IllegalTransition(RuntimeError):
    """The lease machine was asked to move where it does not allow."""


@dataclass(frozen=True, slots=True)
class LeaseTimings:
    ttl: float  #: the lease's life from each renewal (database clock)
    renew_every: float  #: the active renews this often
    step_down_after: float  #: no renewal confirmed for this long (sent since): step down
    standby_poll: float  #: a standby tries to take the lease this often

    @classmethod
    def from_failover(cls, failover_seconds: float) -> LeaseTimings:
        """The §12 timings of ``[journal] failover_seconds`` (see the module text)."""
        if failover_seconds <= 0:
            raise ValueError("failover_seconds must be positive")
        f = failover_seconds
        return cls(ttl=0.75 * f, renew_every=f / 6, step_down_after=f / 2,
                   standby_poll=f / 8)


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease we hold: what every fenced commit names."""

    name: str
    holder: str
    epoch: int


class LeaseKeeper:
    """One gateway's view of the lease.  Every input returns the actions it causes."""

    def __init__(self, timings: LeaseTimings, clock: Callable[[], float]) -> None:
        self.timings = timings
        self._clock = clock
        self.role = Role.STANDBY
        self.grant: Grant | None = None
        #: send time of the newest renewal (or acquisition) the database confirmed
        self._confirmed_at = 0.0
        self._next_at = clock()  # when the next acquire/renew is due
        self._in_flight = False

    # --- questions ----------------------------------------------------------------
    @property
    def accepts_logons(self) -> bool:
        """Only the active one: the others answer LOGON with S903 (§12)."""
        return self.role is Role.ACTIVE

    @property
    def awaiting_answer(self) -> bool:
        """An acquire or renew was sent and its answer has not been reported yet."""
        return self._in_flight

    def due(self) -> Action | None:
        """What to send now (None: nothing; one attempt in flight at a time).  The edge
        calls :meth:`sent` when it sends it."""
        if self._in_flight or self._clock() < self._next_at:
            return None
        if self.role is Role.STANDBY:
            return Action.ACQUIRE
        if self.role is Role.ACTIVE:
            return Action.RENEW
        return None

    def sent(self) -> float:
        """An acquire or renew goes to the database now; its send time, to hand back
        with the answer."""
        self._in_flight = True
        now = self._clock()
        self._next_at = now + (self.timings.renew_every if self.role is Role.ACTIVE
                               else self.timings.standby_poll)
        return now

    # --- answers from the database -------------------------------------------------
    def acquired(self, grant: Grant, sent_at: float) -> list[Action]:
        self._in_flight = False
        self._move(Role.ACTIVE)  # only a standby sends ACQUIRE
        self.grant = grant
        self._confirmed_at = sent_at
        self._next_at = sent_at + self.timings.renew_every
        return []

    def not_acquired(self) -> list[Action]:
        """Someone else holds it (or the database did not answer)."""
        self._in_flight = False
        return []

    def renewed(self, sent_at: float) -> list[Action]:
        self._in_flight = False
        if self.role is Role.ACTIVE:
            self._confirmed_at = max(self._confirmed_at, sent_at)
        return self.tick()

    def renewal_failed(self) -> list[Action]:
        """The renewal got no answer (connection lost, timeout): retry; the deadline of
        :meth:`tick` decides when to give up."""
        self._in_flight = False
        return self.tick()

    def lost(self) -> list[Action]:
        """The database refused our renewal, or fenced a commit: the lease is not ours."""
        self._in_flight = False
        return self._step_down()

    def tick(self) -> list[Action]:
        """Called by the edge's timer (at least every ``renew_every``): the step-down rule."""
        if (self.role is Role.ACTIVE
                and self._clock() - self._confirmed_at > self.timings.step_down_after):
            return self._step_down()
        return []

    def stepped_down(self) -> list[Action]:
        """Every session is closed: standby now (it may take the lease again later)."""
        self._move(Role.STANDBY)
        self.grant = None
        self._next_at = self._clock() + self.timings.standby_poll
        return []

    # --- internals --------------------------------------------------------------------
    def _step_down(self) -> list[Action]:
        if self.role is not Role.ACTIVE:
            return []
        self._move(Role.STEPPING_DOWN)
        return [Action.CLOSE_SESSIONS]

    def _move(self, new: Role) -> None:
        if new not in _ALLOWED[self.role]:
            raise IllegalTransition(f"lease role {self.role.value} cannot become {new.value}")
        self.role = new
