"""PROTOCOL §11 suspensions: business suspended with a party, or with every party.

With a party suspended, a request that brings new business with it (it originates it or
receives it) is refused with ``B340``; what lets clients leave still flows.  The
suspensions live in the journal (table ``suspension``, schema 4; ``*`` stands for every
party) and, for the relay's check on every request, in memory: only this object writes
them, so the two never differ.  A write joins the journal's open transaction; the caller
acknowledges once it is committed.

Operator-facing choices (docs/operations.md "Suspend and resume"):

- ``suspend`` without a party adds the every-party suspension; parties' own ones stay;
- ``resume`` without a party lifts every suspension, the every-party one and each
  party's;
- ``resume P`` while every party is suspended turns the every-party suspension into one
  per registered party other than P (same reason, same since): P is resumed, the others
  stay suspended, one by one, until each is resumed; a party registered later is not
  suspended by it.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .bookdate import CHINA
from .errors import Suspended
from .journal import Journal

log = logging.getLogger(__name__)

#: The party column of the every-party suspension.
EVERY = "*"
#: The §11 types that bring new business: refused with B340 while a party is suspended.
NEW_BUSINESS = frozenset({"CTS.SIGN", "XFER.IN", "PAY.ORDER", "OTC.SUBSCRIBE"})
#: Longest reason kept (it goes into logs, the page and B340's ResultText).
MAX_REASON = 200
_PARTY = re.compile(r"[A-Z0-9]{2,12}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SuspensionError(ValueError):
    """A suspend or resume that cannot be done, in one line (the ops API's 400)."""


@dataclass(frozen=True, slots=True)
class Suspension:
    party: str  #: a PartyId, or EVERY
    reason: str
    since: float

    @property
    def every_party(self) -> bool:
        return self.party == EVERY

    def as_dict(self) -> dict[str, Any]:
        """For the ops API: ``party`` null for the every-party suspension."""
        return {"party": None if self.every_party else self.party,
                "every_party": self.every_party, "reason": self.reason,
                "since": dt.datetime.fromtimestamp(self.since, CHINA).isoformat(
                    timespec="seconds")}

    def describe(self) -> str:
        who = "every party" if self.every_party else self.party
        when = dt.datetime.fromtimestamp(self.since, CHINA).isoformat(timespec="seconds")
        return f"{who} since {when}" + (f" ({self.reason})" if self.reason else "")


@dataclass(frozen=True, slots=True)
class Change:
    """What a suspend or resume did: the suspensions now, and one line saying it."""

    suspensions: list[Suspension]
    changed: bool
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "text": self.text,
                "suspensions": [s.as_dict() for s in self.suspensions]}


def check_reason(reason: object) -> str:
    if reason is None:
        return ""
    if not isinstance(reason, str):
        raise SuspensionError("reason must be a string")
    reason = reason.strip()
    if len(reason) > MAX_REASON or _CONTROL.search(reason):
        raise SuspensionError(f"reason must be one line of at most {MAX_REASON} characters")
    return reason


def check_party(party: object) -> str | None:
    if party is None:
        return None
    if not isinstance(party, str) or not _PARTY.fullmatch(party):
        raise SuspensionError("party must be a PartyId ([A-Z0-9]{2,12})")
    return party


class Suspensions:
    """The suspensions of one gateway: checked on each request, changed by the ops API."""

    def __init__(self, journal: Journal, clock: Callable[[], float],
                 parties: Callable[[], Iterable[str]]) -> None:
        """``parties``: the registered banks and brokers (for ``resume P`` while every
        party is suspended)."""
        self.journal = journal
        self.clock = clock
        self.parties = parties
        self._by_party: dict[str, Suspension] = {}
        self.reload()

    def reload(self) -> None:
        """Read the suspensions from the journal (at start, and when a standby of a pair
        takes over: the other gateway may have changed them, §12)."""
        self._by_party = {party: Suspension(party, reason, since)
                          for party, reason, since in self.journal.suspensions()}
        if self._by_party:
            log.warning("business suspended (kept from before the restart): %s; "
                        "`gateway resume` lifts it", self.summary())

    # --- the relay's check ---------------------------------------------------------
    def check(self, biz_type: str, origin: str, receiver: str) -> None:
        """B340 if ``biz_type`` brings new business between ``origin`` and ``receiver``
        and either is suspended (PROTOCOL §11)."""
        if not self._by_party or biz_type not in NEW_BUSINESS:
            return
        found = self.of(receiver) or self.of(origin)
        if found is not None:
            who = "every party" if found.every_party else found.party
            raise Suspended(f"new business with {who} is suspended"
                            + (f": {found.reason}" if found.reason else "")
                            + "; unsigning, withdrawals, reversals, refunds and "
                              "redemptions still flow")

    def of(self, party: str) -> Suspension | None:
        """The suspension that holds ``party`` (its own first), if any."""
        return self._by_party.get(party) or self._by_party.get(EVERY)

    # --- reading -------------------------------------------------------------------
    def current(self) -> list[Suspension]:
        """Every suspension, the every-party one first."""
        return sorted(self._by_party.values(), key=lambda s: (not s.every_party, s.party))

    def suspended_parties(self, parties: Iterable[str]) -> list[str]:
        """Those of ``parties`` that are suspended now."""
        return sorted(p for p in parties if self.of(p) is not None)

    def summary(self) -> str:
        return "; ".join(s.describe() for s in self.current()) or "none"

    # --- changes (journal writes: the caller answers after the commit) -----------------
    def suspend(self, party: str | None, reason: str = "") -> Change:
        """Suspend new business with ``party`` (None: every party); suspending again
        replaces the reason and keeps the first since."""
        key = EVERY if party is None else party
        if party is not None and party not in set(self.parties()):
            raise SuspensionError(f"{party} is not a registered party (`gateway peer list`)")
        old = self._by_party.get(key)
        since = old.since if old is not None else self.clock()
        new = Suspension(key, reason, since)
        if old == new:
            return Change(self.current(), False, f"already suspended: {new.describe()}")
        self._put(new)
        log.warning("business suspended with %s%s", "every party" if party is None else party,
                    f": {reason}" if reason else "")
        return Change(self.current(), True, f"suspended: {new.describe()}")

    def resume(self, party: str | None) -> Change:
        """Lift ``party``'s suspension (None: every suspension); see the module text for
        a party resumed while every party is suspended."""
        if party is None:
            if not self._by_party:
                return Change([], False, "nothing was suspended")
            lifted = self.summary()
            self.journal.delete_suspensions()
            self._by_party.clear()
            log.warning("business resumed with every party (lifted: %s)", lifted)
            return Change([], True, f"resumed: every suspension lifted ({lifted})")
        every = self._by_party.get(EVERY)
        own = self._by_party.get(party)
        if every is None and own is None:
            return Change(self.current(), False, f"{party} was not suspended")
        if own is not None:
            self.journal.delete_suspensions(party)
            del self._by_party[party]
        if every is not None:  # the others stay suspended, each by a row of its own
            self.journal.delete_suspensions(EVERY)
            del self._by_party[EVERY]
            for other in sorted(set(self.parties()) - {party} - set(self._by_party)):
                self._put(Suspension(other, every.reason, every.since))
        log.warning("business resumed with %s%s", party,
                    f"; still suspended: {self.summary()}" if self._by_party else "")
        return Change(self.current(), True, f"resumed: {party}"
                      + (f"; still suspended: {self.summary()}" if self._by_party else ""))

    def _put(self, suspension: Suspension) -> None:
        self.journal.put_suspension(suspension.party, suspension.reason, suspension.since)
        self._by_party[suspension.party] = suspension
