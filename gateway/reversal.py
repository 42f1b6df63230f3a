"""PROTOCOL §6 durable reversal (冲正): queued in the journal, retried with backoff
across reconnects and restarts until the receiver acknowledges it."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import records
from .config import Config
from .givebacks import fen_text
from .journal import Journal
from .store import Record, Reversal

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

QUEUED = "QUEUED"
DONE = "DONE"
#: Answers that end a reversal: success, or "already reversed" (§6: receivers
#: treat a reversal of an unknown or failed original as success).
ACKNOWLEDGING = ("0000", "B314")


def reversal_sn(party: str, original: tuple[str, str, str]) -> str:
    """The gateway's BizSn for reversing ``original``: stable, so retries are idempotent,
    and beginning with the gateway's PartyId like every BizSn (§4)."""
    digest = hashlib.sha256("|".join(original).encode()).hexdigest()
    return party + digest[:32 - len(party)]


class ReversalQueue:
    """Sends queued reversals on a ready session of the receiver."""

    def __init__(self, config: Config, journal: Journal,
                 session_of: Callable[[str], Session | None],
                 acknowledged: Callable[[tuple[str, str, str], float], None]) -> None:
        self.config = config
        self.records = journal.store.records
        self.reversals = journal.store.reversals
        self.messages = journal.store.messages
        self.session_of = session_of
        #: told when the receiver acknowledged the reversal of an original
        self.acknowledged = acknowledged

    def enqueue(self, rec: Record, now: float) -> None:
        """Queue the reversal of ``rec`` and mark it REVERSING (one transaction).  An
        original that already has one queued keeps it; one that can no longer become
        REVERSING (a late answer failed it meanwhile) is reversed all the same: §6 has
        receivers acknowledge the reversal of an unknown or failed original."""
        if records.allowed(rec.state, records.REVERSING):
            self.records.update(rec.key, now,
                                       state=records.transition(rec.state, records.REVERSING))
        self.reversals.queue(Reversal(
            origin=rec.origin, biz_type=rec.biz_type, biz_sn=rec.biz_sn, receiver=rec.receiver,
            reversal_sn=reversal_sn(self.config.party, rec.key),
            amount_fen=rec.amount_fen or 0, state=QUEUED, attempts=0, next_at=now,
            last_msg_id=None, result=None, queued_at=now))

    def backoff(self, attempts: int) -> float:
        delay = self.config.reversal_retry_initial_seconds * (2 ** max(attempts - 1, 0))
        return float(min(delay, self.config.reversal_retry_max_seconds))

    def send_due(self, now: float, party: str | None = None) -> int:
        """Send every due reversal (or, after a reconnect, all of ``party``'s)."""
        sent = 0
        due = self.reversals.due(float("inf") if party else now)
        for rev in due:
            if party and rev.receiver != party:
                continue
            session = self.session_of(rev.receiver)
            key = (rev.origin, rev.biz_type, rev.biz_sn)
            if session is None:
                self.reversals.update(key, next_at=now + self.backoff(rev.attempts + 1))
                continue
            msg_id = session.send("XFER.REVERSE.REQ", {
                "BizSn": rev.reversal_sn, "OrigType": rev.biz_type, "OrigFrom": rev.origin,
                "OrigBizSn": rev.biz_sn, "Amount": fen_text(rev.amount_fen)}).msg_id
            self.reversals.attempted(key, rev.receiver, msg_id, now, attempts=rev.attempts + 1,
                                     next_at=now + max(self.config.relay_timeout_seconds,
                                                       self.backoff(rev.attempts + 1)))
            log.info("reversal %s of %s %s from %s sent to %s (attempt %d)", rev.reversal_sn,
                     rev.biz_type, rev.biz_sn, rev.origin, rev.receiver, rev.attempts + 1)
            sent += 1
        return sent

    def answered(self, receiver: str, ref_id: str, result: str, now: float) -> bool:
        """Handle an XFER.REVERSE.RSP; True if it answered one of our reversals.

        Any attempt's answer counts, not only the latest: a receiver slower than the
        retry interval answers an earlier XFER.REVERSE (same BizSn, so the same
        reversal at its end): every attempt is kept (``reversal_attempt``), also across
        restarts.  An answer to a reversal already acknowledged changes nothing."""
        rev = self.reversals.by_attempt(receiver, ref_id) if ref_id else None
        if rev is None:
            return False
        key = (rev.origin, rev.biz_type, rev.biz_sn)
        if rev.state == DONE:
            if rev.last_msg_id != ref_id:
                log.info("answer %s to an earlier attempt at reversing %s %s from %s: "
                         "already acknowledged, ignored", result, key[1], key[2], key[0])
            return True
        if self.messages.count_reversal_answers(receiver, ref_id) > 1:
            # the first answer to an attempt settles it; a second one (a duplicate, or
            # one contradicting the first) is evidence only
            log.warning("a second answer %s to reversal attempt %s of %s %s from %s: "
                        "journaled, ignored", result, ref_id, rev.biz_type, rev.biz_sn,
                        rev.origin)
            return True
        if result in ACKNOWLEDGING:
            self.reversals.update(key, state=DONE, result=result)
            log.info("reversal of %s %s from %s acknowledged (%s): REVERSED", rev.biz_type,
                     rev.biz_sn, rev.origin, result)
            self.acknowledged(key, now)
        else:
            log.warning("reversal of %s %s refused by %s with %s; will retry", rev.biz_type,
                        rev.biz_sn, receiver, result)
            self.reversals.update(key, result=result, next_at=now + self.backoff(rev.attempts))
        return True

    def _queued(self, key: tuple[str, str, str]) -> Reversal | None:
        """The reversal of ``key`` if it still waits for its acknowledgement."""
        rev = self.reversals.of(key)
        return rev if rev is not None and rev.state == QUEUED else None

    def done(self, key: tuple[str, str, str], result: str) -> None:
        """A peer's own reversal of ``key`` was acknowledged: the gateway's need not be
        sent again (receivers apply one reversal per original, §6)."""
        if self._queued(key) is not None:
            self.reversals.update(key, state=DONE, result=result)

    def recover(self, now: float) -> int:
        """After a restart: relayed, unanswered reversible requests are reversed, and so
        are the originals of peers' reversals left unanswered (§6: a peer's reversal that
        times out joins the gateway's durable reversal queue)."""
        from .catalog import REVERSIBLE

        count = 0
        for rec in self.records.open(records.PENDING):
            original = rec
            if rec.biz_type == "XFER.REVERSE":
                found = self.records.get((str(rec.orig_from), str(rec.orig_type),
                                          str(rec.orig_biz_sn)))
                if found is None or found.state == records.REVERSED:
                    continue
                original = found
            elif rec.biz_type not in REVERSIBLE:
                continue
            if self.reversals.of(original.key) is not None:
                continue
            log.warning("%s %s from %s was unanswered at restart: reversing %s %s",
                        rec.biz_type, rec.biz_sn, rec.origin, original.biz_type,
                        original.biz_sn)
            self.enqueue(original, now)
            count += 1
        return count
