"""``gateway demo``: a whole business day on embedded defaults, in one process.

A temporary home gets the gateway's keys, a simulated bank (CCB) and broker
(GTJA) with keys and ledgers of their own, all registered; the gateway listens
on a free loopback port and both simulators dial it.  Every flow of §6 runs —
including a timeout that is reversed and a refused unsign — then the business
exit of §11 (the bank suspended, the exit report, the broker's exit), then the day's
files are written, checked and reconciled, and the books are checked.  The exit
code is 0 only if every step did what it should.
"""
from __future__ import annotations

import datetime as dt
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from .bookdate import CHINA
from .certificates import issue_peer_certificate
from .config import Config
from .keystore import KeyStore
from .rules import fen_text, to_fen
from .server import GatewayService
from .sim.bank import AGGREGATE, DEDICATED, MERCHANT, PRODUCT
from .sim.drive import Originator, Reply
from .sim.runtime import Sim, cert_file, client_tls, ensure_key, start_sim
from .tls import GatewayTLS

log = logging.getLogger(__name__)

BANK, BROKER, GW = "CCB", "GTJA", "GW01"
ZHANG = ("100020003000", "0071130812093028", "张三", "01", "110101199003071234")
LI = ("100020003018", "0071130812093036", "李四", "01", "110101198805051234")
WANG = ("100020003026", "0071130812093044", "王五", "01", "110101199512121234")
CORP_WALLET = "0099000011112222"
SLOW = BROKER + "SLOW1"  # the bank books it but never answers: timeout → reversal
# (every BizSn begins with its originator's PartyId, §4; Originator.sn makes the others)


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
    """What the day did.  It passed only if it ran to its end (``completed``) and every
    step and check did what it should: a day stopped by the timer, or that recorded
    nothing, failed."""

    outcomes: list[Outcome] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    completed: bool = False
    #: The step being waited for (named when the timer stops the day).
    current: str | None = None

    def check(self, what: str, ok: bool, detail: str = "") -> None:
        self.checks.append((what, ok, detail))

    @property
    def ok(self) -> bool:
        return (self.completed and bool(self.outcomes) and all(o.ok for o in self.outcomes)
                and all(ok for _, ok, _ in self.checks))

    def timed_out(self, seconds: float) -> None:
        """The timer stopped the day before it completed."""
        waiting = f"; still waiting for: {self.current}" if self.current else ""
        self.check(f"demo finished within {seconds:g} s", False,
                   f"stopped by the timer before the day completed{waiting}")


class Script:
    """The business day, step by step, against the expected result of each step.  The
    requests themselves are the simulators' own (:class:`gateway.sim.drive.Originator`)."""

    def __init__(self, day: Day, bank: Sim, broker: Sim, reactor: Any) -> None:
        self.day, self.bank, self.broker, self.reactor = day, bank, broker, reactor
        stamp = f"{dt.date.today():%Y%m%d}"
        self.gtja = Originator(broker, BANK, reactor, stamp)
        self.ccb = Originator(bank, BROKER, reactor, stamp)  # CCB…: apart from GTJA…

    def sn(self, prefix: str) -> str:
        return self.gtja.sn(prefix)

    @defer.inlineCallbacks
    def step(self, flow: str, what: str, expected: str, pending: defer.Deferred[Reply],
             amount: str | None = None) -> Generator[Any, Any, Reply]:
        """Wait for one request's Reply and record it against ``expected``."""
        self.day.current = what
        reply: Reply = yield pending
        self.day.outcomes.append(Outcome(flow, what, expected, reply.shown,
                                         to_fen(amount) or 0 if reply.result == "0000"
                                         and not reply.local else 0, reply.text))
        log.info("demo: %-5s %-48s expected %s got %s", flow, what, expected, reply.shown)
        return reply

    def sign(self, who: tuple[str, ...], expected: str, what: str, level: str = "1",
             id_no: str | None = None) -> defer.Deferred[Reply]:
        return self.step("CTS", what, expected, self.gtja.sign(who[0], self.sn("S"), level,
                                                               id_no))

    def transfer(self, kind: str, who: tuple[str, ...], amount: str, expected: str,
                 what: str, sn: str | None = None) -> defer.Deferred[Reply]:
        return self.step("XFER", what, expected,
                         self.gtja.transfer(kind, who[0], amount, sn or self.sn("V")), amount)

    @defer.inlineCallbacks
    def run(self):  # type: ignore[no-untyped-def]
        S, g = self.step, self.gtja
        # --- CTS sign ------------------------------------------------------------
        yield self.sign(ZHANG, "0000", "sign 张三 (class-I wallet)")
        yield self.sign(WANG, "B302", "sign 王五: class-II wallet refused", level="2")
        yield self.sign(LI, "B303", "sign 李四 with a wrong ID number",
                        id_no="110101190001011234")
        yield self.sign(LI, "0000", "sign 李四")
        yield self.sign(ZHANG, "B301", "sign 张三 again: already signed")
        # --- transfers -------------------------------------------------------------
        first = self.sn("V")
        yield self.transfer("XFER.IN", ZHANG, "50000.00", "0000", "张三 wallet → securities", first)
        yield S("XFER", "the same request repeated (not relayed)", "0000",
                g.send("XFER.IN.REQ", g.xfer_body(first, ZHANG[0], ZHANG[1], "50000.00")))
        yield S("XFER", "the same BizSn with another amount", "B312",
                g.send("XFER.IN.REQ", g.xfer_body(first, ZHANG[0], ZHANG[1], "1.00")))
        yield self.transfer("XFER.IN", LI, "1000000.00", "B310", "李四: more than the wallet holds")
        yield self.transfer("XFER.OUT", ZHANG, "20000.00", "0000", "张三 securities → wallet")
        yield self.transfer("XFER.IN", WANG, "100.00", "B300", "王五: no agreement")
        yield self.transfer("XFER.IN", LI, "10000.00", "B330", "李四: bank silent → reversal",
                            SLOW)
        self.day.current = "the timed-out transfer is reversed"
        state = yield g.wait_state(SLOW, "XFER.IN", "REVERSED", seconds=10)
        self.day.outcomes.append(Outcome("XFER", "the timed-out transfer is reversed",
                                         "REVERSED", state))
        yield S("XFER", "bank-initiated: 李四 wallet → securities", "0000",
                self.ccb.bank_transfer(LI[0], LI[1], "5000.00"), "5000.00")
        yield self.transfer("XFER.OUT", LI, "5000.00", "0000", "李四 securities → wallet")
        # --- paid services ---------------------------------------------------------
        order = self.sn("P")
        yield S("PAY", "张三 buys Level-2 data ¥199.00", "0000",
                g.pay(ZHANG[1], "199.00", "L2QUOTE", "LEVEL2", sn=order, order="L2-0001"),
                "199.00")
        yield S("PAY", "refund it", "0000", g.refund(order, "199.00", self.sn("F")))
        yield S("PAY", "refund it again", "B314", g.refund(order, "199.00", self.sn("F")))
        advice = self.sn("P")
        yield S("PAY", "李四 buys advisory ¥88.00 (30 days)", "0000",
                g.pay(LI[1], "88.00", "ADVICE", "ADVISORY", sn=advice, order="ADV-0001"),
                "88.00")
        # --- unsign ----------------------------------------------------------------
        yield S("CTS", "unsign 张三: broker refuses, funds left", "B304(local)",
                g.unsign(ZHANG[0], self.sn("U")))
        yield S("CTS", "unsign 李四: service still valid", "B304", g.unsign(LI[0], self.sn("U")))
        yield S("PAY", "refund 李四's advisory", "0000", g.refund(advice, "88.00", self.sn("F")))
        yield S("CTS", "unsign 李四", "0000", g.unsign(LI[0], self.sn("U")))
        # --- income certificates ---------------------------------------------------
        sub = self.sn("O")
        reply = yield S("OTC", "enterprise subscribes ¥1,000,000.00", "0000",
                        g.otc_subscribe(CORP_WALLET, "1000000.00", "SY2026A01", sn=sub,
                                        order="SY-0001"), "1000000.00")
        self.day.check("OTC BookDate filled by the gateway", bool(reply.body.get("BookDate")),
                       str(reply.body.get("BookDate")))
        yield S("OTC", "subscribe from a personal wallet", "B302",
                g.otc_subscribe(ZHANG[1], "1000000.00", "SY2026A01", "PERSONAL",
                                sn=self.sn("O"), order="SY-0001"))
        yield S("OTC", "redeem ¥400,000.00", "0000",
                g.otc_redeem(sub, CORP_WALLET, "400000.00", self.sn("D")), "400000.00")
        self.subscription = sub
        self.day.current = None

    @defer.inlineCallbacks
    def exit(self, service: GatewayService):  # type: ignore[no-untyped-def]
        """§11, the business exit: CCB suspended (new business B340, the rest flows), the
        exit report, the rest of the subscription redeemed, the broker's exit (funds back,
        unsign), and the report again: nothing left."""
        from .exitreport import ExitReport, build_report
        from .sim.exiting import run_exit

        S, g, gw = self.step, self.gtja, service.gateway

        def report() -> ExitReport:
            now = dt.datetime.now(CHINA)
            return build_report(gw.journal, now.date().isoformat(), now.isoformat())

        gw.suspensions.suspend(BANK, "the demo's business exit")
        yield S("EXIT", "CCB suspended: new business refused", "B340",
                g.transfer("XFER.IN", ZHANG[0], "1.00", self.sn("V")))
        before = report()
        self.day.check("exit report: 张三 blocked by funds only, ¥600,000.00 not redeemed",
                       [[b.kind for b in a.blockers] for a in before.agreements] == [["funds"]]
                       and [w.left_fen for w in before.subscriptions] == [60_000_000],
                       "; ".join(b.text for a in before.agreements for b in a.blockers))
        yield S("EXIT", "redeem the remaining ¥600,000.00 (still flows)", "0000",
                g.otc_redeem(self.subscription, CORP_WALLET, "600000.00", self.sn("D")),
                "600000.00")
        self.day.current = "the broker's exit"
        tally = yield run_exit(g, before.as_dict(), lambda line: log.info("demo: %s", line))
        self.day.check("broker's exit: funds back in the wallet, every agreement unsigned",
                       tally.ok and len(tally.unsigned) == 1,
                       f"¥{fen_text(tally.returned_fen)} returned; "
                       + "; ".join(f"{n}: {why}" for n, why in tally.not_unsigned))
        after = report()
        self.day.check("exit report: nothing blocks any more", after.exit_code == 0
                       and not after.agreements, f"{len(after.agreements)} agreement(s)")
        self.day.current = None

    @defer.inlineCallbacks
    def settled(self, seconds: float = 10.0):  # type: ignore[no-untyped-def]
        """Wait (bounded) until both parties have settled every request they sent (the
        timed-out one when its reversal is final), and check that they did."""
        self.day.current = "every request settled"
        waited = 0.0
        while (self.gtja.outbox or self.ccb.outbox) and waited < seconds:
            yield task.deferLater(self.reactor, 0.1, lambda: None)
            waited += 0.1
        left = [e.describe() for o in (self.gtja, self.ccb) for e in o.unsettled()]
        self.day.check("every request sent has its outcome (outbox empty)", not left,
                       "; ".join(left))
        self.day.current = None


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
    undone = L.reversing_postings(f"{BROKER}|XFER.IN|{SLOW}")
    day.check("the timed-out transfer was undone exactly once at the bank",
              bool(slow and slow.reversed and undone == 2), f"{undone} reversing postings")
    for name in (MERCHANT, PRODUCT):
        day.check(f"{name.lower()} account not negative", L.account(name).balance_fen >= 0)


def check_tls(day: Day, service: GatewayService) -> None:
    """Every session the gateway holds is TLS with a client certificate."""
    sessions = list(service.gateway.sessions)
    with_cert = [s for s in sessions if s.link.peer_public_key() is not None]
    day.check("every session over mutual TLS", len(sessions) >= 2 and with_cert == sessions,
              f"{len(with_cert)} of {len(sessions)} with a client certificate")


def peer_tls(store: KeyStore, home: Path, party: str, connect: str) -> GatewayTLS:
    """What an operator does for a peer (docs/operations.md, TLS set-up): the dev CA
    issues a certificate for the peer's registered key; the peer trusts the gateway's."""
    cert_file(home, party).write_bytes(issue_peer_certificate(store, party))
    return client_tls(home, party, connect, store.certificate_pem())


def summary(day: Day, home: Path, eod: list[str], kept: bool = True,
            tls: bool = False) -> str:
    title = "SBDX gateway demo — one business day" + (" over mutual TLS" if tls else "")
    lines = ["", title, "=" * 60]
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
    if not day.completed:
        lines.append("the day did not run to its end")
    lines += ["RESULT: " + ("every step did what it should" if day.ok else "FAILED"), ""]
    return "\n".join(lines)


#: Seconds the whole day may take (it needs ~10); then the timer stops it as failed.
TIMEOUT_SECONDS = 50.0


def run_demo(home: Path, reactor: Any, end_of_day: Callable[..., Any] | None = None,
             kept: bool = True, timeout: float = TIMEOUT_SECONDS, tls: bool = False) -> bool:
    """Run the day (every session over mutual TLS with ``tls``); returns True when it
    completed and every step and check passed."""
    gw_home = home / "gateway"
    store = KeyStore.create(gw_home / "keys", party=GW)
    for party, role in ((BANK, "BANK"), (BROKER, "BROKER")):
        pub = ensure_key(home / party.lower(), party)
        store.add_peer(party, role, pub.read_bytes())
    cfg = Config(party=GW, listen="127.0.0.1:0", relay_timeout_seconds=2.0,
                 reversal_retry_initial_seconds=0.5, reversal_retry_max_seconds=2.0)
    service = GatewayService(gw_home, cfg, reactor, tls=tls)
    service.startService()
    connect = f"127.0.0.1:{service.listening_port}"
    cert = store.certificate_pem()
    bank = start_sim(reactor, home / "ccb", "BANK", BANK, connect, cert,
                     tls=peer_tls(store, home / "ccb", BANK, connect) if tls else None)
    broker = start_sim(reactor, home / "gtja", "BROKER", BROKER, connect, cert,
                       tls=peer_tls(store, home / "gtja", BROKER, connect) if tls else None)
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
            script = Script(day, bank, broker, reactor)
            if tls:
                check_tls(day, service)
            yield script.run()
            yield script.exit(service)
            yield script.settled()
            check_books(day, bank, broker, opening)
            if end_of_day is not None:
                eod_lines.extend(end_of_day(home, day, bank, broker, service))
            day.completed = not timer.called
        except Exception as exc:  # a broken demo says why and fails
            log.exception("demo failed")
            day.check("demo ran to the end", False, repr(exc))
        if timer.active():
            timer.cancel()
        yield shut_down()  # not in a finally: a generator closed at exit must not yield

    stopping: list[defer.Deferred[Any]] = []

    def stopped_cleanly(results: list[tuple[bool, Any]]) -> None:
        """The sims and the gateway closed their books and journals (a failed final
        commit fails the demo, and says so)."""
        gateway_ok, gateway_failure = results[2]
        errors = [f"{sim.node.config.party}: {sim.stop_error}" for sim in (bank, broker)
                  if sim.stop_error is not None]
        if not gateway_ok:
            log.error("demo: stopping the gateway failed: %s", gateway_failure.getTraceback())
            errors.append(f"gateway: {gateway_failure.getErrorMessage()}")
        day.check("everything stopped cleanly", not errors, "; ".join(errors))

    def shut_down() -> defer.Deferred[None]:
        """Stop the simulators and the gateway once, then the reactor."""
        if not stopping:
            done = defer.DeferredList([bank.stop(), broker.stop(),
                                       defer.maybeDeferred(service.stopService)],
                                      consumeErrors=True)
            done.addCallback(stopped_cleanly)
            done.addBoth(lambda _: reactor.stop() if reactor.running else None)
            stopping.append(done)
        return stopping[0]

    def out_of_time() -> None:
        log.error("demo: not finished after %g s; stopping", timeout)
        day.timed_out(timeout)
        shut_down()

    timer = reactor.callLater(timeout, out_of_time)
    reactor.callWhenRunning(main)
    reactor.run()
    print(summary(day, home, eod_lines, kept, tls))
    return day.ok


def main(keep: Path | None = None, timeout: float = TIMEOUT_SECONDS, tls: bool = False) -> int:
    from twisted.internet import reactor

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = keep or Path(tempfile.mkdtemp(prefix="sbdx-demo-"))
    home.mkdir(parents=True, exist_ok=True)
    from .demo_eod import end_of_day

    ok = run_demo(home, reactor, end_of_day, kept=keep is not None, timeout=timeout, tls=tls)
    if keep is None:
        shutil.rmtree(home, ignore_errors=True)
    return 0 if ok else 1
