"""``gateway sim broker --exit``: the reference broker's business exit (PROTOCOL §11).

For every client of the broker's ledger with an ACTIVE agreement (asked from the
gateway's registry, CTS.QUERY), one after the other: the fund account's available
balance goes back to the client's wallet (XFER.OUT; the money is held first, as for
any XFER.OUT), then the agreement is unsigned (CTS.UNSIGN).  Both still flow while the
bank is suspended (§11).

How it learns the exit report (docs/simulators.md, "Business exit"): with
``--exit-report FILE`` (the JSON of ``gateway exit-report --json``, made by the
gateway's operator) only the agreements the report lists as ready, or blocked by
nothing but funds (which this run returns), are unsigned; each one blocked by anything
else is left, with the report's reasons.  Without it, the broker's own ledger and the
gateway's answers decide: funds are returned, the unsign is sent, and a refusal (B304
with the gateway's reason) is reported.  Anything not unsigned makes the run fail.
"""
from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from ..rules import fen_text

#: Blocker kinds the broker's exit clears itself (the funds it returns).
CLEARED_BY_EXIT = frozenset({"funds"})


@dataclass
class ExitTally:
    """What the exit did: agreements unsigned, and each one not, with why."""

    unsigned: list[str] = field(default_factory=list)
    returned_fen: int = 0
    not_unsigned: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.not_unsigned


def plan(report: Mapping[str, Any] | None, party: str,
         active: Mapping[str, str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Which of ``active`` (AgreementNo → FundAcct, the broker's clients with an ACTIVE
    agreement) to exit, and which to leave (AgreementNo, why), by the exit report (None:
    every one)."""
    if report is None:
        return dict(active), []
    listed = {str(a.get("agreement_no")): a for a in report.get("agreements", [])
              if a.get("broker") == party}
    go: dict[str, str] = {}
    left: list[tuple[str, str]] = []
    for number, fund in active.items():
        entry = listed.get(number)
        if entry is None:
            left.append((number, "not in the exit report (signed after it was made?): run "
                                 "`gateway exit-report --json` again"))
            continue
        others = [b for b in entry.get("blockers", []) if b.get("kind") not in CLEARED_BY_EXIT]
        if others:
            left.append((number, "the exit report says: "
                         + "; ".join(str(b.get("text")) for b in others)))
        else:
            go[number] = fund
    return go, left


@defer.inlineCallbacks
def run_exit(originator: Any, report: Mapping[str, Any] | None,
             say: Callable[[str], None]) -> Generator[Any, Any, ExitTally]:
    """Return every exiting client's funds and unsign its agreement; one line each."""
    tally = ExitTally()
    book = originator.book
    active: dict[str, str] = {}
    for client in book.clients():
        number = yield originator.agreement_of(client.id)
        if number:
            active[str(number)] = client.id
    go, left = plan(report, originator.party, active)
    for number, why in left:
        tally.not_unsigned.append((number, why))
        say(f"exit: {number}: left: {why}")
    for number, fund in go.items():
        why = yield _exit_one(originator, fund, number, tally, say)
        if why is None:
            tally.unsigned.append(number)
        else:
            tally.not_unsigned.append((number, why))
    return tally


@defer.inlineCallbacks
def _exit_one(originator: Any, fund: str, number: str, tally: ExitTally,
              say: Callable[[str], None]) -> Generator[Any, Any, str | None]:
    """One client: its funds out, then the unsign; None when unsigned, else why not."""
    book = originator.book
    shown = "*" * (len(fund) - 4) + fund[-4:]
    fen = book.balance(fund)
    if fen < 0:
        why = f"the fund account {shown} is overdrawn ({fen_text(-fen)}): settle it first"
        say(f"exit: {number}: NOT unsigned: {why}")
        return why
    if fen > 0:
        reply = yield originator.transfer("XFER.OUT", fund, fen_text(fen))
        if reply.result != "0000":
            why = (f"returning {fen_text(fen)} (XFER.OUT) got {reply.shown} {reply.text}"
                   + ("; run --exit again once its reversal is final"
                      if reply.result == "B330" else ""))
            say(f"exit: {number}: NOT unsigned: {why}")
            return why
        tally.returned_fen += fen
        say(f"exit: {number}: fund {shown}: {fen_text(fen)} returned to the wallet (XFER.OUT "
            "0000)")
    reply = yield originator.unsign(fund)
    if reply.result != "0000":
        why = f"CTS.UNSIGN got {reply.shown} {reply.text}"
        say(f"exit: {number}: NOT unsigned: {why}")
        return why
    say(f"exit: {number}: fund {shown}: unsigned (CTS.UNSIGN 0000)")
    return None
