"""Whether this gateway serves peers now: active, or a standby of a pair (PROTOCOL §12).

Sans-IO.  With the embedded SQLite journal there is no pair and no lease: the gateway
is always active (:class:`AlwaysActive`).  With ``[journal] url = "postgresql://…"``
the lease machine of gateway/store_pg/lease.py decides (:class:`LeaseStanding`): only
the holder of the lease accepts logons and dials out; a standby answers LOGON with
S903 (gateway/session.py), dials nobody, and reports 503 on ``/readyz``.
"""
from __future__ import annotations

from typing import Protocol

from .store_pg.lease import LeaseKeeper, Role

ACTIVE, STANDBY = Role.ACTIVE.value, Role.STANDBY.value


class StoreUnavailable(RuntimeError):
    """The shared store of a pair cannot be reached or prepared: ``serve`` exits 1 with
    this one line (it says what to check)."""


class Standing(Protocol):
    @property
    def accepts_logons(self) -> bool:
        """Take logons, dial out, relay, time out, reverse: only while active."""

    @property
    def name(self) -> str:
        """``active``, ``standby`` or ``stepping-down`` (status, metrics, logs)."""

    @property
    def epoch(self) -> int | None:
        """The lease epoch held (None: no lease held, or no lease at all)."""

    @property
    def lease(self) -> bool:
        """Whether a lease decides (a PostgreSQL url) or the gateway is alone."""


class AlwaysActive:
    """The SQLite journal: one gateway, no lease, always active."""

    accepts_logons = True
    name = ACTIVE
    epoch: int | None = None
    lease = False


class LeaseStanding:
    """The lease machine's view (PROTOCOL §12): active while it holds the lease."""

    lease = True

    def __init__(self, keeper: LeaseKeeper) -> None:
        self.keeper = keeper

    @property
    def accepts_logons(self) -> bool:
        return self.keeper.accepts_logons

    @property
    def name(self) -> str:
        return self.keeper.role.value

    @property
    def epoch(self) -> int | None:
        grant = self.keeper.grant
        return grant.epoch if grant is not None else None
