"""``gateway demo``: a whole business day on embedded defaults, in one process.

A temporary home gets the gateway's keys, a simulated bank (CCB) and broker
(GTJA) with keys and ledgers of their own, all registered; the gateway listens
on a free loopback port and both simulators dial it.  Every flow of §6 runs —
including a timeout that is reversed and a refused unsign — then the day's
files are written, checked and reconciled, and the books are checked.  The exit
code is 0 only if every step did what it should.
"""
from __future__ import annotations

import datetime as dt
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from .config import Config
from .keystore import KeyStore
from .message import Message
from .rules import fen_text, to_fen
from .server import GatewayService
from .sim.bank import AGGREGATE, DEDICATED, MERCHANT, PRODUCT
from .sim.runtime import Sim, ensure_key, start_sim

log = logging.getLogger(__name__)

BANK, BROKER, GW = "CCB", "GTJA", "GW01"
ZHANG = ("100020003000", "0071130812093028", "张三", "01", "110101199003071234")
LI = ("100020003018", "0071130812093036", "李四", "01", "110101198805051234")
WANG = ("100020003026", "0071130812093044", "王五", "01", "110101199512121234")
CORP_WALLET = "0099000011112222"
SLOW = "DEMOSLOW1"  # the bank books it but never answers: timeout → reversal


@dataclass
class Outcome:
    flow: str
    what: str
    expected: str
    got: str
    amount_fen: int = 0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.got == self.expected


@dataclass
class Day:
    outcomes: list[Outcome] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        self.checks.append((what, ok, detail))

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes) and all(ok for _, ok, _ in self.checks)


def ask(sim: Sim, msg_type: str, body: dict[str, Any], to: str,
        secret: dict[str, str] | None = None) -> defer.Deferred[Message]:
    """Send a request from a simulated party; fires with the answer."""
    d: defer.Deferred[Message] = defer.Deferred()
    sim.node.request(msg_type, body, to, d.callback, secret)
    sim.node.flush()
    return d


def result_of(answer: Message) -> str:
    return str(answer.body.get("Result") or answer.body.get("Code"))


class Script:
    """The business day, step by step, against the expected result of each step."""

    def __init__(self, day: Day, bank: Sim, broker: Sim, reactor: Any) -> None:
        self.day, self.bank, self.broker, self.reactor = day, bank, broker, reactor
        self.n = 0

    def sn(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{dt.date.today():%Y%m%d}{self.n:04d}"

    @defer.inlineCallbacks
    def step(self, flow: str, what: str, expected: str, msg_type: str, body: dict[str, Any],
             *, sender: Sim | None = None, to: str = BANK, secret: dict[str, str] | None = None,
             amount: str | None = None):  # type: ignore[no-untyped-def]
        answer = yield ask(sender or self.broker, msg_type, body, to, secret)
        got = result_of(answer)
        detail = str(answer.body.get("ResultText", answer.body.get("Text", "")))
        self.day.outcomes.append(Outcome(flow, what, expected, got,
                                         to_fen(amount) or 0 if got == "0000" else 0, detail))
        log.info("demo: %-5s %-48s expected %s got %s", flow, what, expected, got)
        return answer

    def sign(self, who: tuple[str, ...], sn: str, level: str = "1") -> dict[str, Any]:
        fund, wallet, name, id_type, _ = who
        return {"BizSn": sn, "FundAcct": fund, "WalletId": wallet, "WalletLevel": level,
                "WalletKind": "PERSONAL", "CustName": name, "IdType": id_type, "IdNo": "",
                "Phone": None, "Channel": "APP"}

    def xfer(self, who: tuple[str, ...], sn: str, amount: str) -> dict[str, Any]:
        return {"BizSn": sn, "FundAcct": who[0], "WalletId": who[1], "Amount": amount,
                "Ccy": "CNY"}

    @defer.inlineCallbacks
    def transfer(self, kind: str, who: tuple[str, ...], amount: str, expected: str,
                 what: str, sn: str | None = None):  # type: ignore[no-untyped-def]
        """A broker-originated transfer, booked at the broker as a broker core would."""
        sn = sn or self.sn("V")
        fen = to_fen(amount) or 0
        book = self.broker.book
        if kind == "XFER.OUT" and not book.hold(sn, who[0], fen):
            self.day.outcomes.append(Outcome("XFER", what, expected, "B310(local)"))
            return None
        answer = yield self.step("XFER", what, expected, kind + ".REQ",
                                 self.xfer(who, sn, amount), amount=amount)
        book.settle(kind, sn, who[0], who[1], fen, result_of(answer))
        return answer

    @defer.inlineCallbacks
    def bank_transfer(self, who: tuple[str, ...], amount: str, expected: str,
                      what: str):  # type: ignore[no-untyped-def]
        """A bank-originated XFER.IN: the bank holds the money, then sweeps or releases."""
        sn, fen = self.sn("K"), to_fen(amount) or 0
        refused = self.bank.book.hold(sn, who[1], fen)
        if refused:
            self.day.outcomes.append(Outcome("XFER", what, expected, refused + "(local)"))
            return None
        answer = yield self.step("XFER", what, expected, "XFER.IN.REQ", self.xfer(who, sn, amount),
                                 sender=self.bank, to=BROKER, amount=amount)
        self.bank.book.settle(sn, who[0], who[1], fen, result_of(answer))
        return answer

    @defer.inlineCallbacks
    def run(self):  # type: ignore[no-untyped-def]
        S = self.step
        end_soon = (dt.date.today() + dt.timedelta(days=30)).isoformat()
        # --- CTS sign ------------------------------------------------------------
        yield S("CTS", "sign 张三 (class-I wallet)", "0000", "CTS.SIGN.REQ",
                self.sign(ZHANG, self.sn("S")), secret={"IdNo": ZHANG[4]})
        yield S("CTS", "sign 王五: class-II wallet refused", "B302", "CTS.SIGN.REQ",
                self.sign(WANG, self.sn("S"), level="2"), secret={"IdNo": WANG[4]})
        yield S("CTS", "sign 李四 with a wrong ID number", "B303", "CTS.SIGN.REQ",
                self.sign(LI, self.sn("S")), secret={"IdNo": "110101190001011234"})
        yield S("CTS", "sign 李四", "0000", "CTS.SIGN.REQ", self.sign(LI, self.sn("S")),
                secret={"IdNo": LI[4]})
        yield S("CTS", "sign 张三 again: already signed", "B301", "CTS.SIGN.REQ",
                self.sign(ZHANG, self.sn("S")), secret={"IdNo": ZHANG[4]})
        # --- transfers -------------------------------------------------------------
        first = self.sn("V")
        yield self.transfer("XFER.IN", ZHANG, "50000.00", "0000", "张三 wallet → securities", first)
        yield S("XFER", "the same request repeated (not relayed)", "0000", "XFER.IN.REQ",
                self.xfer(ZHANG, first, "50000.00"))
        yield S("XFER", "the same BizSn with another amount", "B312", "XFER.IN.REQ",
                self.xfer(ZHANG, first, "1.00"))
        yield self.transfer("XFER.IN", LI, "1000000.00", "B310", "李四: more than the wallet holds")
        yield self.transfer("XFER.OUT", ZHANG, "20000.00", "0000", "张三 securities → wallet")
        yield self.transfer("XFER.IN", WANG, "100.00", "B300", "王五: no agreement")
        yield self.transfer("XFER.IN", LI, "10000.00", "B330", "李四: bank silent → reversal",
                            SLOW)
        yield self.wait_reversed(SLOW)
        yield self.bank_transfer(LI, "5000.00", "0000", "bank-initiated: 李四 wallet → securities")
        yield self.transfer("XFER.OUT", LI, "5000.00", "0000", "李四 securities → wallet")
        # --- paid services ---------------------------------------------------------
        order = self.sn("P")
        yield S("PAY", "张三 buys Level-2 data ¥199.00", "0000", "PAY.ORDER.REQ",
                {"BizSn": order, "OrderNo": "L2-0001", "WalletId": ZHANG[1], "Amount": "199.00",
                 "Ccy": "CNY", "ProductCode": "L2QUOTE", "ProductKind": "LEVEL2",
                 "ServiceEnd": end_soon}, amount="199.00")
        yield S("PAY", "refund it", "0000", "PAY.REFUND.REQ",
                {"BizSn": self.sn("F"), "OrigBizSn": order, "Amount": "199.00"})
        yield S("PAY", "refund it again", "B314", "PAY.REFUND.REQ",
                {"BizSn": self.sn("F"), "OrigBizSn": order, "Amount": "199.00"})
        advice = self.sn("P")
        yield S("PAY", "李四 buys advisory ¥88.00 (30 days)", "0000", "PAY.ORDER.REQ",
                {"BizSn": advice, "OrderNo": "ADV-0001", "WalletId": LI[1], "Amount": "88.00",
                 "Ccy": "CNY", "ProductCode": "ADVICE", "ProductKind": "ADVISORY",
                 "ServiceEnd": end_soon}, amount="88.00")
        # --- unsign ----------------------------------------------------------------
        unsign_zhang = self.broker.book.may_unsign(ZHANG[0])
        self.day.outcomes.append(Outcome("CTS", "unsign 张三: broker refuses, funds left",
                                         "refused", "refused" if not unsign_zhang else "sent"))
        li_agreement = yield self.agreement_of(LI)
        yield S("CTS", "unsign 李四: service still valid", "B304", "CTS.UNSIGN.REQ",
                {"BizSn": self.sn("U"), "FundAcct": LI[0], "WalletId": LI[1],
                 "AgreementNo": li_agreement})
        yield S("PAY", "refund 李四's advisory", "0000", "PAY.REFUND.REQ",
                {"BizSn": self.sn("F"), "OrigBizSn": advice, "Amount": "88.00"})
        yield S("CTS", "unsign 李四", "0000", "CTS.UNSIGN.REQ",
                {"BizSn": self.sn("U"), "FundAcct": LI[0], "WalletId": LI[1],
                 "AgreementNo": li_agreement})
        # --- income certificates ---------------------------------------------------
        otc = {"OrderNo": "SY-0001", "CorpWalletId": CORP_WALLET, "WalletKind": "CORPORATE",
               "ProductCode": "SY2026A01", "Amount": "1000000.00", "Ccy": "CNY"}
        sub = self.sn("O")
        answer = yield S("OTC", "enterprise subscribes ¥1,000,000.00", "0000",
                         "OTC.SUBSCRIBE.REQ", {"BizSn": sub, **otc}, amount="1000000.00")
        self.day.check("OTC BookDate filled by the gateway", bool(answer.body.get("BookDate")),
                       str(answer.body.get("BookDate")))
        yield S("OTC", "subscribe from a personal wallet", "B302", "OTC.SUBSCRIBE.REQ",
                {"BizSn": self.sn("O"), **otc, "CorpWalletId": ZHANG[1],
                 "WalletKind": "PERSONAL"})
        yield S("OTC", "redeem ¥400,000.00", "0000", "OTC.REDEEM.REQ",
                {"BizSn": self.sn("D"), "OrigBizSn": sub, "CorpWalletId": CORP_WALLET,
                 "Amount": "400000.00"}, amount="400000.00")

    @defer.inlineCallbacks
    def agreement_of(self, who: tuple[str, ...]):  # type: ignore[no-untyped-def]
        answer = yield ask(self.broker, "CTS.QUERY.REQ", {"FundAcct": who[0]}, GW)
        found = [a for a in answer.body.get("Agreement", []) if a["Status"] == "ACTIVE"]
        return found[0]["AgreementNo"] if found else "NONE"

    @defer.inlineCallbacks
    def wait_reversed(self, biz_sn: str):  # type: ignore[no-untyped-def]
        for _ in range(50):
            answer = yield ask(self.broker, "XFER.QUERY.REQ",
                               {"BizSn": biz_sn, "OrigType": "XFER.IN"}, GW)
            status = (answer.body.get("Record") or [{}])[0].get("Status")
            if status == "REVERSED":
                self.day.outcomes.append(Outcome("XFER", "the timed-out transfer is reversed",
                                                 "REVERSED", "REVERSED"))
                return
            yield task.deferLater(self.reactor, 0.2, lambda: None)
        self.day.outcomes.append(Outcome("XFER", "the timed-out transfer is reversed",
                                         "REVERSED", str(status)))


def check_books(day: Day, bank: Sim, broker: Sim, opening_total: int) -> None:
    """Money is neither created nor lost, the sweep is complete, reversals undid once."""
    L = bank.book.ledger
    day.check("bank books balance (total unchanged)", L.total() == opening_total,
              f"{fen_text(L.total())} vs {fen_text(opening_total)}")
    dedicated = L.account(DEDICATED).balance_fen
    day.check("dedicated corporate wallet swept to zero", dedicated == 0, fen_text(dedicated))
    aggregate = L.account(AGGREGATE).balance_fen
    funds = sum(broker.book.balance(r[0]) for r in broker.book.bal_records())
    day.check("aggregate account = sum of client funds at the broker", aggregate == funds,
              f"{fen_text(aggregate)} = {fen_text(funds)}")
    slow = L.op(f"{BROKER}|XFER.IN|{SLOW}")
    undone = L.db.execute("SELECT count(*) FROM posting WHERE biz_key=? AND reversal=1",
                          (f"{BROKER}|XFER.IN|{SLOW}",)).fetchone()[0]
    day.check("the timed-out transfer was undone exactly once at the bank",
              bool(slow and slow.reversed and undone == 2), f"{undone} reversing postings")
    for name in (MERCHANT, PRODUCT):
        day.check(f"{name.lower()} account not negative", L.account(name).balance_fen >= 0)


def summary(day: Day, home: Path, eod: list[str], kept: bool = True) -> str:
    lines = ["", "SBDX gateway demo — one business day", "=" * 60]
    flows: dict[str, list[Outcome]] = {}
    for o in day.outcomes:
        flows.setdefault(o.flow, []).append(o)
    for flow, items in flows.items():
        moved = sum(o.amount_fen for o in items)
        lines.append(f"{flow:<5} {len(items):>2} steps, {sum(o.ok for o in items)} as expected"
                     + (f", ¥{fen_text(moved)} moved" if moved else ""))
        for o in items:
            mark = "ok " if o.ok else "BAD"
            lines.append(f"   {mark} {o.what:<46} {o.got:<8}"
                         + ("" if o.ok else f" (expected {o.expected})"))
    lines.append("checks")
    for what, ok, detail in day.checks:
        lines.append(f"   {'ok ' if ok else 'BAD'} {what}" + (f": {detail}" if detail else ""))
    lines += ["end of day"] + [f"   {x}" for x in eod]
    lines += ([f"journal: {home / 'gateway' / 'data' / 'journal.sqlite3'}",
               f"files:   {home / 'eod'}"] if kept else
              ["journal and files: removed (gateway demo --keep DIR keeps them)"])
    lines += ["RESULT: " + ("every step did what it should" if day.ok else "FAILED"), ""]
    return "\n".join(lines)


def run_demo(home: Path, reactor: Any, end_of_day: Callable[..., Any] | None = None,
             kept: bool = True) -> bool:
    """Run the day; returns True when every step and check passed."""
    gw_home = home / "gateway"
    store = KeyStore.create(gw_home / "keys", party=GW)
    for party, role in ((BANK, "BANK"), (BROKER, "BROKER")):
        pub = ensure_key(home / party.lower(), party)
        store.add_peer(party, role, pub.read_bytes())
    cfg = Config(party=GW, listen="127.0.0.1:0", relay_timeout_seconds=2.0,
                 reversal_retry_initial_seconds=0.5, reversal_retry_max_seconds=2.0)
    service = GatewayService(gw_home, cfg, reactor)
    service.startService()
    connect = f"127.0.0.1:{service.listening_port}"
    cert = store.certificate_pem()
    bank = start_sim(reactor, home / "ccb", "BANK", BANK, connect, cert)
    broker = start_sim(reactor, home / "gtja", "BROKER", BROKER, connect, cert)
    bank.book.seed(BROKER)
    broker.book.seed()
    bank.book.withhold = lambda m: m.body.get("BizSn") == SLOW
    opening = bank.book.ledger.total()
    day = Day()
    eod_lines: list[str] = []

    @defer.inlineCallbacks
    def main():  # type: ignore[no-untyped-def]
        try:
            for _ in range(100):
                if bank.node.ready and broker.node.ready:
                    break
                yield task.deferLater(reactor, 0.05, lambda: None)
            yield Script(day, bank, broker, reactor).run()
            check_books(day, bank, broker, opening)
            if end_of_day is not None:
                eod_lines.extend(end_of_day(home, day, bank, broker, service))
        except Exception as exc:  # a broken demo says why and fails
            log.exception("demo failed")
            day.check("demo ran to the end", False, repr(exc))
        finally:
            bank.stop()
            broker.stop()
            yield service.stopService()
            reactor.stop()

    reactor.callWhenRunning(main)
    reactor.callLater(50, lambda: reactor.stop() if reactor.running else None)
    reactor.run()
    print(summary(day, home, eod_lines, kept))
    return day.ok


def main(keep: Path | None = None) -> int:
    from twisted.internet import reactor

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = keep or Path(tempfile.mkdtemp(prefix="sbdx-demo-"))
    home.mkdir(parents=True, exist_ok=True)
    from .demo_eod import end_of_day

    ok = run_demo(home, reactor, end_of_day, kept=keep is not None)
    if keep is None:
        shutil.rmtree(home, ignore_errors=True)
    return 0 if ok else 1
