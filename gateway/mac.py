"""Envelope MAC (PROTOCOL §3): ``HS256:`` + base64(HMAC-SHA256(mac key, xml))."""
from __future__ import annotations

import base64
import binascii
import hmac

from gateway.errors import MacInvalid

PREFIX = "HS256:"


def _mac(mac_key: bytes, xml: bytes) -> bytes:
    return hmac.digest(mac_key, xml, "sha256")  # one-shot C path (OpenSSL HMAC)


def mac_field(mac_key: bytes, xml: bytes) -> str:
    """Return the envelope ``mac`` field for the exact ``xml`` bytes."""
    return PREFIX + base64.b64encode(_mac(mac_key, xml)).decode("ascii")


def verify_mac(mac_key: bytes, xml: bytes, field: str | None) -> None:
    """Check ``field`` against the MAC of ``xml`` in constant time; raise MacInvalid."""
    if field is None or field == "-":
        raise MacInvalid("MAC missing")
    if not field.startswith(PREFIX):
        raise MacInvalid("MAC has an unknown algorithm")
    try:
        got = base64.b64decode(field[len(PREFIX):].encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise MacInvalid("MAC is not valid base64") from None
    if not hmac.compare_digest(got, _mac(mac_key, xml)):
        raise MacInvalid("MAC mismatch")
