"""The reference broker core: client fund accounts, what it books for transfers
it originates or receives, and the local refusal of an unsign with funds left."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..message import Message
from ..rules import fen_text, to_fen
from .ledger import Account, Ledger, Op, biz_key

FUND = "FUND"
WALLETS = "WALLETS"  # the outside world: clients' e-CNY wallets, seen from the broker
HOLD = "HOLD"  # money of an XFER.OUT sent and not yet answered

#: The demo day's clients as the broker's core knows them: fund account, the e-CNY
#: wallet it is linked to, name, ID type and number (the bank's KYC must agree).
CLIENTS = (
    ("100020003000", "0071130812093028", "张三", "01", "110101199003071234"),
    ("100020003018", "0071130812093036", "李四", "01", "110101198805051234"),
    ("100020003026", "0071130812093044", "王五", "01", "110101199512121234"),
)


class BrokerBook:
    """Fund accounts and the broker's side of every transfer."""

    def __init__(self, ledger: Ledger, party: str, today: Callable[[], str],
                 now_iso: Callable[[], str]) -> None:
        self.ledger = ledger
        self.party = party
        self.today = today
        self.now_iso = now_iso

    def seed(self) -> None:
        L = self.ledger
        L.open_account(WALLETS, WALLETS)
        L.open_account(HOLD, HOLD)
        for fund, wallet, name, id_type, id_no in CLIENTS:
            L.open_account(fund, FUND, name=name, id_type=id_type, id_no=id_no, link=wallet)

    def flush(self) -> None:
        self.ledger.flush()

    def balance(self, fund_acct: str) -> int:
        acct = self.ledger.account(fund_acct)
        return acct.balance_fen if acct else 0

    def client(self, fund_acct: str) -> Account | None:
        """A client fund account (name, ID and linked wallet), or None."""
        acct = self.ledger.account(fund_acct)
        return acct if acct is not None and acct.kind == FUND else None

    def clients(self) -> list[Account]:
        return self.ledger.accounts(FUND)

    # --- requests the gateway relays to us (bank-initiated) ---------------------
    def handle(self, message: Message, plain: Mapping[str, str]) -> dict[str, Any] | None:
        body = message.body
        key = biz_key(message.head.from_party, message.kind.business, str(body["BizSn"]))
        op = self.ledger.op(key)
        if op is None:
            op = self._book(key, message)
        return {"Result": op.result,
                "ResultText": "ok" if op.result == "0000" else (op.extra or "refused"),
                "BizSn": op.biz_sn}

    def _book(self, key: str, message: Message) -> Op:
        body, kind = message.body, message.kind.business
        fen = to_fen(message.text("Amount")) or 0
        fund = message.text("FundAcct")
        self.ledger.begin()
        try:
            result, reversed_, text = "0000", 0, None
            acct = self.ledger.account(fund or "")
            buried = self.ledger.tombstone(key)
            if buried is not None:  # reversed before it arrived (see BankBook._book)
                result = "B399"
                reversed_ = int(buried.reversal_origin != message.head.from_party)
                text = f"{kind} {body['BizSn']} was reversed before it arrived; not booked"
            elif kind in ("XFER.IN", "XFER.OUT") and (acct is None or
                                                        acct.link != body.get("WalletId")):
                result = "B300"
            elif kind == "XFER.IN":
                self.ledger.post(key, WALLETS, str(fund), fen, self.today())
            elif kind == "XFER.OUT":
                if acct is not None and acct.balance_fen < fen:
                    result = "B310"
                else:
                    self.ledger.post(key, str(fund), WALLETS, fen, self.today())
            elif kind == "XFER.REVERSE":
                orig = biz_key(str(body["OrigFrom"]), str(body["OrigType"]),
                               str(body["OrigBizSn"]))
                done = self.ledger.op(orig)
                if done is None:
                    self.ledger.bury(orig, key, message.head.from_party, self.now_iso())
                elif done.result == "0000" and not done.reversed:
                    self.ledger.undo(orig, self.today())
                    self.ledger.mark_reversed(orig)
            else:
                result = "B399"
            op = Op(key, kind, message.head.from_party, str(body["BizSn"]),
                    message.head.trade_date or self.today(), self.now_iso(), result, fen,
                    fund, message.text("WalletId"), None, None, text, reversed_)
            self.ledger.book(op)
            self.ledger.commit()
        except BaseException:
            self.ledger.rollback()
            raise
        return op

    # --- transfers we originate ---------------------------------------------------
    def hold(self, biz_sn: str, fund_acct: str, fen: int) -> bool:
        """Before sending XFER.OUT: move the money aside; False if it is not there."""
        if self.balance(fund_acct) < fen:
            return False
        self.ledger.begin()
        self.ledger.post(biz_key(self.party, "XFER.OUT", biz_sn), fund_acct, HOLD, fen,
                         self.today())
        self.ledger.commit()
        return True

    def settle(self, kind: str, biz_sn: str, fund_acct: str, wallet_id: str, fen: int,
               result: str) -> None:
        """Book the answer to a transfer we sent (B330 counts as failed: it is reversed)."""
        key = biz_key(self.party, kind, biz_sn)
        if self.ledger.op(key) is not None:
            return
        self.ledger.begin()
        ok = result == "0000"
        if kind == "XFER.IN" and ok:
            self.ledger.post(key, WALLETS, fund_acct, fen, self.today())
        elif kind == "XFER.OUT":
            self.ledger.post(key, HOLD, WALLETS if ok else fund_acct, fen, self.today())
        self.ledger.book(Op(key, kind, self.party, biz_sn, self.today(), self.now_iso(),
                            result, fen, fund_acct, wallet_id, None, None, None,
                            int(result == "B330")))
        self.ledger.commit()

    def may_unsign(self, fund_acct: str) -> bool:
        """The broker refuses to unsign a client who still has funds."""
        return self.balance(fund_acct) == 0

    def bal_records(self) -> list[list[str]]:
        """§8 BAL D-records: FundAcct, WalletId, Balance of every client."""
        return [[a.id, a.link or "", fen_text(a.balance_fen) if a.balance_fen >= 0
                 else "-" + fen_text(-a.balance_fen)]
                for a in self.ledger.accounts(FUND)]
