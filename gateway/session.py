"""PROTOCOL §5 session machine: logon → keyed → rotating → closing (sans-IO).

A :class:`Session` is fed raw bytes (:meth:`Session.receive_bytes`) and a
periodic :meth:`Session.tick`; it writes frames and closes through the
:class:`Link` it was given, and hands verified business messages to its
:class:`SessionOwner` (the relay).  Every outbound frame is journaled and
leaves only after the journal commit (``journal.after_commit``).
"""
from __future__ import annotations

import logging
import re
import secrets
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from . import catalog
from .config import Config
from .envelope import Envelope, join_payload, split_payload
from .errors import (
    Busy,
    GatewayError,
    KeyNoLongerValid,
    NotActive,
    SchemaInvalid,
    SessionNotReady,
    UnknownKeyId,
    UnknownSigner,
    WireError,
)
from .fieldcrypto import encrypt_field
from .framing import FrameDecoder, encode_frame
from .journal import Journal
from .kex import Ephemeral, KeyExchangeFailed, SessionKeys, complete, respond
from .keyring import KeyRing
from .keystore import Peer
from .mac import mac_field
from .message import (
    Head,
    Message,
    build_xml,
    head_text,
    parse_message,
    parse_xml,
    read_from,
    read_msg_id,
    replace_texts,
)
from .registry import why_untrusted
from .replay import ReplayStore
from .signature import Signer, signer_id
from .verification import (
    Presigned,
    Verified,
    check_fresh,
    check_sender,
    check_signature,
    presign,
    verify_message,
)

log = logging.getLogger(__name__)

AWAITING_LOGON = "AWAITING_LOGON"  # inbound: waiting for the peer's SYS.LOGON.REQ
LOGON_SENT = "LOGON_SENT"  # outbound: our SYS.LOGON.REQ is out
OPEN = "OPEN"  # logged on (keyed once keyring.has_key)
CLOSED = "CLOSED"

#: How long our SYS.KEYX.REQ may wait for its answer before we try again.
KEYX_ANSWER_SECONDS = 30.0


class Link(Protocol):
    """What a session needs of its connection."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def peer_public_key(self) -> Any | None:
        """The TLS client certificate's public key, or None without TLS."""


class SessionOwner(Protocol):
    """What a session needs of the node (gateway or reference peer) that owns it."""

    config: Config
    journal: Journal
    signer: Signer
    role: str
    #: False while a gateway is a standby of a pair (§12): LOGON gets S903.
    accepts_logons: bool

    def now(self) -> float: ...

    def random_bytes(self, n: int) -> bytes: ...

    def iso_time(self) -> str: ...

    def trade_date(self) -> str: ...

    def next_msg_id(self) -> str: ...

    def find_peer(self, party: str) -> Peer | None: ...

    def session_ready(self, session: Session) -> None: ...

    def session_closed(self, session: Session) -> None: ...

    def business_message(self, session: Session, verified: Verified) -> None: ...

    def peer_error(self, session: Session, verified: Verified) -> None: ...


@dataclass(frozen=True, slots=True)
class Sent:
    """A message the gateway built and queued."""

    msg_id: str
    xml: bytes


@dataclass
class _PendingKeyx:
    key_id: str
    ephemeral: Ephemeral
    nonce: str
    sent_at: float


class Session:
    """One connection's SBDX/1 session with one peer."""

    def __init__(self, owner: SessionOwner, link: Link, session_id: str,
                 connect_to: Peer | None = None, *, peer_side: bool = False) -> None:
        """``connect_to``: we dialled that party and log on to it.  ``peer_side``:
        we are a bank/broker talking to a gateway, which relays other parties'
        messages (their ``From`` is the original sender, the hop is signed by it)."""
        cfg = owner.config
        self.peer_side = peer_side
        self.owner = owner
        self.link = link
        self.session_id = session_id
        self.peer: Peer | None = None
        self.state = AWAITING_LOGON
        self.decoder = FrameDecoder(cfg.max_frame_bytes)
        self.keyring = KeyRing(owner.now, cfg.grace_seconds, cfg.rotate_seconds,
                               cfg.rotate_messages)
        self.heartbeat = cfg.heartbeat_seconds
        now = owner.now()
        self.opened_at = now
        self.last_heard = now
        self.last_sent = now
        self.keyx_due_at: float | None = None
        self._keyx: _PendingKeyx | None = None
        self._key_seq = 0
        self.inflight = 0
        self._link_closed = False
        #: Why it closed (``close``), once it has.
        self.close_reason: str | None = None
        #: The code with which the party we dialled refused our logon (S903: a standby).
        self.logon_refused_with: str | None = None
        self._outbox: list[_Outgoing] = []
        self._journaled_in = False
        #: Per-message-type limits on what the peer may send (set at logon).
        self._limits: dict[str, _Bucket] = {}
        self._over_limit = _Window(now)
        #: Messages journaled in and sealed out on this session (heartbeats excepted).
        self.messages_in = self.messages_out = 0
        self._count = _message_counters.get(owner)
        if connect_to is not None:
            self._send_logon(connect_to)

    # --- identity ---------------------------------------------------------------
    @property
    def party(self) -> str | None:
        return self.peer.party if self.peer else None

    @property
    def ready(self) -> bool:
        """Logged on and keyed: business messages may flow."""
        return self.state == OPEN and self.keyring.has_key

    def __repr__(self) -> str:
        return f"<Session {self.session_id} {self.party or '?'} {self.state}>"

    # --- input ------------------------------------------------------------------
    def receive_bytes(self, data: bytes) -> None:
        """Feed bytes from the connection; act on every complete frame."""
        receive_reads([(self, data)])

    def _take(self, data: bytes) -> list[bytes] | WireError | None:
        """The complete frames of ``data`` (a framing error to refuse; None: closed)."""
        if self.state == CLOSED:
            return None
        try:
            return self.decoder.feed(data)
        except WireError as exc:  # E100/E101: the stream is unusable
            return exc

    def _presign(self, parsed: list[_Parsed | None]) -> list[Presigned | None]:
        if self.state != OPEN or self.peer is None:
            return [None] * len(parsed)
        key, ring = self.peer.public_key, self.keyring
        return [None if item is None or isinstance(item[1], BaseException)
                else presign(*item[1], key, ring) for item in parsed]

    def _parse_ahead(self, payloads: list[bytes]) -> list[_Parsed | None]:
        """Parse a read's frames ahead (receive_reads) once logged on; before that each
        is parsed in its turn, so that a peer nobody vouches for gets at most one frame
        parsed and refused (the refusal closes the connection)."""
        if self.state != OPEN:
            return [None] * len(payloads)
        return [_parse(p) for p in payloads]

    def _act(self, payloads: list[bytes], parsed: list[_Parsed | None],
             signatures: list[Presigned | None]) -> None:
        for payload, item, presigned in zip(payloads, parsed, signatures, strict=True):
            if self.state == CLOSED:
                return
            self._receive_parsed(payload, item or _parse(payload), presigned)
        if self.state == CLOSED:  # nothing is answered on a closed session
            return
        try:
            self.decoder.check_pending()
        except WireError as exc:
            self._refuse(exc, None)

    def _receive_parsed(self, payload: bytes, item: _Parsed,
                        presigned: Presigned | None = None) -> None:
        self.last_heard = self.owner.now()
        self._journaled_in = False  # a refusal journals the raw payload unless this is set
        xml, result = item
        try:
            if isinstance(result, BaseException):
                raise result
            self._dispatch(*result, presigned=presigned)
        except GatewayError as exc:
            self._refuse(exc, xml, payload)
        except Exception:  # never let one message take the gateway down
            log.exception("session %s: internal error handling a message", self.session_id)
            from .errors import InternalError

            self._refuse(InternalError("internal error"), xml, payload)

    def _dispatch(self, envelope: Envelope, message: Message,
                  presigned: Presigned | None = None) -> None:
        msg_type = message.type
        if self.state == AWAITING_LOGON:
            if msg_type != "SYS.LOGON.REQ":
                raise SessionNotReady("log on first (SYS.LOGON.REQ)",
                                      ref_msg_id=message.head.msg_id)
            if not self.owner.accepts_logons:  # §12: a standby of a pair
                raise NotActive("this gateway is a standby: log on at the active one (the "
                                "next address of your list)", ref_msg_id=message.head.msg_id)
            self._on_logon_req(envelope, message)
            return
        if self.state == LOGON_SENT:
            if msg_type == "SYS.ERROR":
                self._on_logon_error(envelope, message)
                return
            if msg_type != "SYS.LOGON.RSP":
                raise SessionNotReady("waiting for SYS.LOGON.RSP", ref_msg_id=message.head.msg_id)
            self._on_logon_rsp(envelope, message)
            return
        self._check_key_still_valid(message)
        bucket = self._limits.get(msg_type)
        if bucket is not None and not bucket.take(self.owner.now()):
            self._on_over_limit(envelope, message, presigned)
            return
        verified = self._verify(envelope, message, presigned, self.owner.journal)
        if msg_type != "SYS.HEARTBEAT":  # a heartbeat carries nothing: no evidence row
            self._journal_in(envelope, message)
        self.keyring.note_message()
        handler = self._SYS_HANDLERS.get(msg_type)
        if handler is not None:
            handler(self, verified)
        elif message.kind.is_sys:
            raise SessionNotReady(f"{msg_type} not expected now", ref_msg_id=message.head.msg_id)
        else:
            self.owner.business_message(self, verified)

    def _check_key_still_valid(self, message: Message) -> None:
        """§9: the key this session logged on with, replaced, disabled or removed since
        by a `peer` command (in another process), stops at once: E203, and it closes."""
        assert self.peer is not None
        reason = why_untrusted(self.owner.find_peer(self.peer.party), self.peer)
        if reason is not None:
            raise KeyNoLongerValid(f"{reason}; log on again with a registered key",
                                   ref_msg_id=message.head.msg_id)
    def _verify(self, envelope: Envelope, message: Message, presigned: Presigned | None,
                replay: ReplayStore) -> Verified:
        assert self.peer is not None
        return verify_message(
            envelope, message, keyring=self.keyring, public_key=self.peer.public_key,
            party=None if self.peer_side else self.peer.party, replay=replay,
            now=self.owner.now(), max_skew=self.owner.config.max_skew_seconds,
            presigned=presigned,
        )

    # --- limits on what a logged-on peer sends (docs/operations.md) --------------------
    def _set_limits(self) -> None:
        """At logon: heartbeats at most 2 per HeartbeatSec, SYS.ECHO.REQ a burst of
        ``echo_burst`` then ``echo_per_second``, peer-started SYS.KEYX.REQ a burst of 2
        then one per ``keyx_interval_seconds``."""
        cfg, now = self.owner.config, self.owner.now()
        self._limits = {
            "SYS.HEARTBEAT": _Bucket.full(2, 2 / self.heartbeat, now),
            "SYS.ECHO.REQ": _Bucket.full(cfg.echo_burst, cfg.echo_per_second, now),
            "SYS.KEYX.REQ": _Bucket.full(2, 1 / cfg.keyx_interval_seconds, now),
        }

    def _on_over_limit(self, envelope: Envelope, message: Message,
                       presigned: Presigned | None) -> None:
        """A message beyond its limit is authenticated like any other (a bad MAC is
        still E200), but not acted on, remembered or answered in kind: a heartbeat is
        dropped, an echo or KEYX request gets S902 (MAC, no signature).  More than
        ``max_over_limit_per_minute`` such messages in a minute close the session."""
        self._verify(envelope, message, presigned, _NOT_REMEMBERED)
        cfg, msg_type = self.owner.config, message.type
        count = self._over_limit.add(self.owner.now())
        if count == 1:
            log.warning("session %s: %s sends %s over its limit; more than %d such "
                        "messages within 60 s close the session", self.session_id,
                        self.party, msg_type, cfg.max_over_limit_per_minute)
        closing = count > cfg.max_over_limit_per_minute
        if closing:
            log.warning("session %s: %s sent %d messages over their limits within 60 s: "
                        "closing", self.session_id, self.party, count)
        if msg_type != "SYS.HEARTBEAT":
            raise OverLimit(f"{msg_type} over this session's limit (docs/operations.md); "
                            "send it again later", ref_msg_id=message.head.msg_id,
                            closing=closing)
        if closing:
            self.close(f"{count} messages over their limits within 60 s")

    # --- logon --------------------------------------------------------------------
    def _authenticate_logon(self, envelope: Envelope, message: Message, party: str,
                            role: str | None) -> Peer:
        peer = self.owner.find_peer(party)
        if peer is None or (role is not None and peer.role != role):
            raise UnknownSigner(f"party {party} is not registered"
                                + (f" as {role}" if role else ""), ref_msg_id=message.head.msg_id)
        peer = peer.signing_with(envelope.sig)  # §9: its next key, if that one signed
        check_signature(envelope, message, peer.public_key)
        if not peer.enabled:
            raise UnknownSigner(f"party {party} is disabled at this gateway",
                                ref_msg_id=message.head.msg_id)
        check_sender(message, party)
        tls_key = self.link.peer_public_key()
        if tls_key is not None and signer_id(tls_key) != peer.signer:
            raise UnknownSigner(f"TLS client certificate is not {party}'s registered key",
                                ref_msg_id=message.head.msg_id)
        if message.head.to_party != self.owner.config.party:
            raise UnknownSigner(f"logon addressed to {message.head.to_party}, "
                                f"this gateway is {self.owner.config.party}",
                                ref_msg_id=message.head.msg_id)
        check_fresh(message, self.owner.journal, self.owner.now(),
                    self.owner.config.max_skew_seconds)
        return peer

    def _on_logon_req(self, envelope: Envelope, message: Message) -> None:
        body = message.body
        self.peer = self._authenticate_logon(envelope, message, str(body["PartyId"]),
                                             str(body["Role"]))
        self._journal_in(envelope, message)
        heartbeat = int(str(body["HeartbeatSec"]))
        if heartbeat < self.owner.config.min_heartbeat_seconds:
            self._refuse_heartbeat(heartbeat, message.head.msg_id)
            return
        self.heartbeat = float(heartbeat)
        self.state = OPEN
        self._set_limits()
        self.keyx_due_at = self.owner.now() + self.owner.config.keyx_after_logon_seconds
        log.info("session %s: %s logged on as %s", self.session_id, self.peer.party,
                 self.peer.role)
        self.send("SYS.LOGON.RSP", {
            "Result": "0000", "ResultText": "logged on", "SessionId": self.session_id,
            "Nonce": self.owner.random_bytes(16).hex(), "TradeDate": self.owner.trade_date(),
        }, ref_id=message.head.msg_id)

    def _refuse_heartbeat(self, heartbeat: int, ref: str) -> None:
        """A verified LOGON.REQ asking for heartbeats more often than the gateway allows:
        LOGON.RSP ``E111`` naming the field, then the connection is closed."""
        minimum = self.owner.config.min_heartbeat_seconds
        log.warning("session %s: %s asked for HeartbeatSec %d, below the minimum %d: "
                    "logon refused", self.session_id, self.party, heartbeat, minimum)
        self.send("SYS.LOGON.RSP", {
            "Result": SchemaInvalid.code,
            "ResultText": f"Body/SysLogonReq/HeartbeatSec: {heartbeat} is below this "
                          f"gateway's minimum of {minimum} s",
        }, ref_id=ref)
        self.close(f"logon refused: HeartbeatSec {heartbeat} is below the minimum {minimum}")

    def _send_logon(self, peer: Peer) -> None:
        self.peer = peer
        self.state = LOGON_SENT
        self.send("SYS.LOGON.REQ", {
            "PartyId": self.owner.config.party, "Role": self.owner.role,
            "Nonce": self.owner.random_bytes(16).hex(),
            "HeartbeatSec": str(int(self.owner.config.heartbeat_seconds)),
        })

    def _on_logon_rsp(self, envelope: Envelope, message: Message) -> None:
        assert self.peer is not None
        if message.body.get("Result") != "0000":
            self._logon_refused(envelope, message, "Result", "ResultText")
            return
        self.peer = self._authenticate_logon(envelope, message, self.peer.party, None)
        self._journal_in(envelope, message)
        self.state = OPEN
        self._set_limits()
        self.keyx_due_at = self.owner.now()  # we connected out: key at once
        log.info("session %s: logged on to %s", self.session_id, self.peer.party)

    def _on_logon_error(self, envelope: Envelope, message: Message) -> None:
        """A SYS.ERROR in answer to our SYS.LOGON.REQ: the peer refused the logon (a peer
        refusing before logon may send it unsigned, docs/protocol.md)."""
        self._logon_refused(envelope, message, "Code", "Text")

    def _logon_refused(self, envelope: Envelope, message: Message, code: str,
                       text: str) -> None:
        """The peer we dialled refused our logon: say why (its code and text, and whether
        the answer could be verified: a refusal needs no proof, it only ends what we
        started), keep it as evidence, close."""
        assert self.peer is not None
        try:
            self._authenticate_logon(envelope, message, self.peer.party, None)
            unverified = ""
        except GatewayError as exc:
            unverified = f" (its answer is not verified: {exc.code} {exc.text})"
        self._journal_in(envelope, message)
        body = message.body
        self.logon_refused_with = str(body.get(code))
        self.close(f"{self.peer.party} refused our logon: {body.get(code)} {body.get(text)}"
                   f"{unverified}", logging.WARNING)

    # --- key exchange -------------------------------------------------------------
    def _new_key_id(self) -> str:
        self._key_seq += 1
        return f"G{self._key_seq:03d}{self.owner.random_bytes(4).hex()}"

    def start_keyx(self) -> None:
        eph = Ephemeral.generate(self.owner.random_bytes)
        pending = _PendingKeyx(self._new_key_id(), eph, self.owner.random_bytes(16).hex(),
                               self.owner.now())
        self._keyx = pending
        self.send("SYS.KEYX.REQ", {"KeyId": pending.key_id, "Curve": "X25519",
                                   "PublicKey": eph.public_b64, "Nonce": pending.nonce})

    def _on_keyx_req(self, verified: Verified) -> None:
        body, head = verified.message.body, verified.message.head
        key_id = str(body["KeyId"])
        eph = Ephemeral.generate(self.owner.random_bytes)
        nonce = self.owner.random_bytes(16).hex()
        try:
            keys = respond(eph, str(body["PublicKey"]), str(body["Nonce"]), nonce, key_id)
            self._check_key_id_unused(key_id)
        except (KeyExchangeFailed, ValueError) as exc:
            log.warning("session %s: refused SYS.KEYX.REQ %s (key %s) from %s: %s",
                        self.session_id, head.msg_id, key_id, self.party, exc)
            self.send("SYS.KEYX.RSP", {"Result": UnknownKeyId.code,
                                       "ResultText": f"key exchange refused: {exc}"},
                      ref_id=head.msg_id)
            return
        # §5.3: the answer is queued before the key is installed, so it is written before
        # anything under the new key (a reversal sent when the session becomes ready, a
        # heartbeat): the peer cannot derive that key until it has the answer.  Frames
        # leave in the order they were queued (Session.send_xml).  MAC is not used on KEYX.
        self.send("SYS.KEYX.RSP", {"Result": "0000", "ResultText": "key installed",
                                   "KeyId": key_id, "PublicKey": eph.public_b64,
                                   "Nonce": nonce, "Kcv": keys.kcv}, ref_id=head.msg_id)
        self._install(keys)

    def _check_key_id_unused(self, key_id: str) -> None:
        """A key id already in this session's ring is refused (ValueError), as
        :meth:`KeyRing.install` would, but before the answer says 0000."""
        try:
            self.keyring.for_receive(key_id)
        except UnknownKeyId:
            return
        raise ValueError(f"key id {key_id!r} already used in this session")

    def _on_keyx_rsp(self, verified: Verified) -> None:
        body = verified.message.body
        pending, self._keyx = self._keyx, None
        if pending is None or body.get("KeyId") not in (None, pending.key_id):
            log.warning("session %s: unexpected SYS.KEYX.RSP ignored", self.session_id)
            return
        if body.get("Result") != "0000":
            log.warning("session %s: %s refused our key exchange %s: %s %s", self.session_id,
                        self.party, pending.key_id, body.get("Result"), body.get("ResultText"))
            return
        try:
            keys = complete(pending.ephemeral, str(body["PublicKey"]), pending.nonce,
                            str(body["Nonce"]), pending.key_id, str(body["Kcv"]))
            self._install(keys)
        except (KeyExchangeFailed, ValueError, KeyError) as exc:
            log.warning("session %s: KEYX %s failed: %s", self.session_id, pending.key_id, exc)

    def _install(self, keys: SessionKeys) -> None:
        was_ready = self.ready
        self.keyring.install(keys)
        self.keyx_due_at = None
        log.info("session %s: session key %s installed (kcv %s)", self.session_id,
                 keys.key_id, keys.kcv)
        if not was_ready and self.ready:
            self.owner.session_ready(self)

    # --- other SYS messages -------------------------------------------------------
    def _on_heartbeat(self, verified: Verified) -> None:
        pass  # last_heard already moved

    def _on_echo_req(self, verified: Verified) -> None:
        self.send("SYS.ECHO.RSP", {"Result": "0000", "ResultText": "echo",
                                   "Text": verified.message.body.get("Text")},
                  ref_id=verified.message.head.msg_id)

    def _on_logoff_req(self, verified: Verified) -> None:
        self.send("SYS.LOGOFF.RSP", {"Result": "0000", "ResultText": "logged off"},
                  ref_id=verified.message.head.msg_id)
        self.close(f"{self.party} logged off")

    def _on_logoff_rsp(self, verified: Verified) -> None:
        self.close(f"logged off ({self.party} answered our SYS.LOGOFF.REQ)")

    def _on_error(self, verified: Verified) -> None:
        body = verified.message.body
        log.warning("session %s: %s refused our message %s: %s %s", self.session_id,
                    self.party, body.get("RefMsgId") or "(not named)", body.get("Code"),
                    body.get("Text"))
        self.owner.peer_error(self, verified)

    _SYS_HANDLERS: Mapping[str, Callable[[Session, Verified], None]] = {
        "SYS.KEYX.REQ": _on_keyx_req,
        "SYS.KEYX.RSP": _on_keyx_rsp,
        "SYS.HEARTBEAT": _on_heartbeat,
        "SYS.ECHO.REQ": _on_echo_req,
        "SYS.LOGOFF.REQ": _on_logoff_req,
        "SYS.LOGOFF.RSP": _on_logoff_rsp,
        "SYS.ERROR": _on_error,
    }

    # --- timers -------------------------------------------------------------------
    def tick(self) -> None:
        """Called about once a second: heartbeats, silence, key exchange and rotation."""
        if self.state == CLOSED:
            return
        now = self.owner.now()
        if self.state != OPEN and now - self.opened_at > self.owner.config.logon_timeout_seconds:
            log.warning("session %s: no verified logon within %g s: closing", self.session_id,
                        self.owner.config.logon_timeout_seconds)
            self.close(f"no verified logon within "
                       f"{self.owner.config.logon_timeout_seconds:g} s")
            return
        if now - self.last_heard > 3 * self.heartbeat:
            log.warning("session %s: %s silent for %.0f s (3 heartbeats): closing",
                        self.session_id, self.party or "peer", now - self.last_heard)
            self.close(f"silent for {now - self.last_heard:.0f} s (3 heartbeats)")
            return
        if self.state != OPEN:
            return
        if self._keyx is not None and now - self._keyx.sent_at > KEYX_ANSWER_SECONDS:
            log.warning("session %s: KEYX %s unanswered; retrying", self.session_id,
                        self._keyx.key_id)
            self._keyx = None
        if self._keyx is None and self._keyx_due(now):
            self.start_keyx()
        if self.keyring.has_key and now - self.last_sent >= self.heartbeat:
            self.send("SYS.HEARTBEAT", {})  # no evidence row (send_xml)

    def _keyx_due(self, now: float) -> bool:
        if not self.keyring.has_key:
            return self.keyx_due_at is not None and now >= self.keyx_due_at
        return self.keyring.rotation_due

    # --- output -------------------------------------------------------------------
    def send(self, msg_type: str, body: Mapping[str, Any], ref_id: str | None = None,
             to: str | None = None, secret: Mapping[str, str] | None = None) -> Sent:
        """Build, sign, MAC, journal and (after commit) write a message of ours.

        ``to`` defaults to the session's party; a peer addresses business
        messages to the counterparty the gateway relays them to.  ``secret`` fields
        (IdNo, Phone) are encrypted under the current data key (§4)."""
        assert self.peer is not None
        head = Head(type=msg_type, msg_id=self.owner.next_msg_id(),
                    from_party=self.owner.config.party, to_party=to or self.peer.party,
                    time=self.owner.iso_time(), trade_date=self.owner.trade_date(), ref_id=ref_id)
        if secret:
            keys = self.keyring.current
            if keys is None:
                raise SessionNotReady("no session key to encrypt with")
            body = {name: (encrypt_field(keys.data_key, head.msg_id, name, secret[name],
                                         self.owner.random_bytes(12)) if name in secret else value)
                    for name, value in body.items()}
        xml = build_xml(head, body)
        self.send_xml(xml, msg_type, head.msg_id, ref_id)
        return Sent(head.msg_id, xml)

    def relay_xml(self, xml: bytes, msg_type: str, msg_id: str, ref_id: str | None,
                  plaintexts: Mapping[str, str] | None = None) -> None:
        """Forward another party's xml unchanged, but for re-encrypted fields (§4)."""
        if plaintexts:
            keys = self.keyring.current
            if keys is None:
                raise SessionNotReady("destination session has no key")
            xml = replace_texts(xml, {
                name: encrypt_field(keys.data_key, msg_id, name, value,
                                    self.owner.random_bytes(12))
                for name, value in plaintexts.items()
            })
        self.send_xml(xml, msg_type, msg_id, ref_id)

    def send_xml(self, xml: bytes, msg_type: str, msg_id: str | None,
                 ref_id: str | None, *, signed: bool = True) -> None:
        """Queue ``xml`` for this session: the key is chosen now, the envelope (MAC,
        signature), its evidence row and the frame are made at the turn's flush, just
        before the commit, for all of the session's queued messages in stages (all
        signatures, then all MACs, then the rows: a run of signatures costs each ~25 %
        less than signatures interleaved with parsing and SQL, the CPU caches stay
        warm); the frame is written after the commit, in order with everything else
        queued for after it (a close after an error, say).  ``signed`` False: no
        signature (a SYS.ERROR before logon or over a limit, §3 lets it omit one).  A
        heartbeat gets no evidence row: it carries nothing."""
        if self._link_closed:
            return
        keys = self.keyring.current if catalog.needs_mac(msg_type) else None
        now = self.owner.now()
        self.last_sent = now
        if keys:
            self.keyring.note_message()
        item = _Outgoing(now, xml, msg_type, msg_id, ref_id, keys, signed)
        if not self._outbox:
            self.owner.journal.before_commit(self._seal)
        self._outbox.append(item)
        self.owner.journal.after_commit(lambda: self._write(item.frame))
        # a message whose journal writes are rolled back (Journal.savepoint) sends nothing
        self.owner.journal.on_rollback(lambda: self._outbox.remove(item))

    def _seal(self) -> None:
        items, self._outbox = self._outbox, []
        sign = self.owner.signer.sign
        sigs = [sign(it.xml).format() if it.signed else None for it in items]
        macs = [mac_field(it.keys.mac_key, it.xml) if it.keys else None for it in items]
        limit = self.owner.config.max_frame_bytes
        log_message = self.owner.journal.log_message
        for it, sig, mac in zip(items, sigs, macs, strict=True):
            envelope = Envelope(key_id=it.keys.key_id if it.keys else None, mac=mac, sig=sig)
            payload = join_payload(envelope, it.xml)
            if it.msg_type != "SYS.HEARTBEAT":
                log_message(it.at, "OUT", self.session_id, self.party, it.msg_type,
                            it.msg_id, it.ref_id, envelope.format(), it.xml)
                self.messages_out += 1
                if self._count is not None:
                    self._count("out", it.msg_type, _sent_result(it.msg_type, it.xml))
            it.frame = encode_frame(payload, max(limit, len(payload)))

    def _write(self, frame: bytes) -> None:
        if not self._link_closed:
            self.link.write(frame)

    def _close_link(self) -> None:
        if not self._link_closed:
            self._link_closed = True
            self.link.close()

    def _journal_in(self, envelope: Envelope, message: Message) -> None:
        head = message.head
        self._journaled_in = True
        self.messages_in += 1
        if self._count is not None:
            result = message.body.get("Code" if head.type == "SYS.ERROR" else "Result")
            self._count("in", head.type, result if isinstance(result, str) else "-")
        self.owner.journal.log_message(self.owner.now(), "IN", self.session_id, self.party,
                                       head.type, head.msg_id, head.ref_id, envelope.format(),
                                       message.xml)

    def _journal_refused(self, payload: bytes, root: Any | None, msg_id: str | None) -> None:
        """§3 evidence of a refused message: its exact bytes (a whole frame payload, so at
        most ``max_frame_bytes``; written in the turn's transaction like everything else),
        with whatever of its head could be read.  ``party`` is the session's logged-on
        party, as for every inbound row (NULL before logon: an unverified From is only in
        the xml).  Without an LF the payload is kept whole as the envelope.  Until a logon
        has been verified (nobody vouches for the bytes) at most ``UNAUTHENTICATED_EVIDENCE_BYTES`` are kept,
        so an unauthenticated peer cannot fill the disk with megabyte frames."""
        if self.state != OPEN:  # no verified logon yet (in either direction)
            payload = payload[:UNAUTHENTICATED_EVIDENCE_BYTES]
        cut = payload.find(b"\n")
        envelope, xml = (payload, b"") if cut < 0 else (payload[:cut], payload[cut + 1:])
        self.messages_in += 1
        if self._count is not None:
            self._count("in", _head_token(root, "Type") or "-", "-")
        self.owner.journal.log_message(
            self.owner.now(), "IN", self.session_id, self.party,
            _head_token(root, "Type"), msg_id, _head_token(root, "RefId"), envelope, xml)

    # --- refusals and closing -----------------------------------------------------
    def _refuse(self, exc: GatewayError, xml: bytes | None,
                payload: bytes | None = None) -> None:
        """Log the refusal, journal what was refused, answer SYS.ERROR, and close if the
        stream is bad.  ``payload`` is None for a framing error (bad LEN): then there is
        no message to keep.  Before a verified logon see :meth:`_refuse_unauthenticated`."""
        ref, sender, root = exc.ref_msg_id, None, None
        if xml is not None:
            try:
                root = parse_xml(xml)
                ref = ref or read_msg_id(root)
                sender = read_from(root)
            except GatewayError:
                pass
        if self.state in (AWAITING_LOGON, LOGON_SENT):
            self._refuse_unauthenticated(exc, payload, root, ref, self.party or sender)
            return
        if payload is not None and not self._journaled_in:
            self._journal_refused(payload, root, ref)
        over = isinstance(exc, OverLimit)
        refused = (f"refused {_what(root, ref)} from {self.party or sender or 'the peer'}: "
                   f"{exc.code} {exc.text}")
        if not over and not exc.closes_session:  # over-limit refusals are logged once a
            log.warning("session %s: %s", self.session_id, refused)  # minute (_on_over_limit)
        self._send_error(exc, ref, self.party or sender or "UNKNOWN", signed=not over)
        if exc.closes_session:
            self.close(refused, logging.INFO if over else logging.WARNING)

    def _refuse_unauthenticated(self, exc: GatewayError, payload: bytes | None,
                                root: Any | None, ref: str | None, to: str | None) -> None:
        """Nobody has vouched for this peer: its first refused frame ends the connection,
        after an unsigned SYS.ERROR (no MAC, no signature: no private-key operation for
        a stranger) and the refused bytes (at most ``UNAUTHENTICATED_EVIDENCE_BYTES``) as
        evidence, both while the gateway-wide budget
        (``unauthenticated_evidence_bytes_per_minute``) lasts; past it the connection is
        closed with nothing written, and counted."""
        logon = (self.state == AWAITING_LOGON and payload is not None
                 and _head_token(root, "Type") == "SYS.LOGON.REQ")
        head, xml = (self._logon_refusal_xml(exc, ref, to or "UNKNOWN") if logon
                     else self._error_xml(exc, ref, to or "UNKNOWN"))
        kept = 0 if payload is None or self._journaled_in else min(
            len(payload), UNAUTHENTICATED_EVIDENCE_BYTES)
        refused = f"refused {_what(root, ref)} from {to or 'a peer'}: {exc.code} {exc.text}"
        if unauthenticated_budget(self.owner).take(self.owner.now(), kept + len(xml)):
            if payload is not None and not self._journaled_in:
                self._journal_refused(payload, root, ref)
            self.send_xml(xml, head.type, head.msg_id, head.ref_id, signed=logon)
            self.close(refused, logging.WARNING)
        else:  # counted and logged once a minute (UnauthenticatedBudget)
            self.close(f"{refused} (unanswered: the evidence budget is spent)")

    def _logon_refusal_xml(self, exc: GatewayError, ref: str | None,
                           to: str) -> tuple[Head, bytes]:
        """The SYS.LOGON.RSP refusing a SYS.LOGON.REQ: its Result and ResultText say why
        (§5.1; signed, as §3 requires of SYS.LOGON.*)."""
        head = Head(type="SYS.LOGON.RSP", msg_id=self.owner.next_msg_id(),
                    from_party=self.owner.config.party, to_party=to,
                    time=self.owner.iso_time(), trade_date=self.owner.trade_date(), ref_id=ref)
        return head, build_xml(head, {"Result": exc.code, "ResultText": exc.text[:256]})

    def _error_xml(self, exc: GatewayError, ref: str | None, to: str) -> tuple[Head, bytes]:
        body = {"Code": exc.code, "Text": exc.text[:512], "RefMsgId": ref}
        head = Head(type="SYS.ERROR", msg_id=self.owner.next_msg_id(),
                    from_party=self.owner.config.party, to_party=to,
                    time=self.owner.iso_time(), trade_date=self.owner.trade_date())
        return head, build_xml(head, body)

    def _send_error(self, exc: GatewayError, ref: str | None, to: str, *,
                    signed: bool = True) -> None:
        head, xml = self._error_xml(exc, ref, to)
        self.send_xml(xml, "SYS.ERROR", head.msg_id, None, signed=signed)

    def cut(self, why: str) -> None:
        """Close now, without waiting for a commit, and drop what is queued: this
        gateway is not the active one any more (§12), so nothing may reach the peer."""
        self._outbox.clear()
        self.close(why, logging.WARNING)
        self._close_link()

    def close(self, why: str = "closed here", level: int = logging.INFO) -> None:
        """Close after everything queued so far has been written; ``why`` is logged
        (at ``level``: a warning when it is all the log says of what went wrong)."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.close_reason = why
        log.log(level, "session %s (%s) closed: %s", self.session_id,
                self.party or "not logged on", why)
        self.owner.session_closed(self)
        self.owner.journal.after_commit(self._close_link)


@dataclass(slots=True)
class _Outgoing:
    """A message queued on a session, sealed at the flush (:meth:`Session._seal`)."""

    at: float
    xml: bytes
    msg_type: str
    msg_id: str | None
    ref_id: str | None
    keys: SessionKeys | None
    signed: bool = True
    frame: bytes = b""


#: A payload split and parsed: (its xml if the split worked, (envelope, message) or
#: the exception that refused it).
_Parsed = tuple[bytes | None, "tuple[Envelope, Message] | Exception"]


def _parse(payload: bytes) -> _Parsed:
    xml: bytes | None = None
    try:
        envelope, xml = split_payload(payload)
        return xml, (envelope, parse_message(xml))
    except Exception as exc:  # raised again, in order, when the frame's turn comes
        return xml, exc


def receive_reads(reads: list[tuple[Session, bytes]]) -> None:
    """Act on the frames of several reads (one reactor turn's, across sessions), in
    stages: every frame is parsed and schema-validated first, then the MAC and signature
    of every frame of a logged-on session are checked (a signature only where the MAC
    holds), then each frame is acted on, read by read, in order.
    A run of parses or of signature checks costs each ~1.3-1.5x less than the same work
    interleaved with SQL and signing (the CPU caches stay warm: docs/BENCHMARKS.md).
    Parsing and checking have no effect: a frame after one that closes its session is
    still never acted on, and an outcome is only used in its §3 place (after the MAC)."""
    # One session's reads of the turn are decoded as one stream (TLS hands over each
    # record as a read of its own): a framing error then comes after every good frame
    # before it, as when each read was acted on at once.
    joined: dict[int, tuple[Session, list[bytes]]] = {}
    for session, data in reads:
        joined.setdefault(id(session), (session, []))[1].append(data)
    taken = [(session, session._take(b"".join(chunks))) for session, chunks in joined.values()]
    parsed = [session._parse_ahead(got) if isinstance(got, list) else []
              for session, got in taken]
    signatures = [session._presign(items) for (session, _), items in zip(taken, parsed,
                                                                          strict=True)]
    _seen_ahead(taken, parsed, signatures)
    for (session, got), items, sigs in zip(taken, parsed, signatures, strict=True):
        if isinstance(got, WireError):
            if session.state != CLOSED:
                session._refuse(got, None)
        elif got is not None:
            session._act(got, items, sigs)


def _seen_ahead(taken: list[tuple[Session, Any]], parsed: list[list[_Parsed | None]],
                signatures: list[list[Presigned | None]]) -> None:
    """Tell the journal the (From, MsgId) of every frame of the turn whose MAC and
    signature held (a network store asks them all in one round trip; the replay check
    of each then needs none).  Frames nobody authenticated cost nothing."""
    pairs = []
    for items, sigs in zip(parsed, signatures, strict=True):
        for item, sig in zip(items, sigs, strict=True):
            if sig is None or sig.refusal is not None or item is None:
                continue
            result = item[1]
            if not isinstance(result, BaseException):
                head = result[1].head
                pairs.append(("seen", (head.from_party, head.msg_id)))
    if pairs:
        taken[0][0].owner.journal.read_ahead(pairs)


#: Bytes of a refused payload kept as evidence before the peer has logged on.
UNAUTHENTICATED_EVIDENCE_BYTES = 4096


class OverLimit(Busy):
    """S902 for a SYS.ECHO.REQ or SYS.KEYX.REQ beyond its per-session limit."""

    def __init__(self, text: str, *, ref_msg_id: str | None, closing: bool) -> None:
        super().__init__(text, ref_msg_id=ref_msg_id)
        self._closing = closing

    @property
    def closes_session(self) -> bool:
        return self._closing


@dataclass(slots=True)
class _Bucket:
    """A token bucket: ``burst`` messages at once, then ``rate`` per second."""

    burst: float
    rate: float
    tokens: float
    at: float

    @classmethod
    def full(cls, burst: float, rate: float, now: float) -> _Bucket:
        return cls(burst, rate, burst, now)

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(slots=True)
class _Window:
    """Events counted over a fixed window of ``seconds``."""

    started: float
    count: int = 0
    seconds: float = 60.0

    def add(self, now: float) -> int:
        """Count one event now; the count of the current window, this one included."""
        if now - self.started >= self.seconds:
            self.started, self.count = now, 0
        self.count += 1
        return self.count


class _NotRemembered:
    """A replay store that remembers nothing: for a message refused over its limit,
    which is never acted on (so a later copy of it is not a replay of anything)."""

    def remember(self, sender: str, msg_id: str, seen_at: float) -> bool:
        return True


_NOT_REMEMBERED = _NotRemembered()


class UnauthenticatedBudget:
    """Evidence kept for peers that have not logged on, over all their connections:
    at most ``limit`` bytes per minute; past it refusals are counted, and the count is
    logged when the minute is over."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self.started = float("-inf")
        self.used = 0
        self.suppressed = 0

    def take(self, now: float, size: int) -> bool:
        """Spend ``size`` bytes now if the budget allows it."""
        if now - self.started >= self.window:
            if self.suppressed:
                log.warning("%d refused frame(s) from connections not logged on were closed "
                            "without evidence or answer in the last %g s (budget spent)",
                            self.suppressed, self.window)
            self.started, self.used, self.suppressed = now, 0, 0
        if self.used + size > self.limit:
            if not self.suppressed:
                log.warning("evidence budget for connections not logged on (%d bytes per "
                            "%g s) spent: further refusals are only counted", self.limit,
                            self.window)
            self.suppressed += 1
            return False
        self.used += size
        return True


_budgets: weakref.WeakKeyDictionary[Any, UnauthenticatedBudget] = weakref.WeakKeyDictionary()


def unauthenticated_budget(owner: SessionOwner) -> UnauthenticatedBudget:
    """The budget shared by every session of ``owner`` (one gateway process)."""
    budget = _budgets.get(owner)
    if budget is None:
        budget = _budgets[owner] = UnauthenticatedBudget(
            owner.config.unauthenticated_evidence_bytes_per_minute)
    return budget


def _head_token(root: Any | None, name: str) -> str | None:
    """Best effort Head/``name`` of a refused document: a short ASCII token, or None."""
    if root is None:
        return None
    text = head_text(root, name)
    if text and len(text) <= 40 and text.isascii() and text.replace(".", "").isalnum():
        return text
    return None


#: Per node (the gateway), what counts its messages: gateway/metrics.py MessageCounts.
_message_counters: weakref.WeakKeyDictionary[Any, Callable[[str, str, str], None]] = \
    weakref.WeakKeyDictionary()
_RESULT = {b"Result": re.compile(rb"<(?:[\w.-]+:)?Result>\s*([0-9A-Z]{4})\s*<"),
           b"Code": re.compile(rb"<(?:[\w.-]+:)?Code>\s*([0-9A-Z]{4})\s*<")}


def count_messages(owner: Any, counter: Callable[[str, str, str], None]) -> None:
    """Have the sessions ``owner`` makes from now on tell ``counter`` (direction,
    Type, result) of each message they journal in or seal out."""
    _message_counters[owner] = counter


def _sent_result(msg_type: str, xml: bytes) -> str:
    """The §7 code a response (Result) or a SYS.ERROR (Code) carries; ``-`` else."""
    pattern = _RESULT[b"Code"] if msg_type == "SYS.ERROR" else \
        _RESULT[b"Result"] if msg_type.endswith(".RSP") else None
    found = pattern.search(xml) if pattern is not None else None
    return found.group(1).decode("ascii") if found else "-"

def _what(root: Any | None, ref: str | None) -> str:
    """A refused message in a few words: its Type and MsgId, as far as they could be
    read."""
    msg_type = _head_token(root, "Type")
    if msg_type and ref:
        return f"{msg_type} {ref}"
    return msg_type or (f"message {ref}" if ref else "a message")


def new_session_id(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    return "S" + random_bytes(8).hex()
