"""PROTOCOL §3/§5 inbound checks, in protocol order.

MAC (constant time, key by key-id) → signer against the party's registered key
→ signature over the exact xml bytes → sender/party consistency → Time skew →
MsgId replay.  Replay comes last so that only authenticated MsgIds are
remembered (an attacker cannot poison the replay store).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import catalog
from .envelope import Envelope
from .errors import (
    GatewayError,
    MacInvalid,
    ReplayedMsgId,
    SessionNotReady,
    SignatureInvalid,
    UnknownKeyId,
    UnknownSigner,
)
from .kex import SessionKeys
from .keyring import KeyRing
from .mac import verify_mac
from .message import Message
from .replay import ReplayStore, check_skew
from .signature import PublicKey, SignatureField, verify


@dataclass(frozen=True, slots=True)
class Verified:
    """A message whose MAC, signature, time and MsgId were all checked."""

    envelope: Envelope
    message: Message
    keys: SessionKeys | None  # the session key that authenticated it, if any


def check_mac(envelope: Envelope, message: Message, keyring: KeyRing) -> SessionKeys | None:
    """§3: MAC required once the session has a key (but SYS.LOGON.*/SYS.KEYX.*).

    Before any key exists (§5.3) business messages are E207 and SYS ones pass without
    a MAC, which they then cannot carry: key-id and mac must both be ``-``."""
    msg_type = message.type
    if not catalog.needs_mac(msg_type):
        return None
    if not keyring.has_key:
        _check_unkeyed(envelope, message)
        return None
    if envelope.mac is None or envelope.key_id is None:
        raise MacInvalid("MAC missing", ref_msg_id=message.head.msg_id)
    try:
        keys = keyring.for_receive(envelope.key_id)
        verify_mac(keys.mac_key, message.xml, envelope.mac)
    except GatewayError as exc:  # E201 / E200 name the MsgId they refuse
        exc.ref_msg_id = message.head.msg_id
        raise
    return keys


def _check_unkeyed(envelope: Envelope, message: Message) -> None:
    """A message on a session with no key yet: SYS only (E207), with no MAC (E201/E200)."""
    msg_id = message.head.msg_id
    if not message.kind.is_sys:
        raise SessionNotReady("no session key yet: run SYS.KEYX first", ref_msg_id=msg_id)
    if envelope.key_id is not None:
        raise UnknownKeyId(f"key id {envelope.key_id} unknown: the session has no key yet",
                           ref_msg_id=msg_id)
    if envelope.mac is not None:
        raise MacInvalid("MAC present but the session has no key yet", ref_msg_id=msg_id)


def check_signature(envelope: Envelope, message: Message, public_key: PublicKey) -> None:
    """§3: signer must be the party's registered key, then the signature must verify."""
    msg_id = message.head.msg_id
    if envelope.sig is None:
        if catalog.needs_signature(message.type):
            raise SignatureInvalid("signature missing", ref_msg_id=msg_id)
        return
    try:
        field = SignatureField.parse(envelope.sig)
        verify(public_key, field, message.xml)
    except (SignatureInvalid, UnknownSigner) as exc:
        exc.ref_msg_id = msg_id
        raise


@dataclass(frozen=True, slots=True)
class Presigned:
    """A frame's MAC and signature checked ahead of its turn (:func:`presign`)."""

    public_key: PublicKey  # the key the signature was checked with
    keys: SessionKeys | None  # the session key whose MAC matched (None: none was needed)
    refusal: Exception | None  # what the signature check refused it with, or None


def presign(envelope: Envelope, message: Message, public_key: PublicKey,
            keyring: KeyRing) -> Presigned | None:
    """Check the MAC, then the signature, now, and keep the outcome for
    :func:`verify_message`.  It has no effect of its own, so the checks of a read's
    frames can run back to back.  A frame whose MAC fails gets None: its turn refuses
    it at the MAC, and its signature is never checked (an ECDSA verify costs ~20 HMACs:
    a peer sending bad MACs must not make the gateway pay for verifies)."""
    try:
        keys = check_mac(envelope, message, keyring)
    except Exception:  # refused again, in its place, when the frame's turn comes
        return None
    try:
        check_signature(envelope, message, public_key)
    except Exception as exc:  # raised again in the message's turn (a bug: S900 then)
        return Presigned(public_key, keys, exc)
    return Presigned(public_key, keys, None)


def _mac_again(envelope: Envelope, message: Message, keyring: KeyRing,
               keys: SessionKeys | None) -> SessionKeys | None:
    """The MAC checked ahead with ``keys`` still stands while the ring still holds that
    key under its id (no second HMAC); otherwise (no MAC was needed then, or the ring
    changed since) it is checked now."""
    if keys is not None and envelope.key_id is not None:
        try:
            if keyring.for_receive(envelope.key_id) is keys:
                return keys
        except UnknownKeyId:
            pass
    return check_mac(envelope, message, keyring)


def check_sender(message: Message, party: str) -> None:
    """The Head From must be the party the session belongs to."""
    if message.head.from_party != party:
        raise UnknownSigner(
            f"From {message.head.from_party} is not this session's party {party}",
            ref_msg_id=message.head.msg_id,
        )


def check_fresh(message: Message, replay: ReplayStore, now: float, max_skew: float) -> None:
    """§5 replay defence: Time within skew (E205), MsgId not seen before (E204)."""
    head = message.head
    try:
        check_skew(head.time, now, max_skew)
    except GatewayError as exc:
        exc.ref_msg_id = head.msg_id
        raise
    if not replay.remember(head.from_party, head.msg_id, now):
        raise ReplayedMsgId(f"MsgId {head.msg_id} already seen from {head.from_party}",
                            ref_msg_id=head.msg_id)


def verify_message(envelope: Envelope, message: Message, *, keyring: KeyRing,
                   public_key: PublicKey, party: str | None, replay: ReplayStore, now: float,
                   max_skew: float, presigned: Presigned | None = None) -> Verified:
    """All checks of an established session, in order (``party`` None: the far side is
    a gateway relaying other parties' messages, so From is not the hop's party).  A
    ``presigned`` outcome checked with the same public key stands for the MAC and
    signature checks; a refusal is reported in its place in the order (after the MAC)."""
    if presigned is not None and presigned.public_key is public_key:
        keys = _mac_again(envelope, message, keyring, presigned.keys)
        if presigned.refusal is not None:
            raise presigned.refusal
    else:
        keys = check_mac(envelope, message, keyring)
        check_signature(envelope, message, public_key)
    if party is not None:
        check_sender(message, party)
    check_fresh(message, replay, now, max_skew)
    return Verified(envelope, message, keys)
