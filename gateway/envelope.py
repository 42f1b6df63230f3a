"""PROTOCOL §3 envelope: ``SBDX1 key-id mac sig`` LF xml.

Only syntax lives here: splitting the payload, and the shape of each field.
Checking the MAC and signature is :mod:`gateway.verification`'s job.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import MacInvalid, MalformedEnvelope, SignatureInvalid, UnknownKeyId

MAGIC = "SBDX1"
ABSENT = "-"
_KEY_ID = re.compile(r"[A-Za-z0-9]{1,16}\Z")
#: An envelope line is short; anything longer is not an envelope (bounds work on junk).
MAX_ENVELOPE_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Envelope:
    """The per-hop envelope. Absent fields are ``None`` (``-`` on the wire)."""

    key_id: str | None
    mac: str | None
    sig: str | None

    def format(self) -> bytes:
        return " ".join(
            (MAGIC, self.key_id or ABSENT, self.mac or ABSENT, self.sig or ABSENT)
        ).encode("ascii")


def split_payload(payload: bytes) -> tuple[Envelope, bytes]:
    """Split a frame payload into its parsed envelope and the exact xml bytes."""
    cut = payload.find(b"\n", 0, MAX_ENVELOPE_BYTES + 1)
    if cut < 0:
        raise MalformedEnvelope("payload has no envelope line (no LF within 1024 bytes)")
    return parse_envelope(payload[:cut]), payload[cut + 1 :]


def join_payload(envelope: Envelope, xml: bytes) -> bytes:
    return envelope.format() + b"\n" + xml


def parse_envelope(line: bytes) -> Envelope:
    """Parse the envelope line; field syntax errors map to E100/E201/E200/E202."""
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise MalformedEnvelope("envelope line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) != 4 or parts[0] != MAGIC:
        raise MalformedEnvelope("envelope must be 'SBDX1 key-id mac sig'")
    _, key_id, mac, sig = parts
    if key_id != ABSENT and not _KEY_ID.match(key_id):
        raise UnknownKeyId("envelope key-id is not [A-Za-z0-9]{1,16}")
    if mac != ABSENT and not mac.startswith("HS256:"):
        raise MacInvalid("envelope mac is not 'HS256:...'")
    if sig != ABSENT and sig.count(":") != 2:
        raise SignatureInvalid("envelope sig is not 'alg:signer:signature'")
    return Envelope(
        key_id=None if key_id == ABSENT else key_id,
        mac=None if mac == ABSENT else mac,
        sig=None if sig == ABSENT else sig,
    )
