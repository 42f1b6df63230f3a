"""One gateway's side of an active/standby pair on PostgreSQL (PROTOCOL §12): the edge
that ``gateway serve`` builds when ``[journal] url`` is ``postgresql://…``.

:func:`open_pair` migrates the database's schema (once for the pair: an advisory lock),
starts the lease connection's :class:`TurnCommitter` and the :class:`LeaseDriver` that
runs the sans-IO lease machine on the reactor clock.  The service hears
``became_active(grant)`` (accept logons, dial out) and ``close_sessions()`` (cut every
session, stop dialling; the machine is standby after it); the view the gateway asks
(``accepts_logons``, the role and epoch) is :class:`gateway.standing.LeaseStanding`
over :attr:`LeasePair.keeper`.

The lease is taken on the database named by the url; the journal (gateway/store_pg/
store.py) and the peer registry (registrystore.py) are in the same database, so a
standby that takes over reads what the active journaled.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from ..standing import StoreUnavailable
from .committer import TurnCommitter
from .lease import Grant, LeaseKeeper, LeaseTimings
from .leasedb import bound_statements, holder_id
from .leasedriver import LeaseDriver
from .schema import migrate

log = logging.getLogger(__name__)

#: ``[journal] statement_timeout_seconds``' default (gateway/config.py).
STATEMENT_TIMEOUT = 10.0


class PairUnavailable(StoreUnavailable):
    """The PostgreSQL database cannot be reached or migrated: ``serve`` exits 1."""


@dataclass
class LeasePair:
    keeper: LeaseKeeper
    driver: LeaseDriver
    committer: TurnCommitter
    holder: str

    def start(self) -> None:
        self.driver.start()

    def check(self) -> None:
        """The step-down rule now: called before a turn acts on what it read and before
        the timers' work, so a gateway that was stopped (SIGSTOP, a long pause) past
        half of ``failover_seconds`` cuts its sessions before it handles anything."""
        self.driver.check()

    def fenced(self) -> None:
        """A journal commit was refused by the fence: step down at once."""
        self.driver.fenced()

    def stop(self) -> Any:
        """Release the lease if held (a standby takes it at its next poll), then close
        the lease connection; a Deferred that fires when both are done."""
        d = self.driver.stop()
        d.addErrback(lambda f: log.warning("releasing the lease failed: %s",
                                           f.getErrorMessage()))
        d.addBoth(lambda _: self.committer.close())
        return d


def open_pair(url: str, failover_seconds: float, reactor: Any,
              became_active: Callable[[Grant], object],
              close_sessions: Callable[[], object],
              statement_timeout: float = STATEMENT_TIMEOUT) -> LeasePair:
    """Connect (migrating the schema once for the pair) and build the lease loop; it
    starts with :meth:`LeasePair.start`.  PairUnavailable says what failed and what
    to do.  The lease connection's statements end after ``statement_timeout`` seconds
    (:func:`bound_statements`): a renewal or the release at a stop never hangs."""
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            migrate(conn)
    except (psycopg.Error, ValueError) as exc:
        raise PairUnavailable(f"[journal] url: PostgreSQL at {_safe(url)}: {exc}".strip()
                              + " (check the url, that the server runs, and the user's"
                              " rights to create tables)") from None
    holder = holder_id()

    def connect() -> psycopg.Connection[Any]:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
        bound_statements(conn, statement_timeout)
        return conn

    committer = TurnCommitter(connect, reactor.callFromThread, pipelined=False)
    keeper = LeaseKeeper(LeaseTimings.from_failover(failover_seconds), reactor.seconds)
    driver = LeaseDriver(reactor, keeper, committer, holder, became_active, close_sessions)
    log.info("PostgreSQL lease at %s as %s: standby until the lease is ours"
             " (failover_seconds %g)", _safe(url), holder, failover_seconds)
    return LeasePair(keeper, driver, committer, holder)


def _safe(url: str) -> str:
    """The url without its password, for logs and messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}@{host}"
