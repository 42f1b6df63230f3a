"""PROTOCOL §6 business rules: what the gateway checks before relaying, and what
an answer changes (agreements, booking dates, reversal states).

Plain functions over the journal; no I/O of their own.  ``admit`` raises a
:class:`~gateway.errors.BusinessError` (answered in the response ``Result``)
or returns the fields to keep on the business record.
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from . import records
from .bookdate import Calendar
from .eod.mapping import BIZ_TYPES as FILE_BIZ_TYPES
from .errors import (
    AlreadyReversed,
    AlreadySigned,
    BizSnReused,
    InvalidAmount,
    NoActiveAgreement,
    OriginalNotFound,
    SchemaInvalid,
    TimedOutReversing,
    UnsignRefused,
    WalletNotAllowed,
)
from .fieldcrypto import StorageCipher
from .journal import Agreement, Journal, Record
from .message import Message

TRANSFERS = ("XFER.IN", "XFER.OUT", "XFER.REVERSE")
IN_FLIGHT = (records.PENDING, records.REVERSING)


@dataclass(frozen=True)
class Repeat:
    """``admit`` found the request already done (or still being done by the gateway):
    answer with this body, do not relay, journal no record — asked again, the request
    is judged again, so it gets the final result once there is one."""

    body: Mapping[str, Any]


def to_fen(amount: str | None) -> int | None:
    """``"1234.50"`` -> 123450 (exact: the schema guarantees two decimals)."""
    return None if amount is None else int(Decimal(amount) * 100)


def fen_text(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _positive(message: Message) -> int:
    fen = to_fen(message.text("Amount"))
    if fen is None or fen <= 0:
        raise InvalidAmount(f"amount {message.text('Amount')} must be positive")
    return fen


class Rules:
    """The §6 rule table, applied by the relay to every business request."""

    def __init__(self, journal: Journal, calendar: Calendar, sealer: StorageCipher,
                 today: Callable[[], dt.date]) -> None:
        self.journal = journal
        self.calendar = calendar
        self.sealer = sealer
        self.today = today

    # --- before relaying --------------------------------------------------------
    #: Types one end-of-day file lists together (§8 XFER: IN/OUT/REV; SIGN: SIGN/UNSIGN).
    FILE_FAMILIES: dict[str, tuple[str, ...]] = {
        t: fam for fam in FILE_BIZ_TYPES.values() if len(fam) > 1 for t in fam}

    def admit(self, origin: str, message: Message,
              plaintexts: Mapping[str, str]) -> dict[str, Any] | Repeat:
        self._check_file_unique(origin, message)
        check = getattr(self, "_admit_" + message.kind.business.replace(".", "_").lower())
        return check(origin, message, plaintexts)

    def _check_file_unique(self, origin: str, m: Message) -> None:
        """§6 makes (From, Type, BizSn) unique, but one §8 file lists both parties' records
        of a family by BizSn and refuses duplicates: a BizSn already used that trade date
        between the same two parties in the same family is B312."""
        family = self.FILE_FAMILIES.get(m.kind.business)
        if family is None:
            return
        biz_sn = str(m.body["BizSn"])
        day = m.head.trade_date or self.today().isoformat()
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
            sign_date=self.today().isoformat(), end_date=None, cust_name=str(m.text("CustName")),
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
        today = self.today().isoformat()
        for order in self.journal.records_of_wallet(wallet, ("PAY.ORDER",),
                                                    (records.SUCCEEDED, records.PENDING)):
            if (order.service_end or "") < today:
                continue
            refunds = self.journal.records_referring(order.origin, "PAY.ORDER", order.biz_sn,
                                                     "PAY.REFUND")
            if not any(r.state == records.SUCCEEDED for r in refunds):
                return True
        return False

    def _admit_transfer(self, origin: str, m: Message) -> dict[str, Any]:
        fen = _positive(m)
        fund, wallet = m.text("FundAcct"), m.text("WalletId")
        # the agreement must be between these two
        if not self.journal.binds(fund, wallet, (origin, m.head.to_party)):
            raise NoActiveAgreement(f"no active agreement of {m.head.to_party} and {origin} "
                                    f"binds {fund} and {wallet}")
        return {"fund_acct": fund, "wallet_id": wallet, "amount_fen": fen}

    def _admit_xfer_in(self, origin: str, m: Message, _: Mapping[str, str]) -> dict[str, Any]:
        return self._admit_transfer(origin, m)

    def _admit_xfer_out(self, origin: str, m: Message, _: Mapping[str, str]) -> dict[str, Any]:
        return self._admit_transfer(origin, m)

    def _admit_xfer_reverse(self, origin: str, m: Message,
                            _: Mapping[str, str]) -> dict[str, Any] | Repeat:
        otype, ofrom, osn = (str(m.body[k]) for k in ("OrigType", "OrigFrom", "OrigBizSn"))
        orig = self.journal.record(ofrom, otype, osn)
        if orig is None or {orig.origin, orig.receiver} != {origin, m.head.to_party}:
            raise OriginalNotFound(f"no {otype} {osn} from {ofrom} between these parties")
        fen = _positive(m)
        if fen != orig.amount_fen:
            raise InvalidAmount(f"reversal amount {m.text('Amount')} differs from the "
                                f"original's {fen_text(orig.amount_fen or 0)}")
        done = [r for r in self.journal.records_referring(ofrom, otype, osn, "XFER.REVERSE")
                if r.state == records.SUCCEEDED and r.response_xml]
        if done:
            from .message import parse_message

            first = parse_message(done[0].response_xml or b"")
            return Repeat({**first.body, "BizSn": m.body["BizSn"]})
        if orig.state == records.REVERSED:  # by the gateway, after a relay timeout
            return Repeat({"Result": "0000",
                           "ResultText": f"{otype} {osn} was already reversed by the gateway "
                                         f"after a relay timeout (acknowledged by "
                                         f"{orig.receiver})"})
        if orig.state == records.REVERSING:  # the gateway's reversal is still unacknowledged
            return Repeat({"Result": TimedOutReversing.code,
                           "ResultText": f"{otype} {osn} timed out and the gateway is "
                                         "reversing it; ask again for its result"})
        if any(r.state == records.PENDING for r in
               self.journal.records_referring(ofrom, otype, osn, "XFER.REVERSE")):
            raise AlreadyReversed(f"a reversal of {otype} {osn} is already in flight")
        return {"orig_type": otype, "orig_from": ofrom, "orig_biz_sn": osn, "amount_fen": fen,
                "fund_acct": orig.fund_acct, "wallet_id": orig.wallet_id}

    def _admit_pay_order(self, origin: str, m: Message, _: Mapping[str, str]) -> dict[str, Any]:
        return {"amount_fen": _positive(m), "wallet_id": m.text("WalletId"),
                "order_no": m.text("OrderNo"), "product_code": m.text("ProductCode"),
                "service_end": m.text("ServiceEnd")}

    def _admit_pay_refund(self, origin: str, m: Message, _: Mapping[str, str]) -> dict[str, Any]:
        osn = str(m.body["OrigBizSn"])
        orig = self.journal.record(origin, "PAY.ORDER", osn)
        # the order must have been paid through the bank this refund goes to
        if orig is None or orig.state != records.SUCCEEDED or \
                orig.receiver != m.head.to_party:
            raise OriginalNotFound(f"no paid order {osn} between these parties")
        refunds = self.journal.records_referring(origin, "PAY.ORDER", osn, "PAY.REFUND")
        if any(r.state in (records.PENDING, records.SUCCEEDED) for r in refunds):
            raise AlreadyReversed(f"order {osn} is already refunded")
        fen = _positive(m)
        if fen > (orig.amount_fen or 0):
            raise InvalidAmount("refund exceeds the order amount")
        return {"amount_fen": fen, "orig_type": "PAY.ORDER", "orig_from": origin,
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
        orig = self.journal.record(origin, "OTC.SUBSCRIBE", osn)
        # the subscription must have been made with the bank this redemption goes to
        if orig is None or orig.state != records.SUCCEEDED or \
                orig.wallet_id != m.text("CorpWalletId") or orig.receiver != m.head.to_party:
            raise OriginalNotFound(f"no successful subscription {osn} of that wallet "
                                   "between these parties")
        fen = _positive(m)
        if fen > (orig.amount_fen or 0):
            raise InvalidAmount("redemption exceeds the subscribed amount")
        return {"amount_fen": fen, "orig_type": "OTC.SUBSCRIBE", "orig_from": origin,
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
                 at: float) -> tuple[dict[str, Any], dict[str, str]]:
        """Record changes an answer brings, and Body fields the gateway fills in."""
        ok = response.text("Result") == "0000"
        changes: dict[str, Any] = {"bank_sn": response.text("BankSn"),
                                   "sweep_ref": response.text("SweepRef")}
        fill: dict[str, str] = {}
        if rec.biz_type == "CTS.SIGN":
            number = response.text("AgreementNo") if ok else None
            self.journal.settle_agreement(rec.origin, rec.biz_sn,
                                          "ACTIVE" if ok and number else records.FAILED, number)
            changes["agreement_no"] = number
        elif rec.biz_type == "CTS.UNSIGN" and ok and rec.agreement_no:
            self.journal.end_agreement(rec.agreement_no, self.today().isoformat())
        elif rec.biz_type == "OTC.SUBSCRIBE" and ok:
            book = self.calendar.book_date(now).isoformat()
            changes["book_date"] = book
            fill["BookDate"] = book
        elif rec.biz_type == "XFER.REVERSE" and ok:
            self.mark_reversed((str(rec.orig_from), str(rec.orig_type), str(rec.orig_biz_sn)), at)
        return changes, fill

    def mark_reversed(self, key: tuple[str, str, str], at: float) -> None:
        """A peer's reversal of ``key`` succeeded: the original is REVERSED if the machine
        allows it (an original still PENDING or already FAILED/REVERSED stays as it is)."""
        orig = self.journal.record(*key)
        if orig is not None and records.allowed(orig.state, records.REVERSED):
            self.journal.update_record(key, at,
                                       state=records.transition(orig.state, records.REVERSED))
