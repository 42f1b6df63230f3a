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
import logging
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task

from ..errors import CounterpartyNotConnected
from ..message import Message
from ..rules import to_fen
from .bank import BankBook
from .broker import BrokerBook
from .ledger import biz_key
from .outbox import (
    AWAIT_REVERSAL,
    LOST,
    QUERY,
    REPEAT,
    REVERSING,
    SENT,
    SETTLE,
    Entry,
    Outbox,
    judge,
    read_state,
)
from .runtime import Sim

log = logging.getLogger(__name__)


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
    """The requests one simulated party sends (to ``counterparty`` via the gateway), and
    their recovery: each request that creates a record stays in the party's outbox
    (:mod:`gateway.sim.outbox`) until an answer settles it — one that is lost with its
    session, or answered with something that is not an outcome, is sent again (same
    BizSn, same content) or looked up with XFER.QUERY, after a reconnect or a restart
    of either side, until it is settled (docs/simulators.md, "Recovery")."""

    #: Seconds between rounds of the recovery loop.
    RECOVER_EVERY = 0.25
    #: An attempt unanswered this long, its session still up, is taken as lost.
    ATTEMPT_SECONDS = 30.0
    #: Seconds before one request's next round of finding out: the first, then doubling
    #: up to the last (reset by a reconnect).
    BACKOFF_FIRST, BACKOFF_MAX = 0.5, 4.0

    def __init__(self, sim: Sim, counterparty: str, reactor: Any,
                 stamp: str | None = None) -> None:
        self.sim, self.counterparty, self.reactor = sim, counterparty, reactor
        self.gateway = sim.node.gateway.party
        self.party = sim.node.config.party
        #: BizSn = PartyId + letter + stamp + sequence (§4: a BizSn begins with its
        #: originator's PartyId): unique per run (default stamp: the start second).
        self.stamp = stamp if stamp is not None else f"{sim.node.local_now():%Y%m%d%H%M%S}"
        self._seq = itertools.count(1)
        self.outbox = Outbox(sim.ledger)
        #: False once the party stops: no new request is sent (or held for) after that.
        self.accepting = True
        #: How often requests were sent again and looked up (for the run's summary).
        self.repeats = 0
        self.queries = 0
        self._callers: dict[str, list[defer.Deferred[Reply]]] = {}
        self._out: dict[str, tuple[int, float]] = {}  # key → (token, sent at): one at a time
        self._tokens = itertools.count(1)
        self._due: dict[str, float] = {}
        self._rounds: dict[str, int] = {}
        if self.outbox:
            log.warning("%s: %d request(s) unsettled from an earlier run; finding out: %s",
                        self.party, len(self.outbox),
                        "; ".join(e.describe() for e in list(self.outbox.entries.values())[:5]))
        self._loop = task.LoopingCall(self._recover)
        self._loop.clock = reactor
        self._loop.start(self.RECOVER_EVERY, now=False)
        sim.stoppers.append(self.close)
        sim.node.on_each_ready.append(self._reconnected)

    @property
    def book(self) -> Any:
        return self.sim.book

    def sn(self, letter: str) -> str:
        """A new BizSn: ``<PartyId><letter><stamp><sequence, 4 digits or more>``."""
        return serial(self.party, letter + self.stamp, next(self._seq))

    def close(self) -> None:
        """Send nothing more (the party is stopping; its books are about to close)."""
        self.accepting = False
        if self._loop.running:
            self._loop.stop()

    def unsettled(self) -> list[Entry]:
        return list(self.outbox.entries.values())

    # --- the wire ---------------------------------------------------------------------
    def send(self, msg_type: str, body: Mapping[str, Any], to: str | None = None,
             secret: Mapping[str, str] | None = None) -> defer.Deferred[Reply]:
        """Send a request as it is, once (no booking, no recovery); fires with its Reply:
        ``LOST(local)`` if its session closed first, ``S901(local)`` if there was none."""
        d: defer.Deferred[Reply] = defer.Deferred()
        try:
            self.sim.node.request(msg_type, body, to or self.counterparty,
                                  lambda m: d.callback(reply_of(m)), secret,
                                  lambda: d.callback(Reply(LOST, "the session closed before "
                                                           "the answer came", local=True)))
        except CounterpartyNotConnected as exc:
            return defer.succeed(Reply("S901", str(exc), local=True))
        self.sim.factory.schedule_flush()  # one commit per reactor turn, then the writes
        return d

    def ask(self, msg_type: str, body: Mapping[str, Any], to: str | None = None,
            secret: Mapping[str, str] | None = None) -> defer.Deferred[Reply]:
        """Send a request that creates a record, and see it through: it is kept in the
        outbox (durably, with this turn's commit, before its frame leaves) until an
        answer settles it.  Fires with the first answer that is an outcome, or B330
        (then it stays in the outbox until the reversal is final)."""
        key = biz_key(self.party, msg_type.rsplit(".", 1)[0], str(body["BizSn"]))
        refused = self._refusal(key)
        if refused is not None:
            return defer.succeed(refused)
        entry = Entry(key, msg_type, to or self.counterparty, dict(body),
                      dict(secret) if secret else None, at=self.sim.node.iso_time())
        self.outbox.add(entry)
        d: defer.Deferred[Reply] = defer.Deferred()
        self._callers.setdefault(key, []).append(d)
        self._attempt(entry)
        return d

    def _refusal(self, key: str) -> Reply | None:
        """Why a new request may not be sent (a local refusal), or None."""
        if not self.accepting:
            return Reply("S902", f"{self.party} is stopping: not sent", local=True)
        if key in self.outbox.entries or self.book.ledger.op(key) is not None:
            return Reply("B312", f"BizSn {key.rsplit('|', 1)[1]} already used by "
                                 f"{self.party}: not sent", local=True)
        return None

    # --- recovery -----------------------------------------------------------------------
    def _recover(self) -> None:
        """One round: every unsettled request that is due is sent again or looked up; an
        attempt unanswered for ATTEMPT_SECONDS is taken as lost."""
        if not self.sim.node.ready:
            return
        now = self.reactor.seconds()
        for key, entry in list(self.outbox.entries.items()):
            out = self._out.get(key)
            if out is not None:
                if now - out[1] >= self.ATTEMPT_SECONDS:
                    log.warning("%s: no answer to %s after %g s; asking again", self.party,
                                entry.describe(), self.ATTEMPT_SECONDS)
                    del self._out[key]
                    self._later(key)
                continue
            if self._due.get(key, 0.0) <= now:
                self._attempt(entry)

    def _reconnected(self) -> None:
        """A session is ready again: every unsettled request is due at once."""
        if self.outbox:
            log.info("%s: session ready; %d request(s) to settle", self.party, len(self.outbox))
        self._due.clear()
        self._rounds.clear()

    def _later(self, key: str) -> None:
        rounds = self._rounds.get(key, 0) + 1
        self._rounds[key] = rounds
        self._due[key] = self.reactor.seconds() + min(
            self.BACKOFF_FIRST * 2 ** (rounds - 1), self.BACKOFF_MAX)

    def _attempt(self, entry: Entry) -> None:
        """Send the request (again) or, to learn its outcome, XFER.QUERY it."""
        key, token = entry.biz_key, next(self._tokens)
        try:
            if entry.state == SENT:
                self.sim.node.request(
                    entry.msg_type, entry.body, entry.to,
                    lambda m: self._answered(key, token, reply_of(m)), entry.secret,
                    lambda: self._answered(key, token, Reply(LOST, "session closed",
                                                             local=True)))
                entry.attempts += 1
                self.repeats += entry.attempts > 1
                self.outbox.save(entry)
            else:
                self.sim.node.request(
                    "XFER.QUERY.REQ", {"BizSn": entry.biz_sn, "OrigType": entry.business},
                    self.gateway, lambda m: self._queried(key, token, reply_of(m)), None,
                    lambda: self._queried(key, token, Reply(LOST, "session closed",
                                                            local=True)))
                self.queries += 1
        except CounterpartyNotConnected:
            self._later(key)  # and at once when a session is ready (_reconnected)
            return
        self._out[key] = (token, self.reactor.seconds())
        self.sim.factory.schedule_flush()

    def _current(self, key: str, token: int) -> bool:
        """Is ``token`` the attempt awaited for ``key``? (It is no longer, after this.)"""
        if self._out.get(key, (None,))[0] != token:
            return False
        del self._out[key]
        return True

    def _answered(self, key: str, token: int, reply: Reply) -> None:
        entry = self.outbox.get(key)
        current = self._current(key, token)
        if entry is None or entry.state == REVERSING:
            return  # settled by another attempt's answer; or B330 came: XFER.QUERY decides
        verdict = judge(reply.result, entry.attempts)
        if verdict == SETTLE:  # any attempt's answer: they all carry the same request
            entry.last = reply.result
            self._settle(entry, reply.result, reply)
            return
        if verdict == AWAIT_REVERSAL:
            entry.last, entry.state = reply.result, REVERSING
            self.outbox.save(entry)
            self._later(key)
            self._tell(key, reply)  # the caller learns B330; the books wait for REVERSED
            return
        if not current:
            return  # a later attempt is out: its answer decides
        entry.last = reply.result
        if verdict == QUERY:
            entry.state = QUERY
        self.outbox.save(entry)
        log.info("%s: %s: %s %s; finding out", self.party, entry.describe(), reply.result,
                 reply.text)
        self._later(key)
        self.sim.factory.schedule_flush()

    def _queried(self, key: str, token: int, reply: Reply) -> None:
        entry = self.outbox.get(key)
        if not self._current(key, token) or entry is None:
            return
        record = (reply.body.get("Record") or [{}])[0] if reply.result == "0000" else {}
        state = str(record.get("Status")) if record else reply.result
        verdict = read_state(state, entry.state == REVERSING, entry.reversible)
        if verdict is None:  # not final yet, or the query itself was not answered
            self._later(key)
            return
        if verdict == REPEAT:
            entry.state = SENT
            self.outbox.save(entry)
            self._attempt(entry)
            return
        result = {"SUCCEEDED": "0000", "REVERSED": "B330"}.get(
            verdict, str(record.get("PeerResult") or "B399"))
        entry.last = result
        self._settle(entry, result, Reply(result, f"{entry.business} {entry.biz_sn} is "
                                                  f"{verdict} (XFER.QUERY)", dict(record)))

    def _settle(self, entry: Entry, result: str, reply: Reply) -> None:
        """Book the outcome (the party's side of a transfer) and drop the request from
        the outbox: one commit makes both durable."""
        key = entry.biz_key
        if entry.attempts > 1 or entry.state != SENT:
            log.info("%s: %s settled: %s", self.party, entry.describe(), result)
        self._book(entry, result)
        self.outbox.remove(key)
        for table in (self._due, self._rounds, self._out):
            table.pop(key, None)
        self.sim.factory.schedule_flush()
        self._tell(key, reply)

    def _book(self, entry: Entry, result: str) -> None:
        if entry.business not in ("XFER.IN", "XFER.OUT"):
            return  # the other types move no money in a broker's or bank's own books here
        b = entry.body
        fen = to_fen(str(b["Amount"])) or 0
        if isinstance(self.book, BrokerBook):
            self.book.settle(entry.business, entry.biz_sn, str(b["FundAcct"]),
                             str(b["WalletId"]), fen, result)
        elif isinstance(self.book, BankBook) and entry.business == "XFER.IN":
            self.book.settle(entry.biz_sn, str(b["FundAcct"]), str(b["WalletId"]), fen, result)

    def _tell(self, key: str, reply: Reply) -> None:
        for d in self._callers.pop(key, []):
            d.callback(reply)

    # --- account (CTS) ------------------------------------------------------------------
    def sign(self, fund_acct: str, sn: str | None = None, level: str = "1",
             id_no: str | None = None) -> defer.Deferred[Reply]:
        """CTS.SIGN for a client of the broker's ledger (``id_no`` overrides its KYC)."""
        client = self.book.client(fund_acct)
        if client is None:
            return defer.succeed(Reply("B300", f"no fund account {fund_acct}", local=True))
        body = {"BizSn": sn or self.sn("S"), "FundAcct": fund_acct, "WalletId": client.link,
                "WalletLevel": level, "WalletKind": "PERSONAL", "CustName": "",
                "IdType": client.id_type, "IdNo": "", "Phone": None, "Channel": "APP"}
        # §4: the client identity goes encrypted (the body holds places for it only)
        return self.ask("CTS.SIGN.REQ", body, secret={"CustName": client.name or "",
                                                       "IdNo": id_no or client.id_no or ""})

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
        reply = yield self.ask("CTS.UNSIGN.REQ", {
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
        sent (B310 locally if it is not there); the outcome is booked when it is known
        (at once for most answers; for B330 when the reversal is final)."""
        client = self.book.client(fund_acct)
        if client is None:
            return Reply("B300", f"no fund account {fund_acct}", local=True)
        sn = sn or self.sn("V")
        refused = self._refusal(biz_key(self.party, kind, sn))
        if refused is not None:
            return refused
        fen = to_fen(amount) or 0
        if kind == "XFER.OUT" and not self.book.hold(sn, fund_acct, fen):
            return Reply("B310", "insufficient funds in the fund account: not sent", local=True)
        reply = yield self.ask(kind + ".REQ", self.xfer_body(sn, fund_acct, str(client.link),
                                                            amount))
        return reply

    @defer.inlineCallbacks
    def bank_transfer(self, fund_acct: str, wallet_id: str, amount: str,
                      sn: str | None = None) -> Generator[Any, Any, Reply]:
        """A bank-originated XFER.IN: the bank holds the wallet's money in the dedicated
        wallet, then sweeps it (0000) or gives it back."""
        sn, fen = sn or self.sn("K"), to_fen(amount) or 0
        refused = self._refusal(biz_key(self.party, "XFER.IN", sn))
        if refused is not None:
            return refused
        refused_code = self.book.hold(sn, wallet_id, fen)
        if refused_code:
            return Reply(refused_code, "refused by the bank's own checks: not sent", local=True)
        reply: Reply = yield self.ask("XFER.IN.REQ", self.xfer_body(sn, fund_acct, wallet_id,
                                                                    amount))
        return reply

    @defer.inlineCallbacks
    def wait_state(self, biz_sn: str, orig_type: str = "XFER.IN", state: str = "REVERSED",
                   seconds: float = 10.0,
                   every: float = 0.2) -> Generator[Any, Any, str]:
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
        return self.ask("PAY.ORDER.REQ", {
            "BizSn": sn, "OrderNo": order or "O" + sn, "WalletId": wallet_id, "Amount": amount,
            "Ccy": "CNY", "ProductCode": product, "ProductKind": product_kind,
            "ServiceEnd": end})

    def refund(self, orig_sn: str, amount: str, sn: str | None = None) -> defer.Deferred[Reply]:
        return self.ask("PAY.REFUND.REQ", {"BizSn": sn or self.sn("F"), "OrigBizSn": orig_sn,
                                            "Amount": amount})

    def otc_subscribe(self, wallet_id: str, amount: str, product: str = "SY001",
                      wallet_kind: str = "CORPORATE", sn: str | None = None,
                      order: str | None = None) -> defer.Deferred[Reply]:
        sn = sn or self.sn("O")
        return self.ask("OTC.SUBSCRIBE.REQ", {
            "BizSn": sn, "OrderNo": order or "SY" + sn, "CorpWalletId": wallet_id,
            "WalletKind": wallet_kind, "ProductCode": product, "Amount": amount, "Ccy": "CNY"})

    def otc_redeem(self, orig_sn: str, wallet_id: str, amount: str,
                   sn: str | None = None) -> defer.Deferred[Reply]:
        return self.ask("OTC.REDEEM.REQ", {"BizSn": sn or self.sn("D"), "OrigBizSn": orig_sn,
                                            "CorpWalletId": wallet_id, "Amount": amount})
