"""PROTOCOL §1/§6 verifying relay: routing, idempotency, in-flight limits, timeouts.

:class:`Gateway` owns the sessions (it is their :class:`SessionOwner`), routes
verified business requests to a ready session of the addressed party, journals
each as a business record (the idempotency index), relays answers back and
answers repeats from the journal.  Sans-IO: time comes from an injected clock,
and the edge calls :meth:`Gateway.tick` and :meth:`Gateway.flush`.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import catalog, records
from .alertrules import Monitor
from .alerts import Alerts
from .bizsn import check_owner
from .bookdate import CHINA, Calendar
from .config import Config
from .errors import (
    AlreadyReversed,
    BizSnReused,
    BusinessError,
    Busy,
    CounterpartyNotConnected,
    GatewayError,
    OutcomeUnknown,
    OutsideBusinessHours,
    RejectedByCounterparty,
    SchemaInvalid,
    SystemError_,
    TimedOutReversing,
    TypeNotAllowed,
    UnknownSigner,
)
from .fieldcrypto import StorageCipher, decrypt_field
from .journal import Journal, Record
from .keystore import KeyStore, Peer
from .message import Message, parse_message, replace_texts
from .node import Node
from .queries import cts_query, xfer_query
from .retention import Retention
from .reversal import ReversalQueue
from .rules import Repeat, Rules, Settlement
from .session import Session
from .standing import AlwaysActive, Standing
from .suspension import Suspensions
from .verification import Verified

log = logging.getLogger(__name__)

@dataclass
class Pending:
    """A request relayed and not yet answered."""

    origin: Session
    origin_msg_id: str
    record_key: tuple[str, str, str]
    receiver: str
    deadline: float
    record: Record  # as journaled PENDING (only an answer or the timeout changes it)
    waiters: list[tuple[Session, str]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        """Its key in :attr:`Gateway.pending`: (receiver, originator, MsgId relayed)."""
        return (self.receiver, self.record.origin, self.origin_msg_id)

    def answer_to(self) -> list[tuple[Session, str]]:
        """Who waits for its answer: the originator, then any repeats of it."""
        return [(self.origin, self.origin_msg_id), *self.waiters]


def content_hash(message: Message, plaintexts: Mapping[str, str]) -> str:
    """Hash of what a request asks for: To + body fields, encrypted ones in plaintext."""
    h = hashlib.sha256(message.head.to_party.encode())
    for name, value in message.body.items():
        h.update(b"\x00" + name.encode() + b"=" + str(plaintexts.get(name, value)).encode())
    return h.hexdigest()


class Gateway(Node):
    """The relay core and session owner."""

    def __init__(self, config: Config, keystore: KeyStore, journal: Journal,
                 clock: Callable[[], float],
                 random_bytes: Callable[[int], bytes] = os.urandom, *,
                 recover: bool = True) -> None:
        """``recover``: queue the reversals left by a restart now (a gateway alone); a
        member of a pair (§12) does it in :meth:`take_over`, when the lease is its own —
        a standby must not act on the active's requests in flight."""
        super().__init__(config, journal, keystore.signer(), clock, random_bytes)
        self.keystore = keystore
        self.sessions: list[Session] = []
        self._ready: dict[str, list[Session]] = {}
        self._rr: dict[str, int] = {}
        #: Relayed, unanswered requests by (receiver, originator, MsgId): a MsgId is
        #: unique per From only (§4), so two originators may use the same one.
        self.pending: dict[tuple[str, str, str], Pending] = {}
        self._pending_by_record: dict[tuple[str, str, str], Pending] = {}
        #: Originals in flight that a peer's reversal took out of flight (§6): their
        #: answer is journaled, not relayed; the originator gets B314 if it succeeds.
        self._taken_out: dict[tuple[str, str, str], Pending] = {}
        self.calendar = Calendar(config.holidays)
        self.alerts = Alerts(journal, clock)
        self.rules = Rules(journal, self.calendar, StorageCipher(keystore.storage_key()),
                           lambda: self.local_now().date(), self.alerts)
        #: §10 thresholds (configured from [alerts] by the server)
        self.monitor = Monitor(self.alerts, journal, self.trade_date)
        self.reversals = ReversalQueue(config, journal, self.ready_session,
                                       self._reversal_acknowledged)
        #: §11: business suspended with a party (or every party), from the journal
        self.suspensions = Suspensions(journal, self.now,
                                       lambda: [p.party for p in keystore.peers()])
        self._next_purge = self.now()
        #: §11 ``[journal] retention_days``: evidence of long-final records moves out
        self.retention = (Retention(config.journal, journal, config.party)
                          if config.journal.retention_days > 0 else None)
        #: Relayed, unanswered requests a session may have; 0 while draining, so the
        #: one comparison the relay makes anyway also refuses new work then (S902).
        self._inflight_limit = config.max_inflight_per_session
        self.draining = False
        #: Told each relayed round trip's seconds, from relaying to its answer (§10).
        self.on_round_trip: Callable[[float], None] | None = None
        #: Active, or a standby of a pair (§12); the edge sets a lease's view.
        self.standing: Standing = AlwaysActive()
        if recover:
            self._recover("before the restart")

    def _recover(self, when: str) -> int:
        recovered = self.reversals.recover(self.now())
        if recovered:
            log.warning("%d unanswered request(s) from %s queued for reversal",
                        recovered, when)
        return recovered

    def take_over(self) -> int:
        """§12: this gateway of a pair now holds the lease.  What the other one left in
        the shared journal is read again: the suspensions, and its relayed requests still
        unanswered — they time out into reversal as after a crash (§6: their originators
        learn B330 when they repeat).  Returns how many were queued for reversal."""
        self.suspensions.reload()
        return self._recover("the previous active gateway")

    def msg_id_lane(self) -> int | None:
        """§12: the two gateways of a pair sign as one party, so their MsgIds must
        differ whatever their clocks say (a skewed clock repeats the other's
        milliseconds): the active at lease epoch e numbers in lane 1 + e % 99 — the one
        before it, at e - 1, in another — and a standby (its S903s) in lane 0.  Alone
        (no lease) the whole counter is this process's."""
        if not self.standing.lease:
            return None
        epoch = self.standing.epoch
        return 0 if epoch is None or not self.standing.accepts_logons else 1 + epoch % 99

    # --- SessionOwner -----------------------------------------------------------
    @property
    def accepts_logons(self) -> bool:
        return self.standing.accepts_logons

    def stand_by(self, why: str) -> int:
        """§12: the lease is not ours (any more).  Every session is cut now — nothing
        queued for it leaves, not even after a commit — and the requests in flight are
        forgotten here: the active gateway of the pair times them out from the shared
        journal (B330 and reversal, §6).  Returns the number of sessions cut."""
        sessions = list(self.sessions)
        for session in sessions:
            session.cut(why)
        dropped = len(self.pending) + len(self._taken_out)
        self.pending.clear()
        self._pending_by_record.clear()
        self._taken_out.clear()
        if dropped:
            log.warning("standing by: %d request(s) in flight left to the active gateway",
                        dropped)
        return len(sessions)

    def find_peer(self, party: str) -> Peer | None:
        return self.keystore.peer(party)

    def add_session(self, session: Session) -> None:
        self.sessions.append(session)

    def session_ready(self, session: Session) -> None:
        assert session.party is not None
        self._ready.setdefault(session.party, []).append(session)
        self.reversals.send_due(self.now(), party=session.party)

    def session_closed(self, session: Session) -> None:
        if session in self.sessions:
            self.sessions.remove(session)
        if session.party and session in self._ready.get(session.party, []):
            self._ready[session.party].remove(session)

    def ready_session(self, party: str) -> Session | None:
        """A ready session of ``party``, round-robin."""
        live = [s for s in self._ready.get(party, []) if s.ready]
        if not live:
            return None
        i = self._rr.get(party, 0) % len(live)
        self._rr[party] = i + 1
        return live[i]

    def start_draining(self) -> None:
        """Shutting down: requests that would be relayed get S902 from now on; those in
        flight are still answered, or time out (B330 and a queued reversal)."""
        self.draining = True
        self._inflight_limit = 0
        log.info("draining: new requests to relay are refused with S902")

    def _busy(self, session: Session) -> Busy:
        if self.draining:
            return Busy("the gateway is shutting down; send it again after the restart")
        return Busy(f"{session.inflight} requests in flight on this session")

    # --- inbound business messages ----------------------------------------------
    def business_message(self, session: Session, verified: Verified) -> None:
        """One verified business message; its journal writes are one savepoint, so a
        message that fails half-way leaves nothing behind (the frames it queued are
        dropped with them)."""
        message = verified.message
        if message.kind.is_response:
            with self.journal.savepoint():
                self._on_response(session, message)
            return
        try:
            with self.journal.savepoint():
                self._on_request(session, verified)
        except (BusinessError, SystemError_) as exc:
            log.info("refused %s %s from %s: %s %s", message.type, message.head.msg_id,
                     session.party, exc.code, exc.text)
            self.answer(session, message, {"Result": exc.code, "ResultText": exc.text})

    def _destination(self, session: Session, message: Message) -> Peer | None:
        """Check §6 routing; None when the request is for the gateway itself."""
        kind, head = message.kind, message.head
        route = kind.route
        assert route is not None and session.peer is not None
        if session.peer.role not in route.origins:
            raise TypeNotAllowed(f"{kind.business} may not be sent by a {session.peer.role}",
                                 ref_msg_id=head.msg_id)
        if route.to == catalog.TO_GATEWAY:
            if head.to_party != self.config.party:
                raise TypeNotAllowed(f"{kind.business} is answered by the gateway "
                                     f"{self.config.party}", ref_msg_id=head.msg_id)
            return None
        dest = self.find_peer(head.to_party)
        if dest is None:
            if head.to_party == self.config.party:  # a relayed type sent to the relay itself
                raise TypeNotAllowed(f"{kind.business} is relayed to a bank or broker; "
                                     f"the gateway {self.config.party} does not answer it",
                                     ref_msg_id=head.msg_id)
            raise UnknownSigner(f"unknown party {head.to_party}", ref_msg_id=head.msg_id)
        want = route.to if route.to != catalog.TO_OTHER else (
            catalog.BANK if session.peer.role == catalog.BROKER else catalog.BROKER)
        if dest.role != want:
            raise TypeNotAllowed(f"{kind.business} goes to a {want}, {dest.party} is a "
                                 f"{dest.role}", ref_msg_id=head.msg_id)
        return dest

    def _plaintexts(self, verified: Verified) -> dict[str, str]:
        message = verified.message
        names = catalog.ENCRYPTED_FIELDS.get(catalog.BODY_BY_TYPE[message.type], ())
        present = [n for n in names if isinstance(message.body.get(n), str)]
        if not present:
            return {}
        assert verified.keys is not None
        out: dict[str, str] = {}
        for name in present:
            try:
                out[name] = decrypt_field(verified.keys.data_key, message.head.msg_id, name,
                                          str(message.body[name]))
            except GatewayError as exc:
                exc.ref_msg_id = message.head.msg_id
                raise
        return out

    def _on_request(self, session: Session, verified: Verified) -> None:
        message = verified.message
        dest = self._destination(session, message)
        check_owner(message)  # E111 unless a record-creating BizSn begins with From (§4)
        plaintexts = self._plaintexts(verified)
        assert session.party is not None
        if dest is None:
            self._answer_locally(session, message)
            return
        biz_type, biz_sn = message.kind.business, str(message.body["BizSn"])
        key = (session.party, biz_type, biz_sn)
        digest = content_hash(message, plaintexts)
        self.journal.read_ahead(self.reads_ahead(session, message))
        existing = self.journal.record(*key)
        if existing is not None:
            self._on_repeat(session, message, existing, digest, plaintexts)
            return
        day = self._trade_date_of(message)
        base: dict[str, Any] = {"origin": session.party, "biz_type": biz_type, "biz_sn": biz_sn,
                "receiver": dest.party, "msg_id": message.head.msg_id, "content_hash": digest,
                "state": records.PENDING, "trade_date": day}
        try:  # the rest of §6 idempotency: a BizSn once per trade date and file family
            self.rules.check_file_unique(session.party, message, day)
        except BusinessError as exc:
            self._refuse_recorded(session, message, base, exc)
            return
        # §11: after verification, the trade date and idempotency, before the other
        # rules; B340 is not journaled (like B320): the same request may come again
        # after a resume (docs/protocol.md "Suspension (§11)")
        self.suspensions.check(biz_type, session.party, dest.party)
        if session.inflight >= self._inflight_limit:
            raise self._busy(session)
        target = self.ready_session(dest.party)
        if target is None:
            raise CounterpartyNotConnected(f"{dest.party} has no ready session")
        try:
            admitted = self.rules.admit(session.party, message, plaintexts)
        except BusinessError as exc:  # refused: journaled FAILED, so a repeat gets the same
            self._refuse_recorded(session, message, base, exc)
            return
        if isinstance(admitted, Repeat):
            self.answer(session, message, admitted.body)
            return
        now = self.now()
        record = Record(**base, **admitted)
        self.journal.insert_record(record, now)
        if biz_type == "XFER.REVERSE":
            self._take_out_of_flight(_original_of(record))
        pending = Pending(session, message.head.msg_id, key, dest.party,
                          now + self.config.relay_timeout_seconds, record)
        self._in_flight(pending)
        target.relay_xml(message.xml, message.type, message.head.msg_id, None, plaintexts)

    def reads_ahead(self, session: Session, message: Message
                    ) -> list[tuple[str, tuple[Any, ...]]]:
        """What :meth:`_on_request` will read of the journal for ``message`` (a
        request of a logged-on ``session``; nothing for anything else): the record
        under its key, and the probes of its type's rules (a store over the network
        fetches a turn's worth in one round trip: gateway.session.receive_reads)."""
        kind = message.kind
        if session.party is None or kind.is_sys or kind.is_response or kind.route is None \
                or "BizSn" not in message.body:
            return []
        key = (session.party, kind.business, str(message.body["BizSn"]))
        reads: list[tuple[str, tuple[Any, ...]]] = [("record", (key,))]
        try:
            reads += self.rules.reads_ahead(session.party, message,
                                            self._trade_date_of(message))
        except GatewayError:
            pass  # B320 comes in its turn, after the repeat check
        return reads

    def _trade_date_of(self, message: Message) -> str:
        """§4: the gateway's trade date is the Asia/Shanghai calendar date, the previous
        one still accepted for ``max_skew_seconds`` after midnight; a new request of any
        other date is B320 (not journaled: the same request with the right date is not a
        repeat).  The record is kept under the date it carries, one of those two."""
        now = self.local_now()
        today = now.date()
        sent = message.head.trade_date
        if sent is None or sent == today.isoformat():
            return today.isoformat()
        midnight = dt.datetime.combine(today, dt.time(), CHINA)
        yesterday = (today - dt.timedelta(days=1)).isoformat()
        if sent == yesterday and (now - midnight).total_seconds() < self.config.max_skew_seconds:
            return sent
        raise OutsideBusinessHours(f"TradeDate {sent} is not the gateway's trade date "
                                   f"{today.isoformat()}")

    def _in_flight(self, pending: Pending) -> None:
        """Put a relayed request in flight: answered, refused or timed out later."""
        self.pending[pending.key] = pending
        self._pending_by_record[pending.record_key] = pending
        pending.origin.inflight += 1

    def _take_out_of_flight(self, original: tuple[str, str, str]) -> None:
        """A peer's reversal of an original still in flight was admitted: its answer will
        be journaled, not relayed (§6); its originator hears when the reversal settles."""
        pending = self._pending_by_record.get(original)
        if pending is None:
            return
        self._release(pending.key)
        self._taken_out[original] = pending
        log.info("%s %s from %s taken out of flight: a reversal of it is relayed",
                 original[1], original[2], original[0])

    def _refuse_recorded(self, session: Session, message: Message, base: dict[str, Any],
                         exc: BusinessError) -> None:
        """A rule refused the request: answer, and journal it FAILED with that answer
        (``base``: the record's fields as the request gave them)."""
        log.info("refused %s %s from %s: %s %s", message.type, base["biz_sn"], session.party,
                 exc.code, exc.text)
        xml = self.answer(session, message, {"Result": exc.code, "ResultText": exc.text})
        # Never relayed: the gateway itself is the party that answered it, so the
        # counterparty's end-of-day file rightly does not list it.
        self.journal.insert_record(Record(**{
            **base, "receiver": self.config.party,
            "state": records.transition(base["state"], records.FAILED),  # born PENDING, refused
            "result": exc.code, "response_xml": xml}), self.now())

    def _on_repeat(self, session: Session, message: Message, existing: Record,
                   digest: str, plaintexts: Mapping[str, str]) -> None:
        if existing.content_hash != digest:
            raise BizSnReused(f"BizSn {existing.biz_sn} was used for a different request")
        log.info("repeat of %s %s from %s: not relayed again", existing.biz_type,
                 existing.biz_sn, session.party)
        # first what is still awaited: an original taken out of flight may already hold
        # its late answer, which is journaled, never relayed (§6)
        waiting = (self._pending_by_record.get(existing.key)
                   or self._taken_out.get(existing.key))
        if waiting is not None:
            waiting.waiters.append((session, message.head.msg_id))
        elif existing.response_xml is not None and existing.state != records.REVERSING:
            original = parse_message(existing.response_xml)
            self._send_response(session, original.type, message.head.msg_id, original.body)
        elif existing.biz_type == "XFER.REVERSE":
            self.answer(session, message, self._reversal_status(existing))
        elif existing.state in (records.REVERSING, records.REVERSED) and \
                self.journal.reversal_of(existing.key) is not None:  # the gateway's own
            self.answer(session, message, {"Result": TimedOutReversing.code,
                                           "ResultText": f"timed out; {existing.state}"})
        elif existing.state == records.REVERSED:  # by a peer's reversal, never answered
            self.answer(session, message, self._reversed_answer(existing))
        elif existing.state == records.PENDING and existing.biz_type not in catalog.REVERSIBLE:
            self._ask_again(session, message, existing, plaintexts)
        else:  # a reversible original unanswered and not (yet) queued: cannot last a tick
            self.answer(session, message, {"Result": OutcomeUnknown.code,
                                           "ResultText": f"{existing.biz_type} "
                                                         f"{existing.biz_sn} is "
                                                         f"{existing.state}; ask again"})

    def _reversal_status(self, rev: Record) -> dict[str, Any]:
        """The answer to a repeat of a peer's reversal that has no stored answer: it timed
        out into the gateway's durable queue, and may since have been acknowledged."""
        if rev.state == records.SUCCEEDED:
            return {"Result": "0000", "ResultText": f"{rev.orig_type} {rev.orig_biz_sn} is "
                                                    "reversed (acknowledged to the gateway)"}
        return {"Result": TimedOutReversing.code,
                "ResultText": f"timed out; the gateway is reversing {rev.orig_type} "
                              f"{rev.orig_biz_sn}"}

    @staticmethod
    def _reversed_answer(rec: Record) -> dict[str, Any]:
        """§6: the originator of an original a peer's reversal took out of flight gets
        B314 as the original's answer."""
        return {"Result": AlreadyReversed.code,
                "ResultText": f"{rec.biz_type} {rec.biz_sn} was reversed before its answer "
                              "came; nothing is booked", "BizSn": rec.biz_sn}

    def _ask_again(self, session: Session, message: Message, existing: Record,
                   plaintexts: Mapping[str, str]) -> None:
        """A repeat of a non-reversible request whose answer never came (timed out, S900,
        or lost with a restart): its outcome is unknown and nothing can reverse it, so the
        repeat itself — same content, its own MsgId — goes to the receiver, whose own
        idempotency on (From, Type, BizSn) answers it once (§6).  The answer settles the
        original record; until then the request holds its place (e.g. the wallet of a
        CTS.SIGN)."""
        if session.inflight >= self._inflight_limit:
            raise self._busy(session)
        target = self.ready_session(existing.receiver)
        if target is None:
            raise CounterpartyNotConnected(f"{existing.receiver} has no ready session")
        log.info("repeat of %s %s from %s, unanswered so far: asking %s again",
                 existing.biz_type, existing.biz_sn, session.party, existing.receiver)
        pending = Pending(session, message.head.msg_id, existing.key, existing.receiver,
                          self.now() + self.config.relay_timeout_seconds, existing)
        self._in_flight(pending)
        self.journal.store.records.asked_again(existing.key, existing.receiver,
                                               message.head.msg_id, self.now())
        target.relay_xml(message.xml, message.type, message.head.msg_id, None, plaintexts)

    def _answer_locally(self, session: Session, message: Message) -> None:
        assert session.party is not None
        if message.type == "XFER.QUERY.REQ":
            self.answer(session, message, xfer_query(self.journal, message, session.party))
        else:
            self.answer(session, message, cts_query(self.journal, message, session.party))

    # --- answers ------------------------------------------------------------------
    def answer(self, session: Session, request: Message, fields: Mapping[str, Any]) -> bytes:
        """The gateway's own response to ``request`` (Result first, then BizSn); its xml."""
        body: dict[str, Any] = {"Result": fields["Result"],
                                "ResultText": str(fields["ResultText"])[:256]}
        if "BizSn" in request.body:
            body["BizSn"] = request.body["BizSn"]
        body.update({k: v for k, v in fields.items() if k not in body})
        return self._send_response(session, request.kind.response_type, request.head.msg_id,
                                   body)

    def _send_response(self, session: Session, rsp_type: str, ref_id: str,
                       body: Mapping[str, Any]) -> bytes:
        return session.send(rsp_type, body, ref_id=ref_id).xml

    def _on_response(self, session: Session, message: Message) -> None:
        ref = message.head.ref_id or ""
        result = str(message.body.get("Result", ""))
        # the answer goes To the request's originator: with RefId, that names the request
        key = (session.party or "", message.head.to_party, ref)
        pending = self.pending.get(key)
        if pending is None:
            if message.type == "XFER.REVERSE.RSP" and self.reversals.answered(
                    session.party or "", ref, result, self.now()):
                return  # the answer to one of the gateway's own reversals
            self._late_response(session, message, result)
            return
        # not an answer we can settle with: SYS.ERROR E111 to the responder, the request
        # stays in flight (and times out into reversal if nothing better comes)
        self.rules.check_answer(pending.record, message,
                                session.peer.role if session.peer else "")
        self._release(key)
        if self.on_round_trip is not None:  # sbdx_relay_seconds (gateway/metrics.py)
            self.on_round_trip(self.now() - pending.deadline + self.config.relay_timeout_seconds)
        settled, xml = self._settle(pending.record, message)
        if settled.own_answer is not None:  # the gateway answers in the receiver's stead
            sent = self._answer_all(pending, settled.own_answer)
            self.journal.update_record(pending.record_key, self.now(), response_xml=sent)
            return
        origin = pending.origin
        if origin.ready:
            origin.relay_xml(xml, message.type, message.head.msg_id, ref)
        body = parse_message(xml).body if xml is not message.xml else message.body
        for waiter, msg_id in pending.waiters:
            if waiter.ready:
                self._send_response(waiter, message.type, msg_id, body)

    def _answer_all(self, pending: Pending, fields: Mapping[str, Any]) -> bytes | None:
        """The gateway's own answer to a request in flight, to its originator and every
        repeat waiting for it; the xml of the last one sent."""
        rec = pending.record
        body = {"Result": fields["Result"], "ResultText": str(fields["ResultText"])[:256],
                "BizSn": rec.biz_sn}
        xml = None
        for waiter, msg_id in pending.answer_to():
            if waiter.ready:
                xml = self._send_response(waiter, rec.biz_type + ".RSP", msg_id, body)
        return xml

    def _release(self, key: tuple[str, str, str]) -> Pending:
        """Take a request out of flight (answered, refused by the receiver, timed out)."""
        pending = self.pending.pop(key)
        self._pending_by_record.pop(pending.record_key, None)
        pending.origin.inflight -= 1
        return pending

    def _in_flight_keys(self, receiver: str, msg_id: str) -> list[tuple[str, str, str]]:
        """Keys of the requests in flight to ``receiver`` with ``msg_id``, whoever sent
        them (for messages that name no originator; rare, so a scan)."""
        return [k for k in self.pending if k[0] == receiver and k[2] == msg_id]

    def _sent_to(self, receiver: str, msg_id: str) -> list[Message]:
        """What the gateway sent ``receiver`` with MsgId ``msg_id``, the newest first,
        from the evidence (one rare path: a receiver's SYS.ERROR; it asks what was sent)."""
        if not msg_id:  # messages("") would be every message
            return []
        rows = [row for row in self.journal.messages(msg_id)
                if row.direction == "OUT" and row.party == receiver]
        return [parse_message(row.xml) for row in reversed(rows)]

    def _check_addressed(self, receiver: str, message: Message) -> None:
        """An answer that names no request of its To, in flight or journaled, but whose
        RefId names a request in flight from someone else, was misaddressed: E111 to the
        responder, and that request stays in flight."""
        ref, to = message.head.ref_id or "", message.head.to_party
        senders = sorted(k[1] for k in self._in_flight_keys(receiver, ref))
        if senders:
            raise SchemaInvalid(f"Msg/Head/To: {to} did not send request {ref} "
                                f"({', '.join(senders)} did); an answer goes To the "
                                "request's originator", ref_msg_id=message.head.msg_id)

    def _settle(self, rec: Record, message: Message) -> tuple[Settlement, bytes]:
        """Apply an answer to its record (and registry); the settlement and the xml to
        relay on."""
        settled = self.rules.answered(rec, message, self.local_now(), self.now())
        xml = replace_texts(message.xml, settled.fill) if settled.fill else message.xml
        self.journal.update_record(rec.key, self.now(),
                                   state=records.transition(rec.state, settled.state),
                                   result=settled.result, response_xml=xml, **settled.changes)
        self.monitor.transfer_settled(rec, settled.state)
        if rec.biz_type == "XFER.REVERSE":
            original = _original_of(rec)
            if settled.reversed_original is not None:
                self.monitor.transfer_reversed(original)
                self.reversals.done(original, settled.result)
                self._original_reversed(original)
            elif settled.state == records.FAILED:
                self._back_in_flight(original)
        return settled, xml

    # --- reversals of originals ----------------------------------------------------
    def _reversal_acknowledged(self, original: tuple[str, str, str], now: float) -> None:
        """The receiver acknowledged the gateway's queued reversal of ``original``: it is
        REVERSED, and so are peers' reversals of it left unanswered (they timed out into
        the queue: their outcome is the queue's)."""
        self.rules.mark_reversed(original, now)
        self.monitor.transfer_reversed(original)
        for rev in self.journal.give_backs(original):
            if rev.biz_type == "XFER.REVERSE" and rev.state == records.PENDING:
                self._release_record(rev.key)
                self.journal.update_record(rev.key, now, state=records.transition(
                    rev.state, records.SUCCEEDED), result="0000")
        self._original_reversed(original)

    def _original_reversed(self, original: tuple[str, str, str]) -> None:
        """An original is REVERSED: if a reversal took it out of flight, its originator
        (and any repeat of it) gets B314 as its answer, kept as the original's answer."""
        pending = self._taken_out.pop(original, None)
        if pending is None:
            return
        xml = self._answer_all(pending, self._reversed_answer(pending.record))
        self.journal.update_record(original, self.now(), response_xml=xml)

    def _back_in_flight(self, original: tuple[str, str, str]) -> None:
        """A peer's reversal of an original it took out of flight failed: if no answer
        came for the original meanwhile, it is in flight again (answered, or timed out
        into the gateway's own reversal, as any other)."""
        rec = self.journal.record(*original)
        if rec is not None and rec.state == records.REVERSING:
            return  # the queue's acknowledgement answers its originator (B314)
        pending = self._taken_out.pop(original, None)
        if pending is None or rec is None or rec.state != records.PENDING:
            return  # answered meanwhile: that answer stands (a repeat gets it)
        pending.record = rec
        pending.deadline = self.now() + self.config.relay_timeout_seconds
        self._in_flight(pending)
        log.info("%s %s from %s back in flight: its reversal failed", original[1],
                 original[2], original[0])

    def _release_record(self, key: tuple[str, str, str]) -> None:
        pending = self._pending_by_record.get(key)
        if pending is not None:
            self._release(pending.key)

    def peer_error(self, session: Session, verified: Verified) -> None:
        """A peer's SYS.ERROR naming a request we relayed to it: the receiver refused the
        message itself (it did not process it), so the originator gets ``B399`` with the
        peer's code and text now instead of waiting for the timeout, and the record is
        FAILED.  Other SYS.ERRORs are only logged (by the session)."""
        body = verified.message.body
        receiver, ref = session.party or "", str(body.get("RefMsgId") or "")
        # a SYS.ERROR names no originator; two may have sent this receiver the same MsgId
        keys = self._in_flight_keys(receiver, ref)
        if len(keys) != 1:
            if keys:
                log.warning("SYS.ERROR from %s names MsgId %s of %d requests (from %s): "
                            "left to time out", receiver, ref, len(keys),
                            ", ".join(sorted(k[1] for k in keys)))
            return
        if self._sent_own(receiver, ref):
            log.warning("SYS.ERROR from %s names MsgId %s, which is both a message of the "
                        "gateway's own and a request relayed from %s: left to time out",
                        receiver, ref, keys[0][1])
            return
        with self.journal.savepoint():
            self._refused_by_receiver(self._release(keys[0]), body)

    def _refused_by_receiver(self, pending: Pending, body: Mapping[str, Any]) -> None:
        rec = pending.record
        text = f"{pending.receiver} refused it: {body.get('Code')} {body.get('Text', '')}"
        log.warning("%s %s from %s: %s", rec.biz_type, rec.biz_sn, rec.origin, text)
        xml = self._answer_all(pending, {"Result": RejectedByCounterparty.code,
                                         "ResultText": text})
        if rec.biz_type == "CTS.SIGN":
            self.journal.settle_agreement(rec.origin, rec.biz_sn, records.FAILED, None)
        self.journal.update_record(rec.key, self.now(),
                                   state=records.transition(rec.state, records.FAILED),
                                   result=RejectedByCounterparty.code, response_xml=xml)
        if rec.biz_type == "XFER.REVERSE":
            self._back_in_flight(_original_of(rec))

    def _sent_own(self, receiver: str, msg_id: str) -> bool:
        """Whether the gateway sent ``receiver`` a message of its own (From = the
        gateway) with this MsgId: §4 makes a MsgId unique per From only, so a relayed
        request may share it (rare: only a SYS.ERROR from the receiver asks).  The
        gateway's own MsgIds start with its PartyId (``next_msg_id``): others need no
        lookup."""
        party = self.config.party
        return msg_id.startswith(party) and any(
            sent.head.from_party == party for sent in self._sent_to(receiver, msg_id))

    def _late_response(self, session: Session, message: Message, result: str) -> None:
        receiver, origin, ref = session.party or "", message.head.to_party, message.head.ref_id or ""
        stored = self.journal.store.records
        rec = stored.by_msg(receiver, origin, ref) or stored.by_repeat(receiver, origin, ref)
        if rec is None:
            # misaddressed (another originator's request with this MsgId is in flight)?
            self._check_addressed(receiver, message)
            log.warning("response %s from %s answers no request we relayed (RefId %s)",
                        message.head.msg_id, session.party, message.head.ref_id)
            return
        log.warning("late answer %s to %s %s (record %s): journaled, not relayed", result,
                    rec.biz_type, rec.biz_sn, rec.state)
        if rec.state == records.PENDING:
            # unresolved (B331, a peer's reversal timed out into the queue, an original a
            # reversal took out of flight, or from before a restart): it settles the
            # record, so it passes the checks of an answer in time (E111)
            self.rules.check_answer(rec, message, session.peer.role if session.peer else "")
            self._settle(rec, message)

    # --- timers -------------------------------------------------------------------
    def tick(self) -> None:
        now = self.now()
        for session in list(self.sessions):
            session.tick()
        if not self.standing.accepts_logons:  # a standby: no timeouts, reversals, alerts
            return
        for key, pending in list(self.pending.items()):
            if now >= pending.deadline:
                self._time_out(key, pending)
        self.reversals.send_due(now)
        self.monitor.tick(now)
        if now >= self._next_purge:
            self._purge_replay_store(now)
        if self.retention is not None and self.retention.due(now):
            self.retention.step(now)  # one bounded batch a tick

    def _purge_replay_store(self, now: float) -> None:
        """Forget MsgIds older than ``replay_retention_days`` (§5 asks for ≥ 7 days)."""
        cutoff = now - self.config.replay_retention_days * 86400
        purged = self.journal.purge_seen(cutoff)
        if purged:
            log.info("forgot %d MsgIds older than %d days", purged,
                     self.config.replay_retention_days)
        self._next_purge = now + 3600

    def _time_out(self, key: tuple[str, str, str], pending: Pending) -> None:
        """§6: a reversible request (and a peer's reversal, whose original the gateway
        then reverses itself) gets B330 and a durable reversal; any other B331, its
        record left unresolved until an answer comes."""
        with self.journal.savepoint():
            self._release(key)
            rec = pending.record
            text = (f"no answer from {pending.receiver} within "
                    f"{self.config.relay_timeout_seconds:g} s")
            log.warning("%s %s from %s timed out at %s", rec.biz_type, rec.biz_sn, rec.origin,
                        pending.receiver)
            if rec.biz_type == "XFER.REVERSE":
                self._reverse_for_peer(rec)
                self._answer_all(pending, {"Result": TimedOutReversing.code,
                                           "ResultText": text + "; the gateway reverses it"})
            elif rec.biz_type in catalog.REVERSIBLE:
                self.reversals.enqueue(rec, self.now())
                xml = self._answer_all(pending, {"Result": TimedOutReversing.code,
                                                 "ResultText": text + ", reversal in progress"})
                self.journal.update_record(rec.key, self.now(), response_xml=xml)
            else:
                self._answer_all(pending, {"Result": OutcomeUnknown.code,
                                           "ResultText": text + "; outcome unknown: repeat "
                                                                "it to learn it"})

    def _reverse_for_peer(self, rev: Record) -> None:
        """A peer's reversal timed out: it joins the gateway's durable reversal queue
        (§6), which reverses its original until the receiver acknowledges."""
        original = self.journal.record(*_original_of(rev))
        if original is None or original.state == records.REVERSED:
            return
        if self.journal.reversal_of(original.key) is None:
            self.reversals.enqueue(original, self.now())



def _original_of(rec: Record) -> tuple[str, str, str]:
    """The original a give-back record names: (From, Type, BizSn)."""
    return (str(rec.orig_from), str(rec.orig_type), str(rec.orig_biz_sn))
