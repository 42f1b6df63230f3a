"""Result codes of PROTOCOL §7 as one exception hierarchy.

Every failure the gateway can report is raised as a subclass of
:class:`GatewayError` deep in the code and turned into a ``SYS.ERROR`` or a
response ``Result`` in exactly one place (the session/relay layer).  Nothing
else invents result codes: :data:`RESULT_TEXT` is the only table of them.
"""
from __future__ import annotations

from typing import ClassVar

#: Every result code of PROTOCOL §7 with its meaning.
RESULT_TEXT: dict[str, str] = {
    "0000": "success",
    "E100": "malformed frame",
    "E101": "frame too large",
    "E110": "XML not well-formed",
    "E111": "schema invalid",
    "E112": "unknown message type",
    "E200": "MAC missing or invalid",
    "E201": "unknown or expired key id",
    "E202": "signature missing or invalid",
    "E203": "unknown signer or party",
    "E204": "replayed MsgId",
    "E205": "time outside allowed skew",
    "E207": "session not ready (no logon / no key)",
    "E208": "message type not allowed for this party",
    "E209": "decryption failed",
    "B300": "no active agreement",
    "B301": "already signed",
    "B302": "wallet level or kind not allowed",
    "B303": "identity does not match wallet",
    "B304": "unsign refused: funds, transfers or services outstanding",
    "B310": "insufficient funds",
    "B311": "invalid amount",
    "B312": "BizSn reused with different content",
    "B313": "original not found",
    "B314": "already reversed/refunded",
    "B320": "outside business hours, or not the current trade date",
    "B330": "timed out, reversal in progress",
    "B331": "timed out, outcome unknown: repeat to learn it",
    "B340": "business suspended with this counterparty",
    "B399": "rejected by counterparty",
    "S900": "internal error",
    "S901": "counterparty not connected",
    "S902": "busy (back-pressure)",
    "S903": "not the active gateway",
}

SUCCESS = "0000"


class GatewayError(Exception):
    """A failure that maps to one §7 result code.

    ``text`` is a human-readable detail (never secret material); ``ref_msg_id``
    is the MsgId of the offending message when it could be read.
    """

    code: ClassVar[str] = "S900"

    def __init__(self, text: str | None = None, *, ref_msg_id: str | None = None) -> None:
        self.text = text or RESULT_TEXT[self.code]
        self.ref_msg_id = ref_msg_id
        super().__init__(f"{self.code} {self.text}")

    @property
    def closes_session(self) -> bool:
        """Framing errors leave the byte stream unusable: the connection closes."""
        return False


# --- E1xx: frame and document --------------------------------------------------
class WireError(GatewayError):
    """The bytes could not be read as an SBDX/1 message (E1xx)."""


class MalformedFrame(WireError):
    code = "E100"

    @property
    def closes_session(self) -> bool:
        return True


class MalformedEnvelope(WireError):
    """E100 for a bad envelope line inside a well-delimited frame: the length header
    found the frame's end, so the stream stays usable and the session stays open (its
    other requests in flight are not dropped); only a bad length header closes (§2)."""

    code = "E100"


class FrameTooLarge(WireError):
    code = "E101"

    @property
    def closes_session(self) -> bool:
        return True


class XmlMalformed(WireError):
    code = "E110"


class SchemaInvalid(WireError):
    code = "E111"


class UnknownMessageType(WireError):
    code = "E112"


# --- E2xx: security and session -----------------------------------------------
class SecurityError(GatewayError):
    """Verification or session state refused the message (E2xx)."""


class MacInvalid(SecurityError):
    code = "E200"


class UnknownKeyId(SecurityError):
    code = "E201"


class SignatureInvalid(SecurityError):
    code = "E202"


class UnknownSigner(SecurityError):
    code = "E203"


class KeyNoLongerValid(UnknownSigner):
    """E203 for a session whose logon key was replaced, disabled or removed since
    (§9 peer commands): nothing more is accepted on it, and it closes."""

    @property
    def closes_session(self) -> bool:
        return True


class ReplayedMsgId(SecurityError):
    code = "E204"


class TimeSkew(SecurityError):
    code = "E205"


class SessionNotReady(SecurityError):
    code = "E207"


class TypeNotAllowed(SecurityError):
    code = "E208"


class DecryptionFailed(SecurityError):
    code = "E209"


# --- B3xx: business rules -------------------------------------------------------
class BusinessError(GatewayError):
    """A business rule refused the request (B3xx); answered in the response."""


class NoActiveAgreement(BusinessError):
    code = "B300"


class AlreadySigned(BusinessError):
    code = "B301"


class WalletNotAllowed(BusinessError):
    code = "B302"


class IdentityMismatch(BusinessError):
    code = "B303"


class UnsignRefused(BusinessError):
    code = "B304"


class InsufficientFunds(BusinessError):
    code = "B310"


class InvalidAmount(BusinessError):
    code = "B311"


class BizSnReused(BusinessError):
    code = "B312"


class OriginalNotFound(BusinessError):
    code = "B313"


class AlreadyReversed(BusinessError):
    code = "B314"


class OutsideBusinessHours(BusinessError):
    code = "B320"


class TimedOutReversing(BusinessError):
    code = "B330"


class OutcomeUnknown(BusinessError):
    """A relayed request that cannot be reversed was not answered in time (§6)."""

    code = "B331"


class Suspended(BusinessError):
    code = "B340"


class RejectedByCounterparty(BusinessError):
    code = "B399"


# --- S9xx: system ---------------------------------------------------------------
class SystemError_(GatewayError):
    """The gateway itself could not serve the request (S9xx)."""


class InternalError(SystemError_):
    code = "S900"


class CounterpartyNotConnected(SystemError_):
    code = "S901"


class Busy(SystemError_):
    code = "S902"


class NotActive(SystemError_):
    code = "S903"


def _all_subclasses(cls: type[GatewayError]) -> list[type[GatewayError]]:
    out: list[type[GatewayError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


#: code -> the concrete class raising it (families excluded).
ERROR_BY_CODE: dict[str, type[GatewayError]] = {
    c.code: c
    for c in _all_subclasses(GatewayError)
    if c.__dict__.get("code") is not None
}


def error_for_code(code: str, text: str | None = None) -> GatewayError:
    """Build the exception for a §7 code (e.g. from a peer's SYS.ERROR)."""
    return ERROR_BY_CODE.get(code, InternalError)(text)
