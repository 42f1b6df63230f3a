"""Requests a simulated party originates, booked as its core system would book them.

Shared by ``gateway demo`` (its scripted business day) and ``gateway sim broker
--script/--rate``: one place builds the §6 request bodies from the party's own
ledger, moves money aside before sending (an XFER.OUT's hold at the broker, an
XFER.IN's hold at the bank), books the answer, and refuses locally what the core
itself would never send (an unsign while the fund account still holds funds).
"""
from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task

from ..errors import CounterpartyNotConnected
from ..message import Message
from ..rules import to_fen
from .runtime import Sim


@dataclass(frozen=True)
class Reply:
    """What became of one request: the Result (or SYS.ERROR code), its text and the
    answer's body; ``local`` when the party refused it itself and sent nothing."""

    result: str
    text: str = ""
    body: Mapping[str, Any] = field(default_factory=dict)
    local: bool = False

    @property
    def shown(self) -> str:
        return self.result + ("(local)" if self.local else "")


#: §4: a BizSn is [A-Za-z0-9]{1,32}.
BIZSN_MAX = 32


def serial(party: str, middle: str, seq: int) -> str:
    """``party + middle + seq`` (at least 4 digits) as a BizSn; ValueError if it would not
    fit the 32 characters of §4 (a 12-character PartyId leaves room for 99,999 a run)."""
    sn = f"{party}{middle}{seq:04d}"
    if len(sn) > BIZSN_MAX or not sn.isalnum() or not sn.isascii():
        raise ValueError(f"BizSn {sn!r} is not 1-32 letters and digits (§4)")
    return sn


def reply_of(answer: Message) -> Reply:
    body = answer.body
    return Reply(str(body.get("Result") or body.get("Code")),
                 str(body.get("ResultText", body.get("Text", ""))), dict(body))


class Originator:
    """The requests one simulated party sends (to ``counterparty`` via the gateway)."""

    def __init__(self, sim: Sim, counterparty: str, reactor: Any,
                 stamp: str | None = None) -> None:
        self.sim, self.counterparty, self.reactor = sim, counterparty, reactor
        self.gateway = sim.node.gateway.party
        self.party = sim.node.config.party
        #: BizSn = PartyId + letter + stamp + sequence (§4: a BizSn begins with its
        #: originator's PartyId): unique per run (default stamp: the start second).
        self.stamp = stamp if stamp is not None else f"{sim.node.local_now():%Y%m%d%H%M%S}"
        self._seq = itertools.count(1)

    @property
    def book(self) -> Any:
        return self.sim.book

    def sn(self, letter: str) -> str:
        """A new BizSn: ``<PartyId><letter><stamp><sequence, 4 digits or more>``."""
        return serial(self.party, letter + self.stamp, next(self._seq))

    # --- the wire ---------------------------------------------------------------------
    def send(self, msg_type: str, body: Mapping[str, Any], to: str | None = None,
             secret: Mapping[str, str] | None = None) -> defer.Deferred[Reply]:
        """Send a request as it is (no booking); fires with its Reply."""
        d: defer.Deferred[Message] = defer.Deferred()
        try:
            self.sim.node.request(msg_type, body, to or self.counterparty, d.callback, secret)
        except CounterpartyNotConnected as exc:
            return defer.succeed(Reply("S901", str(exc), local=True))
        self.sim.factory.schedule_flush()  # one commit per reactor turn, then the writes
        return d.addCallback(reply_of)

    # --- account (CTS) ------------------------------------------------------------------
    def sign(self, fund_acct: str, sn: str | None = None, level: str = "1",
             id_no: str | None = None) -> defer.Deferred[Reply]:
        """CTS.SIGN for a client of the broker's ledger (``id_no`` overrides its KYC)."""
        client = self.book.client(fund_acct)
        if client is None:
            return defer.succeed(Reply("B300", f"no fund account {fund_acct}", local=True))
        body = {"BizSn": sn or self.sn("S"), "FundAcct": fund_acct, "WalletId": client.link,
                "WalletLevel": level, "WalletKind": "PERSONAL", "CustName": client.name,
                "IdType": client.id_type, "IdNo": "", "Phone": None, "Channel": "APP"}
        return self.send("CTS.SIGN.REQ", body, secret={"IdNo": id_no or client.id_no or ""})

    @defer.inlineCallbacks
    def unsign(self, fund_acct: str, sn: str | None = None):  # type: ignore[no-untyped-def]
        """CTS.UNSIGN of the client's active agreement; the broker refuses it itself
        (B304, nothing sent) while the fund account holds funds."""
        client = self.book.client(fund_acct)
        if client is None:
            return Reply("B300", f"no fund account {fund_acct}", local=True)
        if not self.book.may_unsign(fund_acct):
            return Reply("B304", "funds left in the fund account: not sent", local=True)
        agreement = yield self.agreement_of(fund_acct)
        reply = yield self.send("CTS.UNSIGN.REQ", {
            "BizSn": sn or self.sn("U"), "FundAcct": fund_acct, "WalletId": client.link,
            "AgreementNo": agreement or "NONE"})
        return reply

    @defer.inlineCallbacks
    def agreement_of(self, fund_acct: str):  # type: ignore[no-untyped-def]
        """The client's ACTIVE AgreementNo from the gateway's registry, or None."""
        reply = yield self.send("CTS.QUERY.REQ", {"FundAcct": fund_acct}, to=self.gateway)
        found = [a for a in reply.body.get("Agreement", []) if a.get("Status") == "ACTIVE"]
        return found[0]["AgreementNo"] if found else None

    # --- transfers ------------------------------------------------------------------------
    @staticmethod
    def xfer_body(sn: str, fund_acct: str, wallet_id: str, amount: str) -> dict[str, Any]:
        return {"BizSn": sn, "FundAcct": fund_acct, "WalletId": wallet_id, "Amount": amount,
                "Ccy": "CNY"}

    @defer.inlineCallbacks
    def transfer(self, kind: str, fund_acct: str, amount: str, sn: str | None = None):  # type: ignore[no-untyped-def]
        """A broker-originated XFER.IN/XFER.OUT: an XFER.OUT's money is held before it is
        sent (B310 locally if it is not there); the answer is booked at once."""
        client = self.book.client(fund_acct)
        if client is None:
            return Reply("B300", f"no fund account {fund_acct}", local=True)
        sn = sn or self.sn("V")
        fen = to_fen(amount) or 0
        if kind == "XFER.OUT" and not self.book.hold(sn, fund_acct, fen):
            return Reply("B310", "insufficient funds in the fund account: not sent", local=True)
        reply = yield self.send(kind + ".REQ", self.xfer_body(sn, fund_acct, str(client.link),
                                                             amount))
        self.book.settle(kind, sn, fund_acct, str(client.link), fen, reply.result)
        self.sim.factory.schedule_flush()
        return reply

    @defer.inlineCallbacks
    def bank_transfer(self, fund_acct: str, wallet_id: str, amount: str,
                      sn: str | None = None):  # type: ignore[no-untyped-def]
        """A bank-originated XFER.IN: the bank holds the wallet's money in the dedicated
        wallet, then sweeps it (0000) or gives it back."""
        sn, fen = sn or self.sn("K"), to_fen(amount) or 0
        refused = self.book.hold(sn, wallet_id, fen)
        if refused:
            return Reply(refused, "refused by the bank's own checks: not sent", local=True)
        reply = yield self.send("XFER.IN.REQ", self.xfer_body(sn, fund_acct, wallet_id, amount))
        self.book.settle(sn, fund_acct, wallet_id, fen, reply.result)
        self.sim.factory.schedule_flush()
        return reply

    @defer.inlineCallbacks
    def wait_state(self, biz_sn: str, orig_type: str = "XFER.IN", state: str = "REVERSED",
                   seconds: float = 10.0, every: float = 0.2):  # type: ignore[no-untyped-def]
        """Ask the gateway (XFER.QUERY) until the record is in ``state``; the last state."""
        got = "NONE"
        for _ in range(max(1, int(seconds / every))):
            reply = yield self.send("XFER.QUERY.REQ", {"BizSn": biz_sn, "OrigType": orig_type},
                                    to=self.gateway)
            got = str((reply.body.get("Record") or [{}])[0].get("Status") or reply.result)
            if got == state:
                break
            yield task.deferLater(self.reactor, every, lambda: None)
        return got

    # --- paid services and income certificates ------------------------------------------
    def pay(self, wallet_id: str, amount: str, product: str = "L2QUOTE",
            product_kind: str = "LEVEL2", days: int = 30, sn: str | None = None,
            order: str | None = None) -> defer.Deferred[Reply]:
        sn = sn or self.sn("P")
        end = (dt.date.today() + dt.timedelta(days=days)).isoformat()
        return self.send("PAY.ORDER.REQ", {
            "BizSn": sn, "OrderNo": order or "O" + sn, "WalletId": wallet_id, "Amount": amount,
            "Ccy": "CNY", "ProductCode": product, "ProductKind": product_kind,
            "ServiceEnd": end})

    def refund(self, orig_sn: str, amount: str, sn: str | None = None) -> defer.Deferred[Reply]:
        return self.send("PAY.REFUND.REQ", {"BizSn": sn or self.sn("F"), "OrigBizSn": orig_sn,
                                            "Amount": amount})

    def otc_subscribe(self, wallet_id: str, amount: str, product: str = "SY001",
                      wallet_kind: str = "CORPORATE", sn: str | None = None,
                      order: str | None = None) -> defer.Deferred[Reply]:
        sn = sn or self.sn("O")
        return self.send("OTC.SUBSCRIBE.REQ", {
            "BizSn": sn, "OrderNo": order or "SY" + sn, "CorpWalletId": wallet_id,
            "WalletKind": wallet_kind, "ProductCode": product, "Amount": amount, "Ccy": "CNY"})

    def otc_redeem(self, orig_sn: str, wallet_id: str, amount: str,
                   sn: str | None = None) -> defer.Deferred[Reply]:
        return self.send("OTC.REDEEM.REQ", {"BizSn": sn or self.sn("D"), "OrigBizSn": orig_sn,
                                            "CorpWalletId": wallet_id, "Amount": amount})
