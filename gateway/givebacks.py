"""PROTOCOL §6 money invariant: what an original moved and what has been given back.

For every original (XFER.IN/OUT, PAY.ORDER, OTC.SUBSCRIBE) what is given back by any
route — a reversal, a refund, a redemption — never exceeds what it moved, counting every
give-back not known to have failed (answered 0000, in flight, timed out or unresolved);
and an original given back by a reversal never ends SUCCEEDED.

This module is the one place that knows it: every give-back is admitted only through
:func:`admit`, which reads the original and everything that names it from the journal
(one indexed query), so the rule holds whatever order requests, answers, timeouts and
restarts come in.  Sans-IO: plain functions over the journal.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import records
from .errors import AlreadyReversed, InvalidAmount, OriginalNotFound
from .journal import Journal, Record

REVERSAL = "XFER.REVERSE"
REFUND = "PAY.REFUND"
REDEMPTION = "OTC.REDEEM"

#: Each give-back type and the originals it may name (§6 table).
GIVES_BACK: dict[str, tuple[str, ...]] = {
    REVERSAL: ("XFER.IN", "XFER.OUT", "PAY.ORDER", "OTC.SUBSCRIBE"),
    REFUND: ("PAY.ORDER",),
    REDEMPTION: ("OTC.SUBSCRIBE",),
}

#: States of the original in which a give-back of each type may be admitted: a reversal
#: may meet an original still in flight (it is taken out of flight, §6); a refund or a
#: redemption needs one that succeeded.
_ADMISSIBLE: dict[str, tuple[str, ...]] = {
    REVERSAL: (records.PENDING, records.SUCCEEDED),
    REFUND: (records.SUCCEEDED,),
    REDEMPTION: (records.SUCCEEDED,),
}


def fen_text(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


@dataclass(frozen=True, slots=True)
class Account:
    """An original and every record that names it: what it moved, what is given back."""

    original: Record
    give_backs: tuple[Record, ...]

    @property
    def moved_fen(self) -> int:
        return self.original.amount_fen or 0

    @property
    def live(self) -> tuple[Record, ...]:
        """Give-backs not known to have failed: answered 0000, in flight, unresolved."""
        return tuple(r for r in self.give_backs if r.state != records.FAILED)

    @property
    def reversed(self) -> bool:
        """Reversed, or being reversed, by the gateway's queue or by a peer's reversal."""
        return self.original.state in (records.REVERSING, records.REVERSED) or any(
            r.biz_type == REVERSAL for r in self.live)

    @property
    def given_fen(self) -> int:
        """What is given back or being given back: all of it once a reversal is live."""
        if self.reversed:
            return self.moved_fen
        return sum(r.amount_fen or 0 for r in self.live)

    @property
    def left_fen(self) -> int:
        return self.moved_fen - self.given_fen

    @property
    def fully_given_back(self) -> bool:
        return self.left_fen <= 0


def account(journal: Journal, original: tuple[str, str, str]) -> Account | None:
    """The account of ``original`` = (From, Type, BizSn), or None if it is unknown."""
    rec = journal.record(*original)
    if rec is None or rec.biz_type not in GIVES_BACK[REVERSAL]:
        return None
    return Account(rec, tuple(journal.give_backs(original)))


@dataclass(frozen=True, slots=True)
class GiveBack:
    """A give-back request as the rules read it."""

    kind: str  # REVERSAL, REFUND or REDEMPTION
    origin: str  # its From
    receiver: str  # its To
    original: tuple[str, str, str]
    amount_fen: int
    wallet_id: str | None = None  # the redemption's CorpWalletId, must be the original's


def names_original(g: GiveBack, orig: Record) -> bool:
    """The original is one these two parties made with each other, as the type needs."""
    if orig.biz_type not in GIVES_BACK[g.kind]:
        return False
    if g.kind == REVERSAL:  # either party may reverse what passed between them
        return {orig.origin, orig.receiver} == {g.origin, g.receiver}
    return (orig.origin, orig.receiver) == (g.origin, g.receiver) and (
        g.wallet_id is None or g.wallet_id == orig.wallet_id)


def admit(journal: Journal, g: GiveBack) -> Account:
    """Admit ``g`` or raise, in the order of §6: B314 (reversed, fully given back, or a
    reversal meeting any earlier give-back), B313 (unknown, or did not succeed), B311
    (a refund or redemption over what is left; a reversal of another amount)."""
    acct = account(journal, g.original)
    otype, osn = g.original[1], g.original[2]
    if acct is None or not names_original(g, acct.original):
        raise OriginalNotFound(f"no {otype} {osn} from {g.original[0]} between these "
                               f"parties ({g.origin}, {g.receiver})")
    _check_not_given_back(g, acct)
    if acct.original.state not in _ADMISSIBLE[g.kind]:
        raise OriginalNotFound(f"{otype} {osn} did not succeed ({acct.original.state})")
    if g.kind == REVERSAL and g.amount_fen != acct.moved_fen:
        raise InvalidAmount(f"reversal amount {fen_text(g.amount_fen)} differs from the "
                            f"original's {fen_text(acct.moved_fen)}")
    if g.kind != REVERSAL and g.amount_fen > acct.left_fen:
        raise InvalidAmount(f"{fen_text(g.amount_fen)} exceeds what is left of {otype} {osn}: "
                            f"{fen_text(acct.left_fen)} of {fen_text(acct.moved_fen)}")
    return acct


def _check_not_given_back(g: GiveBack, acct: Account) -> None:
    otype, osn = g.original[1], g.original[2]
    if acct.reversed:
        state = "reversed" if acct.original.state == records.REVERSED else "being reversed"
        raise AlreadyReversed(f"{otype} {osn} is {state}")
    if acct.fully_given_back:
        raise AlreadyReversed(f"{otype} {osn} is fully given back "
                              f"({fen_text(acct.given_fen)} of {fen_text(acct.moved_fen)})")
    if g.kind == REVERSAL and acct.given_fen:
        kinds = sorted({r.biz_type for r in acct.live})
        raise AlreadyReversed(f"{otype} {osn} is already given back in part "
                              f"({fen_text(acct.given_fen)} by {', '.join(kinds)}): a reversal "
                              "would give it back twice")
