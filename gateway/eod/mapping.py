"""How journal records appear in a clearing file (PROTOCOL §8 reconciliation), as data.

This module is the one definition of a record's §8 line.  The layout of each TYPE
(field order and syntax) is gateway/eod/fileformat.py's ``LAYOUTS``; here, per D field,
where its value comes from in a record (:data:`SOURCES`); :func:`eod_line` builds the
line from both.  Every other form is derived from these two tables: the SQLite store
renders the same line as SQL (gateway/store/sqlite/eod.py: the ``record.eod_line``
column, kept by SQLite on every write, and the exporter's SELECT), and a test holds the
stored line, :func:`eod_line` and the exported file equal.  ``Amount`` is the integer
``amount_fen`` (written ``12.34``); ``Time`` is ``created_at`` (epoch seconds, formatted
by the exporter; never compared, not part of the line).
"""
from __future__ import annotations

from dataclasses import dataclass

from .fileformat import LAYOUTS, fen_text

FINAL_STATES = ("SUCCEEDED", "FAILED", "REVERSED")

#: Journal business types each file lists.  PAY.REFUND and OTC.REDEEM are not listed:
#: the PAY and OTC layouts have no column telling them from an order/subscription.
BIZ_TYPES: dict[str, tuple[str, ...]] = {
    "XFER": ("XFER.IN", "XFER.OUT", "XFER.REVERSE"),
    "SIGN": ("CTS.SIGN", "CTS.UNSIGN"),
    "PAY": ("PAY.ORDER",),
    "OTC": ("OTC.SUBSCRIBE",),
}

#: Originals whose reversal (a peer's XFER.REVERSE) an XFER file lists as ``REV`` (§8).
#: The reversal of a PAY.ORDER or OTC.SUBSCRIBE is no transfer (it has no FundAcct): no
#: file lists it; its original, REVERSED, shows Status ``R`` in the PAY or OTC file.
REVERSED_TRANSFERS = ("XFER.IN", "XFER.OUT")


@dataclass(frozen=True)
class Source:
    """Where a D field's text comes from: a record attribute, either as it is (absent:
    empty), or coded through ``codes`` (a value not in it: ``otherwise``, or the value
    itself if that is None), or, for ``Amount``, as fen written with two decimals."""

    attribute: str
    codes: tuple[tuple[str, str], ...] = ()
    otherwise: str | None = None
    fen: bool = False


STATUS_CODES = (("SUCCEEDED", "S"), ("FAILED", "F"), ("REVERSED", "R"))

#: Per D field of the reconciled TYPEs, its source in a record (gateway.store.Record).
SOURCES: dict[str, Source] = {
    "BizSn": Source("biz_sn"),
    "Direction": Source("biz_type", (("XFER.IN", "IN"), ("XFER.OUT", "OUT")), "REV"),
    "Action": Source("biz_type", (("CTS.SIGN", "SIGN"),), "UNSIGN"),
    "FundAcct": Source("fund_acct"),
    "WalletId": Source("wallet_id"),
    "CorpWalletId": Source("wallet_id"),
    "Amount": Source("amount_fen", fen=True),
    "Status": Source("state", STATUS_CODES),
    "BankSn": Source("bank_sn"),
    "SweepRef": Source("sweep_ref"),
    "AgreementNo": Source("agreement_no"),
    "OrderNo": Source("order_no"),
    "ProductCode": Source("product_code"),
    "BookDate": Source("book_date"),
    "Time": Source("created_at"),
}


def line_fields(file_type: str) -> tuple[str, ...]:
    """The D fields of a TYPE's line as the journal keeps it: all but Time."""
    return tuple(name for name, _ in LAYOUTS[file_type] if name != "Time")


def file_type_of(biz_type: str) -> str | None:
    """The file TYPE that lists a business type (None: no file lists it)."""
    return next((t for t, kinds in BIZ_TYPES.items() if biz_type in kinds), None)


def field_text(name: str, record: object) -> str | None:
    """A D field of ``record`` (any object with gateway.store.Record's attributes) as
    the file writes it; None only for an absent Amount (the line has none then)."""
    source = SOURCES[name]
    value = getattr(record, source.attribute)
    if source.fen:
        return None if value is None else fen_text(int(value))
    if value is None:
        return ""
    if source.codes:
        coded = dict(source.codes).get(str(value))
        return coded if coded is not None else (source.otherwise or str(value))
    return str(value)


def eod_line(record: object) -> str | None:
    """The record as its §8 D line without ``|Time`` (what ``record.eod_line`` holds);
    None if no file lists its type or it has no amount where the layout needs one."""
    file_type = file_type_of(str(getattr(record, "biz_type")))  # noqa: B009
    if file_type is None:
        return None
    texts = [field_text(name, record) for name in line_fields(file_type)]
    if any(text is None for text in texts):
        return None
    return "D|" + "|".join(t for t in texts if t is not None)


def column(field_name: str) -> str:
    """The scratch-table column of a D field (gateway/store/sqlite/eod.py)."""
    return field_name.lower()
