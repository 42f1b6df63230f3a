"""End-of-day clearing file format (PROTOCOL §8), as data.

A file is ``<TYPE>_<FROM>_<TO>_<YYYYMMDD>.txt``: one ``H`` line, ``D`` lines, one
``T`` line, UTF-8, LF, ``|``-separated.  Each TYPE's D-record layout is a tuple of
``(field name, regular expression)``; the line parser, the per-field diagnosis and
the writer are all driven by it.
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

TYPES = ("XFER", "SIGN", "PAY", "OTC", "BAL")
RECONCILED_TYPES = ("XFER", "SIGN", "PAY", "OTC")
VERSION = "SBDX1"

NAME_RE = re.compile(r"(XFER|SIGN|PAY|OTC|BAL)_([A-Z0-9]{2,12})_([A-Z0-9]{2,12})_([0-9]{8})\.txt")

BIZSN = r"[A-Za-z0-9]{1,32}"
FUND = r"[0-9]{6,20}"
WALLET = r"[0-9]{16}"
AMOUNT = r"(?:0|[1-9][0-9]{0,12})\.[0-9]{2}"
BALANCE = r"-?(?:0|[1-9][0-9]{0,12})\.[0-9]{2}"
STATUS = r"[SFR]"
TOKEN = r"[A-Za-z0-9_-]{1,32}"
OPT_TOKEN = r"[A-Za-z0-9_-]{0,32}"
DATE = r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
OPT_DATE = f"(?:{DATE})?"
TIME = (DATE + r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?"
        r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")

#: Exact calendar dates (days per month, leap years; years 0001-9999 as
#: ``datetime.date``), used where a line is matched as a whole; the per-field diagnosis
#: of a bad line keeps DATE and names "not a calendar date" separately.
CALENDAR_DATE = (r"(?:(?!0000)[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])"
                 r"|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))"
                 r"|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
                 r"-02-29)")
CALENDAR_TIME = TIME.replace(DATE, CALENDAR_DATE, 1)

Layout = tuple[tuple[str, str], ...]

LAYOUTS: dict[str, Layout] = {
    "XFER": (("BizSn", BIZSN), ("Direction", "IN|OUT|REV"), ("FundAcct", FUND),
             ("WalletId", WALLET), ("Amount", AMOUNT), ("Status", STATUS),
             ("BankSn", OPT_TOKEN), ("SweepRef", OPT_TOKEN), ("Time", TIME)),
    "SIGN": (("BizSn", BIZSN), ("Action", "SIGN|UNSIGN"), ("FundAcct", FUND),
             ("WalletId", WALLET), ("AgreementNo", OPT_TOKEN), ("Status", STATUS),
             ("Time", TIME)),
    "PAY": (("BizSn", BIZSN), ("OrderNo", TOKEN), ("WalletId", WALLET), ("Amount", AMOUNT),
            ("Status", STATUS), ("ProductCode", TOKEN), ("Time", TIME)),
    "OTC": (("BizSn", BIZSN), ("OrderNo", TOKEN), ("CorpWalletId", WALLET), ("Amount", AMOUNT),
            ("Status", STATUS), ("BookDate", OPT_DATE), ("Time", TIME)),
    "BAL": (("FundAcct", FUND), ("WalletId", WALLET), ("Balance", BALANCE)),
}

#: The column the trailer sums, per TYPE.
SUM_FIELD = {"XFER": "Amount", "PAY": "Amount", "OTC": "Amount", "BAL": "Balance"}
#: Date-valued fields whose calendar validity is checked beyond the pattern.
DATE_FIELDS = ("BookDate", "Time")
TRAILER_PARTS = {"count": r"0|[1-9][0-9]{0,11}",
                 "sum": r"-?(?:0|[1-9][0-9]{0,14})\.[0-9]{2}",
                 "digest": r"[0-9a-fA-F]{64}"}  # §8 says "hex": either case is read
TRAILER_RE = re.compile("T" + "".join(f"\\|({rx})" for rx in TRAILER_PARTS.values()))
CREATED_RE = re.compile(CALENDAR_TIME)


@dataclass(frozen=True)
class FileName:
    """The parts of a clearing file's name."""

    file_type: str
    from_party: str
    to_party: str
    day: dt.date

    @property
    def text(self) -> str:
        return f"{self.file_type}_{self.from_party}_{self.to_party}_{self.day:%Y%m%d}.txt"


def parse_name(name: str) -> FileName:
    """Parse a file name; raise ValueError naming what is wrong."""
    m = NAME_RE.fullmatch(name)
    if m is None:
        raise ValueError(f"file name {name!r} does not match "
                         "<TYPE>_<FROM>_<TO>_<YYYYMMDD>.txt (TYPE XFER|SIGN|PAY|OTC|BAL, "
                         "PartyId [A-Z0-9]{2,12})")
    try:
        day = dt.datetime.strptime(m.group(4), "%Y%m%d").date()
    except ValueError:
        raise ValueError(f"file name {name!r}: {m.group(4)} is not a calendar date") from None
    if m.group(2) == m.group(3):
        raise ValueError(f"file name {name!r}: FROM and TO are the same party; TO is the "
                         "counterparty whose business the file covers")
    return FileName(m.group(1), m.group(2), m.group(3), day)


def field_names(file_type: str) -> tuple[str, ...]:
    return tuple(name for name, _ in LAYOUTS[file_type])


def kept_fields(file_type: str) -> tuple[str, ...]:
    """The D fields the checker keeps (all but Time, which is never compared)."""
    return tuple(n for n, _ in LAYOUTS[file_type] if n != "Time")


#: The D fields §8 compares unconditionally, per reconciled TYPE (BankSn/SweepRef are
#: compared only where both sides hold one; ProductCode is not a compared field; Time
#: never is).
CORE_FIELDS: dict[str, tuple[str, ...]] = {
    "XFER": ("Direction", "FundAcct", "WalletId", "Amount", "Status"),
    "SIGN": ("Action", "FundAcct", "WalletId", "AgreementNo", "Status"),
    "PAY": ("OrderNo", "WalletId", "Amount", "Status"),
    "OTC": ("OrderNo", "CorpWalletId", "Amount", "Status", "BookDate"),
}
COMPARED_IF_BOTH = ("BankSn", "SweepRef")
#: Compared only where both hold one when the journal says ``R``: a subscription the
#: gateway reversed after a timeout never had its answer taken, so the gateway never
#: learned its BookDate (its receiver may have booked it before the reversal came).
COMPARED_IF_BOTH_WHEN_REVERSED = ("BookDate",)


def row_fields(file_type: str) -> tuple[str, ...]:
    """Names of the groups :func:`line_regex` captures, in order.

    Reconciled types: the record's text without Time (``line``, what the journal keeps
    as ``record.eod_line``), its BizSn and its Amount; BAL: every field but Time.
    """
    if file_type not in CORE_FIELDS:
        return kept_fields(file_type)
    amount = ("Amount",) if "Amount" in field_names(file_type) else ()
    return ("line", "BizSn", *amount)


def _calendar(layout: Layout) -> Layout:
    """The layout with its date fields matched as exact calendar dates."""
    out = []
    for name, rx in layout:
        if name == "Time":
            rx = CALENDAR_TIME
        elif name in DATE_FIELDS:
            rx = f"(?:{CALENDAR_DATE})?"
        out.append((name, rx))
    return tuple(out)


def _line_pattern(file_type: str, groups: tuple[str, ...]) -> re.Pattern[str]:
    """A well-formed D line and its LF, capturing ``groups``; for reconciled types the
    whole line without ``|Time`` is captured first, around them."""
    layout = _calendar(LAYOUTS[file_type])
    parts = [f"({rx})" if name in groups else f"(?:{rx})" for name, rx in layout]
    sep = "\\|"
    if file_type not in CORE_FIELDS:
        return re.compile("^D" + sep + sep.join(parts) + "\n", re.MULTILINE)
    if layout[-1][0] != "Time":
        raise AssertionError(f"{file_type}: Time must be the last field")
    return re.compile("^(D" + sep + sep.join(parts[:-1]) + ")" + sep + parts[-1] + "\n",
                      re.MULTILINE)


def line_regex(file_type: str) -> re.Pattern[str]:
    """One pattern for a well-formed D line and its LF, capturing :func:`row_fields`.

    Used with ``findall`` over a block of lines (one C call per block) and with
    ``fullmatch`` per line when a block holds a bad line.  Dates are calendar-exact.
    """
    return _line_pattern(file_type, row_fields(file_type))


def record_text_regex(file_type: str) -> re.Pattern[str]:
    """A well-formed D line and its LF, capturing ONE group: the line without ``|Time``.

    That text is what the journal keeps per record (``record.eod_line``); with one
    group, ``findall`` over a block returns one string per line (gateway/eod/fingerprint.py).
    """
    return _line_pattern(file_type, ())


def fen(amount: str) -> int:
    """``"1234.50"`` → 123450 (the text is already known well-formed)."""
    return int(amount.replace(".", "", 1))


def fen_text(value: int) -> str:
    """123450 → ``"1234.50"``; -1200 → ``"-12.00"``."""
    sign = "-" if value < 0 else ""
    whole, cents = divmod(abs(value), 100)
    return f"{sign}{whole}.{cents:02d}"


def valid_date(text: str) -> bool:
    """True if ``YYYY-MM-DD`` is a real calendar date."""
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def diagnose(file_type: str, fields: list[str]) -> tuple[str, str]:
    """The first bad field of a D line that failed the fast match: (field, reason)."""
    layout = LAYOUTS[file_type]
    if len(fields) != len(layout):
        return "D", f"expected {len(layout)} fields after D, found {len(fields)}"
    for (name, rx), value in zip(layout, fields, strict=True):
        if not re.fullmatch(rx, value):
            return name, f"{value!r} is not a valid {name}"
        if name in DATE_FIELDS and value and not valid_date(value[:10]):
            return name, f"{value!r} is not a calendar date"
    return "D", "malformed record"
