"""PROTOCOL §4 BizSn ownership: a serial begins with its originator's PartyId.

A request that creates a business record carries a BizSn that begins with its
``Head/From``, so that, PartyIds being prefix-free at one gateway (§1, enforced by
``peer add``), no two parties can ever use the same serial and an end-of-day file
lists each record once.  The queries (CTS.QUERY, XFER.QUERY) are exempt: the
BizSn of an XFER.QUERY names the record asked about, which may be another
party's.  Pure: a message in, :class:`~gateway.errors.SchemaInvalid` (E111) out.
"""
from __future__ import annotations

from . import catalog
from .errors import SchemaInvalid
from .message import Message

#: Business request kinds that create a record: every §6 route but those the
#: gateway answers itself (the queries).
RECORD_CREATING: frozenset[str] = frozenset(
    business for business, route in catalog.ROUTES.items() if route.to != catalog.TO_GATEWAY)


def check_owner(message: Message) -> None:
    """Refuse (E111) a record-creating request whose BizSn does not begin with its
    ``Head/From``; do nothing for a query, a response or a SYS message.

    The comparison is exact (case-sensitive, as PartyIds are upper case); a BizSn equal
    to the PartyId itself does begin with it, so it passes."""
    kind = message.kind
    if not kind.is_request or kind.business not in RECORD_CREATING:
        return
    party, biz_sn = message.head.from_party, message.text("BizSn") or ""
    if biz_sn.startswith(party):
        return
    path = f"Msg/Body/{catalog.BODY_BY_TYPE[message.type]}/BizSn"
    raise SchemaInvalid(
        f"{path}: {biz_sn!r} must begin with the sender's PartyId {party} "
        f"(§4: e.g. {party}20261125000001), so that no other party can use the same serial",
        ref_msg_id=message.head.msg_id)
