"""Sensitive field encryption (PROTOCOL §4) and at-rest storage encryption."""
from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway import catalog
from gateway.errors import DecryptionFailed, SchemaInvalid

NONCE_LEN = 12
TAG_LEN = 16


def _aad(msg_id: str, element: str) -> bytes:
    return f"{msg_id}/{element}".encode()


def _open(key: bytes, blob: bytes, aad: bytes) -> str:
    if len(blob) < NONCE_LEN + TAG_LEN:
        raise DecryptionFailed("ciphertext too short")
    try:
        pt = AESGCM(key).decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], aad)
        return pt.decode("utf-8")
    except (InvalidTag, ValueError, UnicodeDecodeError):
        raise DecryptionFailed() from None


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value.strip().encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError, AttributeError):
        raise DecryptionFailed("ciphertext is not valid base64") from None


def encrypt_field(data_key: bytes, msg_id: str, element: str, plaintext: str, nonce: bytes) -> str:
    """Return base64(nonce ‖ ciphertext ‖ tag) with AES-256-GCM, AAD = MsgId/element."""
    if len(nonce) != NONCE_LEN:
        raise ValueError("nonce must be 12 bytes")
    ct = AESGCM(data_key).encrypt(nonce, plaintext.encode("utf-8"), _aad(msg_id, element))
    return base64.b64encode(nonce + ct).decode("ascii")


def decrypt_field(data_key: bytes, msg_id: str, element: str, value: str) -> str:
    """Decrypt an encrypted field value; raise DecryptionFailed (E209) on any problem,
    SchemaInvalid (E111) if the plaintext breaks the element's §4 length limits."""
    try:
        plaintext = _open(data_key, _b64(value), _aad(msg_id, element))
    except DecryptionFailed:
        raise
    except Exception:  # e.g. bad key length
        raise DecryptionFailed() from None
    check_plaintext(element, plaintext)
    return plaintext


def check_plaintext(element: str, plaintext: str) -> None:
    """§4: the length limits of an encrypted field apply to its plaintext (the XSD sees
    only base64); outside them is E111 naming the element.  Lengths are in characters
    (Unicode code points, as XSD counts them), not bytes: 60 Chinese characters fit."""
    limits = catalog.PLAINTEXT_LENGTHS.get(element)
    if limits is None:
        return
    low, high = limits
    if not low <= len(plaintext) <= high:
        raise SchemaInvalid(f"{_path(element)}: the decrypted value has {len(plaintext)} "
                            f"characters; §4 allows {low}-{high}")


def _path(element: str) -> str:
    body = next((b for b, names in catalog.ENCRYPTED_FIELDS.items() if element in names), None)
    return f"Msg/Body/{body}/{element}" if body else element


class StorageCipher:
    """AES-256-GCM for values stored at rest, bound to a context string."""

    PREFIX = "v1:"

    def __init__(self, storage_key: bytes, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if len(storage_key) != 32:
            raise ValueError("storage key must be 32 bytes")
        self._key = storage_key
        self._random = random_bytes

    def __repr__(self) -> str:
        return "StorageCipher(<key>)"

    def seal(self, plaintext: str, context: str) -> str:
        """Encrypt ``plaintext`` bound to ``context``; returns ``v1:`` + base64."""
        nonce = self._random(NONCE_LEN)
        ct = AESGCM(self._key).encrypt(nonce, plaintext.encode("utf-8"), context.encode("utf-8"))
        return self.PREFIX + base64.b64encode(nonce + ct).decode("ascii")

    def open(self, token: str, context: str) -> str:
        """Decrypt a ``seal`` token for ``context``; raise DecryptionFailed."""
        if not isinstance(token, str) or not token.startswith(self.PREFIX):
            raise DecryptionFailed("unknown storage token format")
        return _open(self._key, _b64(token[len(self.PREFIX):]), context.encode("utf-8"))
