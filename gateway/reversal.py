"""PROTOCOL §6 durable reversal (冲正): queued in the journal, retried with backoff
across reconnects and restarts until the receiver acknowledges it."""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import records
from .config import Config
from .journal import Journal, Record, Reversal
from .message import parse_message
from .rules import fen_text

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

QUEUED = "QUEUED"
DONE = "DONE"
#: Answers that end a reversal: success, or "already reversed" (§6: receivers
#: treat a reversal of an unknown or failed original as success).
ACKNOWLEDGING = ("0000", "B314")


def reversal_sn(rec: Record) -> str:
    """The gateway's BizSn for reversing ``rec``: stable, so retries are idempotent."""
    digest = hashlib.sha256("|".join(rec.key).encode()).hexdigest()
    return "RV" + digest[:30]


class ReversalQueue:
    """Sends queued reversals on a ready session of the receiver."""

    def __init__(self, config: Config, journal: Journal,
                 session_of: Callable[[str], Session | None]) -> None:
        self.config = config
        self.journal = journal
        self.session_of = session_of

    def enqueue(self, rec: Record, now: float) -> None:
        """Queue the reversal of ``rec`` and mark it REVERSING (one transaction)."""
        self.journal.update_record(rec.key, now,
                                   state=records.transition(rec.state, records.REVERSING))
        self.journal.queue_reversal(Reversal(
            origin=rec.origin, biz_type=rec.biz_type, biz_sn=rec.biz_sn, receiver=rec.receiver,
            reversal_sn=reversal_sn(rec), amount_fen=rec.amount_fen or 0, state=QUEUED,
            attempts=0, next_at=now, last_msg_id=None, result=None))

    def backoff(self, attempts: int) -> float:
        delay = self.config.reversal_retry_initial_seconds * (2 ** max(attempts - 1, 0))
        return float(min(delay, self.config.reversal_retry_max_seconds))

    def send_due(self, now: float, party: str | None = None) -> int:
        """Send every due reversal (or, after a reconnect, all of ``party``'s)."""
        sent = 0
        due = self.journal.reversals_due(float("inf") if party else now)
        for rev in due:
            if party and rev.receiver != party:
                continue
            session = self.session_of(rev.receiver)
            key = (rev.origin, rev.biz_type, rev.biz_sn)
            if session is None:
                self.journal.update_reversal(key, next_at=now + self.backoff(rev.attempts + 1))
                continue
            msg_id = session.send("XFER.REVERSE.REQ", {
                "BizSn": rev.reversal_sn, "OrigType": rev.biz_type, "OrigFrom": rev.origin,
                "OrigBizSn": rev.biz_sn, "Amount": fen_text(rev.amount_fen)}).msg_id
            self.journal.update_reversal(key, attempts=rev.attempts + 1, last_msg_id=msg_id,
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
        reversal at its end).  The latest attempt is found on the queue row; an earlier
        one (also from before a restart) by the XFER.REVERSE.REQ the journal holds under
        that MsgId.  An answer to a reversal already acknowledged changes nothing."""
        rev = self.journal.reversal_by_msg(receiver, ref_id) if ref_id else None
        if rev is None:
            key = self._attempt(receiver, ref_id)
            if key is None:
                return False
            rev = self._queued(key)
            if rev is None:
                log.info("answer %s to an earlier attempt at reversing %s %s from %s: "
                         "already acknowledged, ignored", result, key[1], key[2], key[0])
                return True
        key = (rev.origin, rev.biz_type, rev.biz_sn)
        if rev.state == DONE:
            return True
        if result in ACKNOWLEDGING:
            self.journal.update_reversal(key, state=DONE, result=result)
            rec = self.journal.record(*key)
            self.journal.update_record(key, now, state=records.transition(
                rec.state if rec else "(no record)", records.REVERSED))
            log.info("reversal of %s %s from %s acknowledged (%s): REVERSED", rev.biz_type,
                     rev.biz_sn, rev.origin, result)
        else:
            log.warning("reversal of %s %s refused by %s with %s; will retry", rev.biz_type,
                        rev.biz_sn, receiver, result)
            self.journal.update_reversal(key, result=result,
                                         next_at=now + self.backoff(rev.attempts))
        return True

    def _attempt(self, receiver: str, msg_id: str) -> tuple[str, str, str] | None:
        """The original named by the XFER.REVERSE.REQ we sent ``receiver`` as ``msg_id``."""
        if not msg_id:
            return None
        for row in list(self.journal.messages(msg_id)):
            if (row["direction"], row["party"], row["msg_type"]) != \
                    ("OUT", receiver, "XFER.REVERSE.REQ"):
                continue
            sent = parse_message(bytes(row["xml"]))
            if sent.head.from_party == self.config.party:  # ours, not a relayed one
                return (str(sent.body["OrigFrom"]), str(sent.body["OrigType"]),
                        str(sent.body["OrigBizSn"]))
        return None

    def _queued(self, key: tuple[str, str, str]) -> Reversal | None:
        """The reversal of ``key`` if it still waits for its acknowledgement."""
        return next((r for r in self.journal.reversals_due(float("inf"))
                     if (r.origin, r.biz_type, r.biz_sn) == key), None)

    def recover(self, now: float) -> int:
        """After a restart: relayed, unanswered reversible requests are reversed."""
        from .catalog import REVERSIBLE

        count = 0
        for rec in self.journal.open_records(records.PENDING):
            if rec.biz_type in REVERSIBLE:
                log.warning("%s %s from %s was unanswered at restart: reversing", rec.biz_type,
                            rec.biz_sn, rec.origin)
                self.enqueue(rec, now)
                count += 1
        return count
