"""The SBDX/1 message catalogue (PROTOCOL §5, §6) as data.

Every message type, its Body element, which business family it belongs to,
who may originate it and where it goes.  The XSDs in ``schemas/`` hold the
field-level rules; this module holds the routing-level ones.
"""
from __future__ import annotations

from dataclasses import dataclass

BANK = "BANK"
BROKER = "BROKER"
GATEWAY = "GATEWAY"
ROLES = (BANK, BROKER)

#: Destination markers of the route table.
TO_GATEWAY = "GW"
TO_OTHER = "OTHER"  # the counterparty of the other role


@dataclass(frozen=True, slots=True)
class Route:
    """Who may originate a business request and who receives it (§6 table)."""

    origins: tuple[str, ...]
    to: str  # BANK, BROKER, TO_OTHER or TO_GATEWAY


#: Business request kinds of §6 (without the .REQ/.RSP suffix).
ROUTES: dict[str, Route] = {
    "CTS.SIGN": Route((BROKER,), BANK),
    "CTS.UNSIGN": Route((BROKER,), BANK),
    "CTS.QUERY": Route((BROKER, BANK), TO_GATEWAY),
    "XFER.IN": Route((BROKER, BANK), TO_OTHER),
    "XFER.OUT": Route((BROKER, BANK), TO_OTHER),
    "XFER.REVERSE": Route((BROKER, BANK, GATEWAY), TO_OTHER),
    "XFER.QUERY": Route((BROKER, BANK), TO_GATEWAY),
    "PAY.ORDER": Route((BROKER,), BANK),
    "PAY.REFUND": Route((BROKER,), BANK),
    "OTC.SUBSCRIBE": Route((BROKER,), BANK),
    "OTC.REDEEM": Route((BROKER,), BANK),
}

#: Session-level request/response pairs and one-way messages of §5.
SYS_PAIRS = ("SYS.LOGON", "SYS.KEYX", "SYS.ECHO", "SYS.LOGOFF")
SYS_ONE_WAY = ("SYS.HEARTBEAT", "SYS.ERROR")

#: Requests whose receiver's silence leads to B330 and a reversal (§6).
REVERSIBLE = ("XFER.IN", "XFER.OUT", "PAY.ORDER", "OTC.SUBSCRIBE")

#: Body elements carrying AES-256-GCM encrypted fields (§4): the client identity
#: (CustName, IdNo, Phone), encrypted in transit and sealed at rest.
ENCRYPTED_FIELDS: dict[str, tuple[str, ...]] = {"CtsSignReq": ("CustName", "IdNo", "Phone")}

#: §4 length limits (characters, inclusive) of encrypted fields, which apply to the
#: plaintext: the XSD sees only base64, so they are checked after decryption (E111).
PLAINTEXT_LENGTHS: dict[str, tuple[int, int]] = {"CustName": (1, 60)}


def body_name(msg_type: str) -> str:
    """``XFER.OUT.REQ`` -> ``XferOutReq`` (§4)."""
    return "".join(part.capitalize() for part in msg_type.split("."))


def _all_types() -> tuple[str, ...]:
    pairs = list(SYS_PAIRS) + list(ROUTES)
    return tuple(f"{p}.{d}" for p in pairs for d in ("REQ", "RSP")) + SYS_ONE_WAY


ALL_TYPES: tuple[str, ...] = _all_types()
BODY_BY_TYPE: dict[str, str] = {t: body_name(t) for t in ALL_TYPES}


@dataclass(frozen=True, slots=True)
class Kind:
    """What a message type is: its family pair and direction."""

    type: str
    business: str  # "XFER.OUT", "SYS.LOGON", "SYS.HEARTBEAT"
    is_request: bool
    is_response: bool

    @property
    def is_sys(self) -> bool:
        return self.business.startswith("SYS.")

    @property
    def route(self) -> Route | None:
        return ROUTES.get(self.business)

    @property
    def response_type(self) -> str:
        return self.business + ".RSP"


def _kind(msg_type: str) -> Kind:
    if msg_type.endswith(".REQ"):
        return Kind(msg_type, msg_type[:-4], True, False)
    if msg_type.endswith(".RSP"):
        return Kind(msg_type, msg_type[:-4], False, True)
    return Kind(msg_type, msg_type, False, False)


_KINDS: dict[str, Kind] = {}


def kind_of(msg_type: str) -> Kind:
    """Classify a known type (``KeyError`` for an unknown one); one frozen Kind per type."""
    kind = _KINDS.get(msg_type)
    if kind is None:
        if msg_type not in BODY_BY_TYPE:
            raise KeyError(msg_type)
        kind = _KINDS[msg_type] = _kind(msg_type)
    return kind


#: SYS families §3 requires a signature on; the other SYS messages may omit it.
SIGNED_SYS = ("SYS.LOGON.", "SYS.KEYX.")


def needs_signature(msg_type: str) -> bool:
    """§3: SYS.LOGON.*, SYS.KEYX.* and every business message must be signed.

    SYS.HEARTBEAT, SYS.ECHO.*, SYS.LOGOFF.* and SYS.ERROR may omit it (a signature
    that is present is still verified)."""
    return not msg_type.startswith("SYS.") or msg_type.startswith(SIGNED_SYS)


def needs_mac(msg_type: str) -> bool:
    """§3: once keyed, everything but SYS.LOGON.* and SYS.KEYX.* carries a MAC."""
    return not (msg_type.startswith("SYS.LOGON") or msg_type.startswith("SYS.KEYX"))
