"""What the store holds, as plain frozen dataclasses (no driver types leave a store).

Every store implementation (gateway/store/sqlite today) returns these; business code
reads them and never sees a cursor, a row object or SQL.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Record states that still wait for something (an answer, a reversal).
OPEN_STATES = ("PENDING", "REVERSING")
#: Record fields :meth:`RecordStore.update` may change (None leaves a field as it is).
UPDATABLE = frozenset({"state", "result", "response_xml", "bank_sn", "sweep_ref", "book_date",
                       "agreement_no"})


@dataclass(frozen=True, slots=True)
class Record:
    """One business request as journaled: the idempotency index of §6."""

    origin: str
    biz_type: str
    biz_sn: str
    receiver: str
    msg_id: str
    content_hash: str
    state: str
    trade_date: str
    amount_fen: int | None = None
    result: str | None = None
    response_xml: bytes | None = None
    fund_acct: str | None = None
    wallet_id: str | None = None
    order_no: str | None = None
    product_code: str | None = None
    service_end: str | None = None
    orig_type: str | None = None
    orig_from: str | None = None
    orig_biz_sn: str | None = None
    bank_sn: str | None = None
    sweep_ref: str | None = None
    book_date: str | None = None
    agreement_no: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.origin, self.biz_type, self.biz_sn)


@dataclass(frozen=True, slots=True)
class Agreement:
    """A CTS agreement binding a fund account to a wallet (§6 CTS.SIGN)."""

    agreement_no: str | None
    broker: str
    bank: str
    fund_acct: str
    wallet_id: str
    wallet_level: str
    wallet_kind: str
    status: str
    sign_date: str
    end_date: str | None
    cust_name: str
    id_type: str
    id_no_sealed: str
    phone_sealed: str | None
    sign_biz_sn: str


@dataclass(frozen=True, slots=True)
class Reversal:
    """A queued gateway-originated XFER.REVERSE (§6 timeouts)."""

    origin: str
    biz_type: str
    biz_sn: str
    receiver: str
    reversal_sn: str
    amount_fen: int
    state: str
    attempts: int
    next_at: float
    last_msg_id: str | None
    result: str | None
    #: when it was queued (schema 3; NULL for rows queued before)
    queued_at: float | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message of the evidence log, as received (IN) or as sent (OUT)."""

    id: int
    at: float
    direction: str
    session: str
    party: str | None
    msg_type: str | None
    msg_id: str | None
    ref_id: str | None
    envelope: bytes
    xml: bytes

    def __getitem__(self, name: str) -> Any:
        """Transitional, for code written when ``Journal.messages`` gave sqlite3 rows
        (``row["xml"]``): the field of that name.  New code reads the attributes."""
        return getattr(self, name)


@dataclass(frozen=True, slots=True)
class Alert:
    """One journaled alert (§10)."""

    at: float
    kind: str
    severity: str
    subject: str
    text: str


@dataclass(frozen=True, slots=True)
class DayLine:
    """A record as one §8 clearing file would list it, for the end-of-day checks: its
    BizSn, its line without Time (``eod_line``), its amount in fen (0 if none), whether
    the file must list it (``owed``) and whether it is final."""

    biz_sn: str
    line: str
    amount_fen: int
    owed: bool
    final: bool


@dataclass
class CommitStats:
    """How long a store's COMMITs took (wall clock: the fsync included)."""

    commits: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0
    slow: int = 0  #: commits over the store's ``slow_commit_seconds``

    def add(self, spent: float, slow_after: float) -> bool:
        """Count one commit; True if it was slow."""
        self.commits += 1
        self.seconds += spent
        self.max_seconds = max(self.max_seconds, spent)
        slow = spent > slow_after
        self.slow += slow
        return slow

    def summary(self) -> str:
        mean = self.seconds / self.commits * 1e3 if self.commits else 0.0
        return (f"{self.commits} commits, mean {mean:.2f} ms, max {self.max_seconds * 1e3:.1f} ms,"
                f" {self.slow} slow")
