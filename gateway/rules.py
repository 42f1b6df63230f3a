"""PROTOCOL §6 business rules: what the gateway checks before relaying, and what
an answer changes (agreements, booking dates, reversal states).

Plain functions over the journal; no I/O of their own.  Each business type is one
entry of :data:`BUSINESS_TYPES` (what it gives back, whether a timeout reverses it, how
it is admitted and how an answer settles it).  ``admit`` raises a
:class:`~gateway.errors.BusinessError` (answered in the response ``Result``) or returns
the fields to keep on the business record; give-backs are admitted only through
:mod:`gateway.givebacks`, the one owner of the money invariant.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from . import catalog, givebacks, records
from .alerts import CRITICAL, Alerts
from .bookdate import Calendar
from .eod.mapping import BIZ_TYPES as FILE_BIZ_TYPES
from .errors import (
    AlreadySigned,
    BizSnReused,
    InvalidAmount,
    NoActiveAgreement,
    RejectedByCounterparty,
    SchemaInvalid,
    TimedOutReversing,
    UnsignRefused,
    WalletNotAllowed,
)
from .exitreport import services_in_validity
from .fieldcrypto import StorageCipher
from .givebacks import GiveBack
from .givebacks import fen_text as fen_text  # re-exported: the sims and the demo use it
from .journal import Agreement, Journal, Record
from .message import Message

TRANSFERS = ("XFER.IN", "XFER.OUT", "XFER.REVERSE")
IN_FLIGHT = (records.PENDING, records.REVERSING)


@dataclass(frozen=True)
class Repeat:
    """A reversal of an original already reversed (or being reversed by the gateway's
    queue): §6 answers it with the first reversal's result, neither relayed nor
    journaled as a record (asked again, it is judged again)."""

    body: Mapping[str, Any]


@dataclass
class Settlement:
    """What an answer does to its record, and what goes back to the originator."""

    state: str  #: the record's new state
    result: str  #: the Result kept on the record
    changes: dict[str, Any] = field(default_factory=dict)  #: record fields it sets
    fill: dict[str, str] = field(default_factory=dict)  #: Body fields the gateway fills in
    #: the gateway answers the originator itself (this Body) instead of relaying
    own_answer: dict[str, Any] | None = None
    #: a reversal succeeded: this original is now REVERSED
    reversed_original: tuple[str, str, str] | None = None


def to_fen(amount: str | None) -> int | None:
    """``"1234.50"`` -> 123450 (exact: the schema guarantees two decimals)."""
    return None if amount is None else int(Decimal(amount) * 100)


def _positive(message: Message) -> int:
    fen = to_fen(message.text("Amount"))
    if fen is None or fen <= 0:
        raise InvalidAmount(f"amount {message.text('Amount')} must be positive")
    return fen


class Rules:
    """The §6 rule table, applied by the relay to every business request."""

    def __init__(self, journal: Journal, calendar: Calendar, sealer: StorageCipher,
                 today: Callable[[], dt.date], alerts: Alerts) -> None:
        self.journal = journal
        self.calendar = calendar
        self.sealer = sealer
        self.today = today
        self.alerts = alerts

    # --- before relaying --------------------------------------------------------
    #: Types one end-of-day file lists together (§8 XFER: IN/OUT/REV; SIGN: SIGN/UNSIGN).
    FILE_FAMILIES: dict[str, tuple[str, ...]] = {
        t: fam for fam in FILE_BIZ_TYPES.values() if len(fam) > 1 for t in fam}

    def admit(self, origin: str, message: Message,
              plaintexts: Mapping[str, str]) -> dict[str, Any] | Repeat:
        """Check ``message`` (a new request of ``origin``, its BizSn checked by
        :meth:`check_file_unique`) against the rules of its type in §6; the fields to
        keep on its record."""
        return BUSINESS_TYPES[message.kind.business].admit(self, origin, message, plaintexts)

    def reads_ahead(self, origin: str, m: Message, day: str) -> list[tuple[str, tuple[object, ...]]]:
        """The journal reads :meth:`check_file_unique` and :meth:`admit` will make for
        this request (as :meth:`gateway.journal.Journal.read_ahead` takes them)."""
        reads: list[tuple[str, tuple[object, ...]]] = []
        family = self.FILE_FAMILIES.get(m.kind.business)
        parties = (origin, m.head.to_party)
        if family is not None:
            reads.append(("same_bizsn", (str(m.body["BizSn"]), family, parties, day)))
        kind = BUSINESS_TYPES.get(m.kind.business)
        if kind is not None and kind.admit is Rules._admit_transfer:
            reads.append(("binds", (m.text("FundAcct"), m.text("WalletId"), parties)))
        return reads

    def check_file_unique(self, origin: str, m: Message, day: str) -> None:
        """§6 makes (From, Type, BizSn) unique, but one §8 file lists both parties' records
        of a family by BizSn and refuses duplicates: a BizSn already used that trade date
        between the same two parties in the same family is B312 (part of §6 idempotency:
        checked before §11's B340 and the type's own rules)."""
        family = self.FILE_FAMILIES.get(m.kind.business)
        if family is None:
            return
        biz_sn = str(m.body["BizSn"])
        other = self.journal.same_bizsn_between(biz_sn, family, (origin, m.head.to_party), day)
        if other is not None:
            raise BizSnReused(f"BizSn {biz_sn} is already used by {other.biz_type} from "
                              f"{other.origin} on {day}; the day's {family[0].split('.')[0]} "
                              "file lists both by BizSn")

    def _admit_cts_sign(self, origin: str, m: Message, plain: Mapping[str, str]) -> dict[str, Any]:
        fund, wallet = m.text("FundAcct"), m.text("WalletId")
        if m.text("WalletKind") != "PERSONAL":
            raise WalletNotAllowed(f"a {str(m.text('WalletKind')).lower()} wallet cannot be "
                                   "signed: third-party custody needs a personal class-I wallet")
        if m.text("WalletLevel") != "1":
            raise WalletNotAllowed(f"personal wallet level {m.text('WalletLevel')}: "
                                   "third-party custody needs a class-I wallet")
        if self.journal.agreements(fund_acct=fund, active_only=True):
            raise AlreadySigned(f"fund account {fund} already has an agreement")
        if self.journal.agreements(wallet_id=wallet, active_only=True):
            raise AlreadySigned(f"wallet {wallet} already has an agreement")
        biz_sn = str(m.body["BizSn"])
        context = f"{origin}/{biz_sn}"
        self.journal.insert_agreement(Agreement(
            agreement_no=None, broker=origin, bank=m.head.to_party, fund_acct=str(fund),
            wallet_id=str(wallet), wallet_level=str(m.text("WalletLevel")),
            wallet_kind=str(m.text("WalletKind")), status=records.PENDING,
            sign_date=self.today().isoformat(), end_date=None,
            cust_name=self.sealer.seal(plain["CustName"], context + "/CustName"),
            id_type=str(m.text("IdType")),
            id_no_sealed=self.sealer.seal(plain["IdNo"], context + "/IdNo"),
            phone_sealed=(self.sealer.seal(plain["Phone"], context + "/Phone")
                          if "Phone" in plain else None),
            sign_biz_sn=biz_sn))
        return {"fund_acct": fund, "wallet_id": wallet}

    def _admit_cts_unsign(self, origin: str, m: Message, _: Mapping[str, str]) -> dict[str, Any]:
        fund, wallet, number = m.text("FundAcct"), m.text("WalletId"), m.text("AgreementNo")
        active = [a for a in self.journal.agreements(fund_acct=fund, wallet_id=wallet)
                  if a.status == "ACTIVE" and a.agreement_no == number
                  and (a.broker, a.bank) == (origin, m.head.to_party)]
        if not active:
            raise NoActiveAgreement(f"no active agreement {number} for {fund}/{wallet}")
        if self.journal.records_of_wallet(str(wallet), TRANSFERS, IN_FLIGHT):
            raise UnsignRefused(f"wallet {wallet} has a transfer in flight")
        if self._services_running(str(wallet)):
            raise UnsignRefused(f"wallet {wallet} has a paid service still in its validity")
        return {"fund_acct": fund, "wallet_id": wallet, "agreement_no": number}

    def _services_running(self, wallet: str) -> bool:
        """A paid order of the wallet, in flight or paid, whose service has not ended and
        that is neither reversed nor refunded in full (the exit report lists them)."""
        return bool(services_in_validity(self.journal, wallet, self.today().isoformat()))

    def _admit_transfer(self, origin: str, m: Message, _: Mapping[str, str]) -> dict[str, Any]:
        fen = _positive(m)
        fund, wallet = m.text("FundAcct"), m.text("WalletId")
        # the agreement must be between these two
        if not self.journal.binds(fund, wallet, (origin, m.head.to_party)):
            raise NoActiveAgreement(f"no active agreement of {m.head.to_party} and {origin} "
                                    f"binds {fund} and {wallet}")
        return {"fund_acct": fund, "wallet_id": wallet, "amount_fen": fen}

    def _admit_give_back(self, origin: str, m: Message, kind: str,
                         original: tuple[str, str, str], wallet: str | None = None) -> Record:
        """Through the one owner of the money invariant (gateway/givebacks.py)."""
        return givebacks.admit(self.journal, GiveBack(
            kind, origin, m.head.to_party, original, _positive(m), wallet)).original

    def _admit_xfer_reverse(self, origin: str, m: Message,
                            _: Mapping[str, str]) -> dict[str, Any] | Repeat:
        key = (str(m.body["OrigFrom"]), str(m.body["OrigType"]), str(m.body["OrigBizSn"]))
        first = self._first_reversal(origin, m, key)
        if first is not None:
            return first
        orig = self._admit_give_back(origin, m, givebacks.REVERSAL, key)
        # a reversal of a transfer is listed with it in the XFER file (fund account and
        # wallet); one of a PAY.ORDER or OTC.SUBSCRIBE is not (§8): its original shows R
        transfer = orig.biz_type in ("XFER.IN", "XFER.OUT")
        return {"orig_type": key[1], "orig_from": key[0], "orig_biz_sn": key[2],
                "amount_fen": orig.amount_fen,
                "fund_acct": orig.fund_acct if transfer else None,
                "wallet_id": orig.wallet_id if transfer else None}

    def _first_reversal(self, origin: str, m: Message,
                        key: tuple[str, str, str]) -> Repeat | None:
        """§6 "a reversal already done returns its first result": the original is REVERSED
        (by a peer's reversal: its answer; by the gateway's queue: 0000), or the gateway's
        own reversal of it is still unacknowledged (B330, in progress)."""
        acct = givebacks.account(self.journal, key)
        if acct is None or acct.original.state not in (records.REVERSED, records.REVERSING):
            return None
        g = GiveBack(givebacks.REVERSAL, origin, m.head.to_party, key, _positive(m))
        if not givebacks.names_original(g, acct.original) or g.amount_fen != acct.moved_fen:
            return None  # refused by givebacks.admit, as any other
        biz_sn, (_, otype, osn) = m.body["BizSn"], key
        done = [r for r in acct.give_backs if r.biz_type == givebacks.REVERSAL
                and r.state == records.SUCCEEDED and r.response_xml]
        if done:
            from .message import parse_message

            return Repeat({**parse_message(done[0].response_xml or b"").body, "BizSn": biz_sn})
        if acct.original.state == records.REVERSED:
            return Repeat({"Result": "0000",
                           "ResultText": f"{otype} {osn} was already reversed by the gateway "
                                         f"(acknowledged by {acct.original.receiver})"})
        return Repeat({"Result": TimedOutReversing.code,
                       "ResultText": f"{otype} {osn} timed out and the gateway is reversing "
                                     "it; ask again for its result"})

    def _admit_pay_order(self, origin: str, m: Message, _: Mapping[str, str]) -> dict[str, Any]:
        return {"amount_fen": _positive(m), "wallet_id": m.text("WalletId"),
                "order_no": m.text("OrderNo"), "product_code": m.text("ProductCode"),
                "service_end": m.text("ServiceEnd")}

    def _admit_pay_refund(self, origin: str, m: Message, _: Mapping[str, str]) -> dict[str, Any]:
        osn = str(m.body["OrigBizSn"])
        orig = self._admit_give_back(origin, m, givebacks.REFUND, (origin, "PAY.ORDER", osn))
        return {"amount_fen": _positive(m), "orig_type": "PAY.ORDER", "orig_from": origin,
                "orig_biz_sn": osn, "wallet_id": orig.wallet_id, "order_no": orig.order_no}

    def _admit_otc_subscribe(self, origin: str, m: Message, _: Mapping[str, str]) -> dict[str, Any]:
        wallet = str(m.text("CorpWalletId"))
        if m.text("WalletKind") != "CORPORATE":
            raise WalletNotAllowed("income certificates are subscribed from corporate wallets")
        # known as PERSONAL: by an agreement the bank accepted (ACTIVE/ENDED) or one in
        # flight; a sign the bank refused (FAILED) proves nothing about the wallet
        if any(a.wallet_kind == "PERSONAL" and a.status != records.FAILED
               for a in self.journal.agreements(wallet_id=wallet)):
            raise WalletNotAllowed(f"wallet {wallet} is registered as a personal wallet")
        return {"amount_fen": _positive(m), "wallet_id": wallet, "order_no": m.text("OrderNo"),
                "product_code": m.text("ProductCode")}

    def _admit_otc_redeem(self, origin: str, m: Message, _: Mapping[str, str]) -> dict[str, Any]:
        osn = str(m.body["OrigBizSn"])
        orig = self._admit_give_back(origin, m, givebacks.REDEMPTION,
                                     (origin, "OTC.SUBSCRIBE", osn), str(m.text("CorpWalletId")))
        return {"amount_fen": _positive(m), "orig_type": "OTC.SUBSCRIBE", "orig_from": origin,
                "orig_biz_sn": osn, "wallet_id": orig.wallet_id, "order_no": orig.order_no}

    # --- after the answer -------------------------------------------------------
    #: Fields a bank's successful answer must carry (§6 "Responses carry …").
    REQUIRED_ON_SUCCESS: dict[str, tuple[str, ...]] = {
        "CTS.SIGN": ("AgreementNo",), "XFER.IN": ("BankSn", "SweepRef"),
        "XFER.OUT": ("BankSn",), "PAY.ORDER": ("BankSn",), "OTC.SUBSCRIBE": ("BankSn",)}

    def check_answer(self, rec: Record, response: Message, responder_role: str) -> None:
        """An answer must be of the request's response Type and name its BizSn, and a
        bank's ``0000`` must carry the fields §6 lists for it; otherwise it settles
        nothing (E111 to the responder)."""
        # rec.biz_type is the request's business type ("XFER.OUT", "XFER.REVERSE", …) for
        # every record the relay keeps pending; the gateway's own reversals are not
        # records and are matched before this (ReversalQueue.answered)
        want = rec.biz_type + ".RSP"
        if response.type != want:
            raise SchemaInvalid(f"Msg/Head/Type: {response.type} does not answer the "
                                f"request's {rec.biz_type}.REQ (expected {want})",
                                ref_msg_id=response.head.msg_id)
        got = response.text("BizSn")
        if got is not None and got != rec.biz_sn:
            raise SchemaInvalid(f"Msg/Body/BizSn: {got} does not match the request's "
                                f"{rec.biz_sn}", ref_msg_id=response.head.msg_id)
        if response.text("Result") != "0000" or responder_role != "BANK":
            return
        missing = [n for n in self.REQUIRED_ON_SUCCESS.get(rec.biz_type, ())
                   if not response.text(n)]
        if missing:
            raise SchemaInvalid(f"{response.type} with Result 0000 lacks "
                                f"{', '.join(missing)} (§6)", ref_msg_id=response.head.msg_id)

    def answered(self, rec: Record, response: Message, now: dt.datetime,
                 at: float) -> Settlement:
        """What ``response`` (checked by :meth:`check_answer`) does to ``rec``, still
        PENDING: the record's new state and fields, and what the originator gets."""
        result = str(response.text("Result"))
        settled = Settlement(records.transition(rec.state, records.outcome(result)), result,
                             {"bank_sn": response.text("BankSn"),
                              "sweep_ref": response.text("SweepRef")})
        settle = BUSINESS_TYPES[rec.biz_type].settle
        if settle is not None:
            settle(self, rec, response, settled, now, at)
        return settled

    def _settle_sign(self, rec: Record, response: Message, s: Settlement,
                     now: dt.datetime, at: float) -> None:
        number = response.text("AgreementNo") if s.result == "0000" else None
        holder = self.journal.agreement_by_no(number) if number else None
        if holder is not None and (holder.broker, holder.sign_biz_sn) != (rec.origin, rec.biz_sn):
            self._agreement_conflict(rec, number or "", holder, s)
            return
        self.journal.settle_agreement(rec.origin, rec.biz_sn,
                                      "ACTIVE" if number else records.FAILED, number)
        s.changes["agreement_no"] = number

    def _agreement_conflict(self, rec: Record, number: str, holder: Agreement,
                            s: Settlement) -> None:
        """§6: a 0000 carrying an AgreementNo already in use settles the record FAILED,
        answers the broker B399, frees the wallet and raises an alert."""
        text = (f"{rec.receiver} answered CTS.SIGN {rec.biz_sn} with AgreementNo {number}, "
                f"which is already agreement {holder.fund_acct}/{holder.wallet_id} "
                f"({holder.status}); not signed, reconcile with {rec.receiver}")
        self.journal.settle_agreement(rec.origin, rec.biz_sn, records.FAILED, None)
        s.state = records.transition(rec.state, records.FAILED)
        s.result = RejectedByCounterparty.code
        s.own_answer = {"Result": s.result, "ResultText": text}
        self.alerts.raise_alert("agreement_conflict", CRITICAL, f"{rec.origin}/{rec.biz_sn}",
                                text)

    def _settle_unsign(self, rec: Record, response: Message, s: Settlement,
                       now: dt.datetime, at: float) -> None:
        if s.result == "0000" and rec.agreement_no:
            self.journal.end_agreement(rec.agreement_no, self.today().isoformat())

    def _settle_subscribe(self, rec: Record, response: Message, s: Settlement,
                          now: dt.datetime, at: float) -> None:
        if s.result == "0000":
            book = self.calendar.book_date(now).isoformat()
            s.changes["book_date"] = book
            s.fill["BookDate"] = book

    def _settle_reversal(self, rec: Record, response: Message, s: Settlement,
                         now: dt.datetime, at: float) -> None:
        if s.result == "0000":
            key = (str(rec.orig_from), str(rec.orig_type), str(rec.orig_biz_sn))
            self.mark_reversed(key, at)
            s.reversed_original = key

    def mark_reversed(self, key: tuple[str, str, str], at: float) -> bool:
        """A reversal of ``key`` was acknowledged: the original is REVERSED, whatever it
        was but FAILED (a receiver acknowledges the reversal of a failed original too)."""
        orig = self.journal.record(*key)
        if orig is None or not records.allowed(orig.state, records.REVERSED):
            return False
        self.journal.update_record(key, at,
                                   state=records.transition(orig.state, records.REVERSED))
        return True


Admit = Callable[[Rules, str, Message, Mapping[str, str]], dict[str, Any] | Repeat]
Settle = Callable[[Rules, Record, Message, Settlement, dt.datetime, float], None]


@dataclass(frozen=True, slots=True)
class BusinessType:
    """One §6 request type as data: how it is admitted and how an answer settles it."""

    admit: Admit
    settle: Settle | None = None
    #: the originals it gives back (gateway/givebacks.py), if it is a give-back
    gives_back: tuple[str, ...] = ()

    @property
    def is_give_back(self) -> bool:
        return bool(self.gives_back)


#: Every relayed §6 type (the queries are answered by the gateway: gateway/queries.py).
#: Whether a timeout reverses it is catalog.REVERSIBLE; who may send it catalog.ROUTES.
BUSINESS_TYPES: dict[str, BusinessType] = {
    "CTS.SIGN": BusinessType(Rules._admit_cts_sign, Rules._settle_sign),
    "CTS.UNSIGN": BusinessType(Rules._admit_cts_unsign, Rules._settle_unsign),
    "XFER.IN": BusinessType(Rules._admit_transfer),
    "XFER.OUT": BusinessType(Rules._admit_transfer),
    "XFER.REVERSE": BusinessType(Rules._admit_xfer_reverse, Rules._settle_reversal,
                                 givebacks.GIVES_BACK[givebacks.REVERSAL]),
    "PAY.ORDER": BusinessType(Rules._admit_pay_order),
    "PAY.REFUND": BusinessType(Rules._admit_pay_refund,
                               gives_back=givebacks.GIVES_BACK[givebacks.REFUND]),
    "OTC.SUBSCRIBE": BusinessType(Rules._admit_otc_subscribe, Rules._settle_subscribe),
    "OTC.REDEEM": BusinessType(Rules._admit_otc_redeem,
                               gives_back=givebacks.GIVES_BACK[givebacks.REDEMPTION]),
}

assert set(BUSINESS_TYPES) == {t for t, r in catalog.ROUTES.items()
                               if r.to != catalog.TO_GATEWAY}
