"""The reference bank host's books: e-CNY wallets, the client-dedicated corporate
wallet and the client settlement aggregate account (PROTOCOL §6, issue 6).

``BankBook.handle`` books one request from the gateway in one durable SQLite
transaction and returns the response body (``None`` means: booked, answer
withheld — how the demo and tests make a relayed request time out).
"""
from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from ..bookdate import Calendar
from ..eod.mapping import REVERSED_TRANSFERS
from ..message import Message
from ..rules import fen_text, to_fen
from .ledger import Ledger, Op, biz_key

PERSONAL, CORPORATE = "WALLET_PERSONAL", "WALLET_CORPORATE"
DEDICATED = "DEDICATED"  # the bank's client-dedicated corporate wallet
AGGREGATE = "AGGREGATE"  # the client trading settlement aggregate account
MERCHANT = "MERCHANT"  # the broker's paid-service income account
PRODUCT = "PRODUCT"  # the broker's income-certificate (OTC) account

#: e-CNY wallet class limits in fen: (balance cap, per payment, per day); None = none.
#: Classes 2 and 4 as the PBOC publishes them; class 3 and class 1 chosen (docs/simulators.md).
LIMITS: dict[int, tuple[int, int, int] | None] = {
    1: None,
    2: (50_000_000, 5_000_000, 10_000_000),
    3: (2_000_000, 500_000, 1_000_000),
    4: (1_000_000, 200_000, 500_000),
}


class Refused(Exception):
    """A request the bank answers with a non-zero Result."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


def serial(prefix: str, key: str) -> str:
    return prefix + hashlib.sha256(key.encode()).hexdigest()[:20].upper()


class BankBook:
    """Books requests against the ledger; one instance per simulated bank."""

    def __init__(self, ledger: Ledger, party: str, today: Callable[[], str],
                 now_iso: Callable[[], str], calendar: Calendar | None = None) -> None:
        self.ledger = ledger
        self.party = party
        self.today = today
        self.now_iso = now_iso
        #: Business days for OTC BookDate; give it the gateway's holidays (docs/simulators.md).
        self.calendar = calendar or Calendar()
        self.withhold: Callable[[Message], bool] = lambda m: False

    def seed(self, broker: str) -> None:
        """Accounts of a demo business day (idempotent)."""
        L = self.ledger
        L.open_account(DEDICATED, DEDICATED)
        L.open_account(AGGREGATE, AGGREGATE)
        L.open_account(MERCHANT, MERCHANT)
        L.open_account(PRODUCT, PRODUCT)
        L.open_account("0071130812093028", PERSONAL, 20_000_000, level=1, name="张三",
                       id_type="01", id_no="110101199003071234")
        L.open_account("0071130812093036", PERSONAL, 5_000_000, level=1, name="李四",
                       id_type="01", id_no="110101198805051234")
        L.open_account("0071130812093044", PERSONAL, 300_000, level=2, name="王五",
                       id_type="01", id_no="110101199512121234")
        L.open_account("0071130812093051", PERSONAL, 100_000, level=4, name="赵六",
                       id_type="02", id_no="E12345678")
        L.open_account("0099000011112222", CORPORATE, 2_000_000_000, level=1,
                       name="上海某某科技有限公司", id_type="10", id_no="91310000MA1FL0000X")

    def flush(self) -> None:
        self.ledger.flush()

    # --- dispatch -----------------------------------------------------------------
    def handle(self, message: Message, plain: Mapping[str, str]) -> dict[str, Any] | None:
        body = message.body
        key = biz_key(message.head.from_party, message.kind.business, str(body["BizSn"]))
        booked = self.ledger.op(key)
        if booked is None:
            booked = self._book(key, message, plain)
        if self.withhold(message):
            return None
        answer: dict[str, Any] = {"Result": booked.result,
                                  "ResultText": "交易成功" if booked.result == "0000"
                                  else (booked.extra or "refused"),
                                  "BizSn": booked.biz_sn}
        if booked.result == "0000":
            if message.kind.business == "CTS.SIGN":
                answer["AgreementNo"] = booked.ref_sn
            elif message.kind.business != "CTS.UNSIGN":
                answer["BankSn"] = booked.ref_sn
            if booked.sweep_ref:
                answer["SweepRef"] = booked.sweep_ref
        return answer

    def _book(self, key: str, message: Message, plain: Mapping[str, str]) -> Op:
        """Book one request atomically: a refusal rolls back whatever the handler had
        posted (savepoint), then the refused operation itself is booked."""
        handler = getattr(self, "_" + message.kind.business.replace(".", "_").lower())
        body = message.body
        self.ledger.begin()
        try:
            reversed_ = 0
            try:
                buried = self.ledger.tombstone(key)
                if buried is not None:
                    # §6 made us answer its reversal with success: it must not move money now
                    # (shown R when the gateway reversed it, as the gateway's journal says)
                    reversed_ = int(buried.reversal_origin != message.head.from_party)
                    raise Refused("B399", f"{message.kind.business} {body['BizSn']} was "
                                  f"reversed before it arrived ({buried.reversal_key}); "
                                  "not booked")
                ref, sweep = handler(key, body, plain)
                result, text = "0000", None
            except Refused as exc:
                self.ledger.rollback()
                self.ledger.begin()
                ref, sweep, result, text = None, None, exc.code, exc.text
            op = self._op(key, message, result, ref, sweep, text, reversed_)
            self.ledger.book(op)
            self.ledger.commit()
        except BaseException:
            self.ledger.rollback()
            raise
        return op

    def _op(self, key: str, message: Message, result: str, ref: str | None,
            sweep: str | None, text: str | None, reversed_: int) -> Op:
        body, kind = message.body, message.kind.business
        fund = message.text("FundAcct")
        wallet = message.text("WalletId") or message.text("CorpWalletId")
        if kind == "XFER.REVERSE":  # the original's account and wallet
            orig = self.ledger.op(biz_key(str(body["OrigFrom"]), str(body["OrigType"]),
                                          str(body["OrigBizSn"])))
            fund, wallet = (orig.fund_acct, orig.wallet_id) if orig else (None, None)
        ok = result == "0000"
        agreement = (ref if kind == "CTS.SIGN" and ok
                     else message.text("AgreementNo") if kind == "CTS.UNSIGN" else None)
        return Op(biz_key=key, biz_type=kind, origin=message.head.from_party,
                  biz_sn=str(body["BizSn"]), day=message.head.trade_date or self.today(),
                  at=self.now_iso(), result=result, amount_fen=to_fen(message.text("Amount")),
                  fund_acct=fund, wallet_id=wallet, ref_sn=ref, sweep_ref=sweep, extra=text,
                  reversed=reversed_, order_no=message.text("OrderNo"),
                  product_code=message.text("ProductCode"), agreement_no=agreement,
                  book_date=self._book_date() if kind == "OTC.SUBSCRIBE" and ok else None,
                  orig_type=message.text("OrigType"))

    def _book_date(self) -> str:
        """§6 OTC booking date by the gateway's rule, from our confirmation time."""
        return self.calendar.book_date(dt.datetime.fromisoformat(self.now_iso())).isoformat()

    # --- checks -------------------------------------------------------------------
    def _wallet(self, wallet_id: str, kind: str = PERSONAL):  # type: ignore[no-untyped-def]
        acct = self.ledger.account(wallet_id)
        if acct is None or acct.kind not in (PERSONAL, CORPORATE):
            raise Refused("B300", f"wallet {wallet_id} unknown at {self.party}")
        if kind == CORPORATE and acct.kind != CORPORATE:
            raise Refused("B302", "not a corporate wallet")
        return acct

    def _pay_out(self, key: str, wallet_id: str, to: str, fen: int, kind: str = PERSONAL) -> None:
        acct = self._wallet(wallet_id, kind)
        limits = LIMITS.get(acct.level or 1)
        day = self.today()
        if limits is not None and acct.kind == PERSONAL:
            _, per_payment, per_day = limits
            spent = acct.out_today_fen if acct.out_day == day else 0
            if fen > per_payment or spent + fen > per_day:
                raise Refused("B302", f"class {acct.level} wallet limit exceeded")
        if acct.balance_fen < fen:
            raise Refused("B310", "insufficient wallet balance")
        self.ledger.post(key, wallet_id, to, fen, day,
                         limit_use=limits is not None and acct.kind == PERSONAL)

    def _pay_in(self, key: str, source: str, wallet_id: str, fen: int) -> None:
        acct = self._wallet(wallet_id)
        limits = LIMITS.get(acct.level or 1)
        if limits is not None and acct.kind == PERSONAL and acct.balance_fen + fen > limits[0]:
            raise Refused("B302", f"class {acct.level} wallet balance cap exceeded")
        src = self.ledger.account(source)
        if src is None or src.balance_fen < fen:
            raise Refused("B310", f"insufficient funds in {source}")
        self.ledger.post(key, source, wallet_id, fen, self.today())

    def _bound(self, body: Mapping[str, Any]) -> None:
        acct = self._wallet(str(body["WalletId"]))
        if acct.link != body.get("FundAcct"):
            raise Refused("B300", "wallet not signed to that fund account")

    # --- business -----------------------------------------------------------------
    def _cts_sign(self, key: str, body: Mapping[str, Any], plain: Mapping[str, str]):  # type: ignore[no-untyped-def]
        acct = self._wallet(str(body["WalletId"]))
        if (acct.name, acct.id_type, acct.id_no) != (plain.get("CustName"), body["IdType"],
                                                     plain.get("IdNo")):
            raise Refused("B303", "identity does not match the wallet's KYC")
        if acct.level != 1:
            raise Refused("B302", "third-party custody needs a class-I wallet")
        if acct.link:
            raise Refused("B301", "wallet already signed")
        self.ledger.set_link(acct.id, str(body["FundAcct"]))
        return serial("AG", key), None

    def _cts_unsign(self, key: str, body: Mapping[str, Any], _: Mapping[str, str]):  # type: ignore[no-untyped-def]
        self._bound(body)
        self.ledger.set_link(str(body["WalletId"]), None)
        return serial("UN", key), None

    def _xfer_in(self, key: str, body: Mapping[str, Any], _: Mapping[str, str]):  # type: ignore[no-untyped-def]
        """Wallet → dedicated corporate wallet → swept at once into the aggregate account."""
        self._bound(body)
        fen = to_fen(str(body["Amount"])) or 0
        self._pay_out(key, str(body["WalletId"]), DEDICATED, fen)
        self.ledger.post(key, DEDICATED, AGGREGATE, fen, self.today())
        return serial("BK", key), serial("SW", key)

    def _xfer_out(self, key: str, body: Mapping[str, Any], _: Mapping[str, str]):  # type: ignore[no-untyped-def]
        """Aggregate account → dedicated corporate wallet → the client's wallet."""
        self._bound(body)
        fen = to_fen(str(body["Amount"])) or 0
        agg = self.ledger.account(AGGREGATE)
        if agg is None or agg.balance_fen < fen:
            raise Refused("B310", "insufficient settlement funds")
        self.ledger.post(key, AGGREGATE, DEDICATED, fen, self.today())
        self._pay_in(key, DEDICATED, str(body["WalletId"]), fen)
        return serial("BK", key), None

    def _xfer_reverse(self, key: str, body: Mapping[str, Any], _: Mapping[str, str]):  # type: ignore[no-untyped-def]
        """Undo the original exactly once; unknown or failed originals are success (§6).
        An unknown one is buried: if it arrives later, it is refused (no money moves)."""
        orig = biz_key(str(body["OrigFrom"]), str(body["OrigType"]), str(body["OrigBizSn"]))
        op = self.ledger.op(orig)
        if op is None:
            self.ledger.bury(orig, key, key.split("|")[0], self.now_iso())
        elif op.result == "0000" and not op.reversed:
            self.ledger.undo(orig, self.today())
            self.ledger.mark_reversed(orig)
        return serial("RV", key), None

    def _pay_order(self, key: str, body: Mapping[str, Any], _: Mapping[str, str]):  # type: ignore[no-untyped-def]
        self._pay_out(key, str(body["WalletId"]), MERCHANT, to_fen(str(body["Amount"])) or 0)
        return serial("PY", key), None

    def _pay_refund(self, key: str, body: Mapping[str, Any], _: Mapping[str, str]):  # type: ignore[no-untyped-def]
        orig = self.ledger.op(biz_key(key.split("|")[0], "PAY.ORDER", str(body["OrigBizSn"])))
        if orig is None or orig.result != "0000":
            raise Refused("B313", "original order not found")
        fen = to_fen(str(body["Amount"])) or 0
        self.ledger.post(key, MERCHANT, str(orig.wallet_id), fen, self.today())
        return serial("RF", key), None

    def _otc_subscribe(self, key: str, body: Mapping[str, Any], _: Mapping[str, str]):  # type: ignore[no-untyped-def]
        self._pay_out(key, str(body["CorpWalletId"]), PRODUCT, to_fen(str(body["Amount"])) or 0,
                      kind=CORPORATE)
        return serial("OT", key), None

    def _otc_redeem(self, key: str, body: Mapping[str, Any], _: Mapping[str, str]):  # type: ignore[no-untyped-def]
        fen = to_fen(str(body["Amount"])) or 0
        wallet = str(body["CorpWalletId"])
        self._wallet(wallet, CORPORATE)
        self.ledger.post(key, PRODUCT, wallet, fen, self.today())
        return serial("OR", key), None

    # --- transfers the bank originates (a client moves money in the bank's app) ----
    def hold(self, biz_sn: str, wallet_id: str, fen: int) -> str | None:
        """Before sending XFER.IN: wallet → dedicated wallet; the refusal code, or None."""
        key = biz_key(self.party, "XFER.IN", biz_sn)
        self.ledger.begin()
        try:
            self._pay_out(key, wallet_id, DEDICATED, fen)
        except Refused as exc:
            self.ledger.rollback()
            return exc.code
        self.ledger.commit()
        return None

    def settle(self, biz_sn: str, fund_acct: str, wallet_id: str, fen: int,
               result: str) -> None:
        """The broker answered: sweep into the aggregate account, or give the money back."""
        key = biz_key(self.party, "XFER.IN", biz_sn)
        if self.ledger.op(key) is not None:
            return
        self.ledger.begin()
        ok = result == "0000"
        if ok:
            self.ledger.post(key, DEDICATED, AGGREGATE, fen, self.today())
        else:  # the hold is undone, and with it the day's limit usage
            self.ledger.undo(key, self.today())
        # B330: the gateway reverses it at the broker; its journal says REVERSED (R)
        self.ledger.book(Op(key, "XFER.IN", self.party, biz_sn, self.today(), self.now_iso(),
                            result, fen, fund_acct, wallet_id, serial("BK", key) if ok else None,
                            serial("SW", key) if ok else None, None, int(result == "B330")))
        self.ledger.commit()

    # --- end of day (§8) -------------------------------------------------------------
    def eod_records(self, day: str, broker: str, gateway: str) -> dict[str, list[list[str]]]:
        """D-records of the four files the bank writes for ``day`` with ``broker``:
        XFER, SIGN, PAY (orders) and OTC (subscriptions); refunds and redemptions are
        not listed (docs/eod.md)."""
        return {"XFER": self.xfer_records(day, broker, gateway),
                "SIGN": self._records(day, broker, ("CTS.SIGN", "CTS.UNSIGN"), self._sign_row),
                "PAY": self._records(day, broker, ("PAY.ORDER",), self._pay_row),
                "OTC": self._records(day, broker, ("OTC.SUBSCRIBE",), self._otc_row)}

    def xfer_records(self, day: str, broker: str, gateway: str) -> list[list[str]]:
        """§8 XFER D-records of the day with ``broker`` (gateway reversals show as R).
        A reversal of a PAY.ORDER or OTC.SUBSCRIBE is no transfer and is not listed:
        its original shows R in the PAY/OTC file."""
        out: list[list[str]] = []
        direction = {"XFER.IN": "IN", "XFER.OUT": "OUT", "XFER.REVERSE": "REV"}
        for op in self.ledger.ops(day):
            if op.biz_type not in direction or op.origin == gateway:
                continue
            if op.origin not in (broker, self.party) or not _of_a_transfer(op):
                continue
            out.append([op.biz_sn, direction[op.biz_type], op.fund_acct or "",
                        op.wallet_id or "", fen_text(op.amount_fen or 0), _status(op),
                        op.ref_sn or "", op.sweep_ref or "", op.at])
        return out

    def _records(self, day: str, broker: str, kinds: tuple[str, ...],
                 row: Callable[[Op], list[str]]) -> list[list[str]]:
        return [row(op) for op in self.ledger.ops(day)
                if op.biz_type in kinds and op.origin == broker]

    @staticmethod
    def _sign_row(op: Op) -> list[str]:
        action = "SIGN" if op.biz_type == "CTS.SIGN" else "UNSIGN"
        return [op.biz_sn, action, op.fund_acct or "", op.wallet_id or "",
                op.agreement_no or "", _status(op), op.at]

    @staticmethod
    def _pay_row(op: Op) -> list[str]:
        return [op.biz_sn, op.order_no or "", op.wallet_id or "", fen_text(op.amount_fen or 0),
                _status(op), op.product_code or "", op.at]

    @staticmethod
    def _otc_row(op: Op) -> list[str]:
        return [op.biz_sn, op.order_no or "", op.wallet_id or "", fen_text(op.amount_fen or 0),
                _status(op), op.book_date or "", op.at]


def _of_a_transfer(op: Op) -> bool:
    """Whether a transfer-file op is a transfer or reverses one (§8 ``REV``).  A reversal
    booked before ``orig_type`` was kept is judged by its FundAcct: only a transfer has one."""
    if op.biz_type != "XFER.REVERSE":
        return True
    if op.orig_type is None:
        return op.fund_acct is not None
    return op.orig_type in REVERSED_TRANSFERS


def _status(op: Op) -> str:
    """§8 Status: R reversed, S succeeded, F failed."""
    return "R" if op.reversed else ("S" if op.result == "0000" else "F")
