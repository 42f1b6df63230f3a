"""Session key exchange (PROTOCOL §5.2): X25519 + HKDF-SHA256, KCV check."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KCV_LABEL = b"SBDX KCV"
INFO_PREFIX = b"SBDX1 "


class KeyExchangeFailed(ValueError):
    """The key exchange could not produce a trustworthy key."""


@dataclass(frozen=True)
class SessionKeys:
    """One session key pair (MAC key + data key) named by ``key_id``."""

    key_id: str
    mac_key: bytes = field(repr=False)
    data_key: bytes = field(repr=False)

    @property
    def kcv(self) -> str:
        """Key check value: first 8 hex chars of HMAC-SHA256(mac key, "SBDX KCV")."""
        return hmac.new(self.mac_key, KCV_LABEL, hashlib.sha256).hexdigest()[:8]


def derive_session_keys(
    shared_secret: bytes, initiator_nonce_hex: str, responder_nonce_hex: str, key_id: str
) -> SessionKeys:
    """Derive MAC and data keys from the X25519 shared secret via HKDF-SHA256."""
    try:
        salt = bytes.fromhex(initiator_nonce_hex) + bytes.fromhex(responder_nonce_hex)
    except (ValueError, TypeError):
        raise KeyExchangeFailed("nonce is not hex") from None
    okm = HKDF(
        algorithm=hashes.SHA256(), length=64, salt=salt, info=INFO_PREFIX + key_id.encode("ascii")
    ).derive(shared_secret)
    return SessionKeys(key_id=key_id, mac_key=okm[:32], data_key=okm[32:])


class Ephemeral:
    """An ephemeral X25519 key pair for one exchange."""

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._key = private_key

    @classmethod
    def generate(cls, random_bytes: Callable[[int], bytes]) -> Ephemeral:
        """Make a key from 32 bytes of ``random_bytes``."""
        return cls(X25519PrivateKey.from_private_bytes(random_bytes(32)))

    @classmethod
    def from_private_bytes(cls, b: bytes) -> Ephemeral:
        """Load a raw 32-byte private key."""
        return cls(X25519PrivateKey.from_private_bytes(b))

    @property
    def public_b64(self) -> str:
        """Base64 of the raw 32-byte public key."""
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode("ascii")

    def exchange(self, peer_public_b64: str) -> bytes:
        """Return the shared secret with the peer's base64 public key."""
        try:
            raw = base64.b64decode(peer_public_b64.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError, AttributeError):
            raise KeyExchangeFailed("peer public key is not valid base64") from None
        if len(raw) != 32:
            raise KeyExchangeFailed("peer public key must be 32 bytes")
        try:
            secret = self._key.exchange(X25519PublicKey.from_public_bytes(raw))
        except ValueError:
            raise KeyExchangeFailed("X25519 exchange failed") from None
        if hmac.compare_digest(secret, bytes(32)):
            raise KeyExchangeFailed("X25519 shared secret is all zero")
        return secret


def respond(
    eph: Ephemeral,
    initiator_public_b64: str,
    initiator_nonce_hex: str,
    responder_nonce_hex: str,
    key_id: str,
) -> SessionKeys:
    """Responder side: derive keys from the initiator's public key."""
    secret = eph.exchange(initiator_public_b64)
    return derive_session_keys(secret, initiator_nonce_hex, responder_nonce_hex, key_id)


def complete(
    eph: Ephemeral,
    responder_public_b64: str,
    initiator_nonce_hex: str,
    responder_nonce_hex: str,
    key_id: str,
    kcv: str,
) -> SessionKeys:
    """Initiator side: derive keys and check the responder's KCV in constant time."""
    keys = respond(eph, responder_public_b64, initiator_nonce_hex, responder_nonce_hex, key_id)
    if not isinstance(kcv, str) or not hmac.compare_digest(
        keys.kcv.encode("ascii"), kcv.strip().lower().encode("ascii", "replace")
    ):
        raise KeyExchangeFailed("key check value mismatch")
    return keys
