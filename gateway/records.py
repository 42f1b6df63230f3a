"""The business record state machine of PROTOCOL §6, written once.

PENDING → SUCCEEDED | FAILED | REVERSING | REVERSED;  REVERSING → REVERSED;
SUCCEEDED → REVERSING | REVERSED.  REVERSING: the gateway's durable reversal of it is queued
(after its own relay timed out, or a peer's reversal of it did); REVERSED: a reversal of it
was acknowledged — a peer's XFER.REVERSE may succeed while the original is still PENDING
(taken out of flight, §6), so PENDING → REVERSED is a move too.
FAILED and REVERSED never change again.  Every handler moves records only through
:func:`transition`, so an impossible move is an error, not a silent overwrite.
"""
from __future__ import annotations

PENDING = "PENDING"
SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
REVERSING = "REVERSING"
REVERSED = "REVERSED"

STATES = (PENDING, SUCCEEDED, FAILED, REVERSING, REVERSED)
FINAL = frozenset({SUCCEEDED, FAILED, REVERSED})  # no answer still awaited

_ALLOWED: dict[str, frozenset[str]] = {
    PENDING: frozenset({SUCCEEDED, FAILED, REVERSING, REVERSED}),
    REVERSING: frozenset({REVERSED}),
    SUCCEEDED: frozenset({REVERSING, REVERSED}),
    FAILED: frozenset(),
    REVERSED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A record was asked to move where the machine does not allow."""


def allowed(current: str, new: str) -> bool:
    """Whether ``current → new`` is a move of the machine."""
    return new in _ALLOWED.get(current, frozenset())


def transition(current: str, new: str) -> str:
    """Return ``new`` if ``current → new`` is legal, else raise."""
    if not allowed(current, new):
        raise IllegalTransition(f"record state {current} cannot become {new}")
    return new


def outcome(result_code: str) -> str:
    """The final state a counterparty's Result leads to."""
    return SUCCEEDED if result_code == "0000" else FAILED
