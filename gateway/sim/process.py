"""``gateway sim bank|broker``: a simulated party as a process (PROTOCOL §9).

It dials the gateway and serves what the gateway relays to it until SIGTERM/SIGINT.
A broker may also originate business (``--script FILE``, ``--rate N``) and then
exits; each party can write its end-of-day files (``--eod-dir``): the bank its
XFER, SIGN, PAY and OTC files at the end (its closing files, in DIR) and on SIGUSR1
(provisional ones, in DIR/provisional/, where a watcher of DIR never takes them), the
broker its BAL file at the end.  docs/simulators.md describes every option.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import connect_address
from gateway.exitcodes import EXIT_FAILED, EXIT_OK, EXIT_USAGE

log = logging.getLogger(__name__)

#: Seconds a broker waits at its end (script done, --seconds over, or SIGTERM) for the
#: requests it has not settled yet (--settle-seconds): a relay timeout (10 s by default)
#: and the reversal that follows, or a gateway restart and the reconnect, fit in it.
SETTLE_SECONDS = 60.0
#: Sub-folder of ``--eod-dir`` for the bank's mid-day (SIGUSR1) files: the day is not
#: over, so they are not the day's files; a watcher of DIR ignores sub-folders.
PROVISIONAL = "provisional"
#: Seconds a driving broker waits for its first ready (logged-on, keyed) session.
READY_SECONDS = 30.0


def add_arguments(p: argparse.ArgumentParser, role: str) -> None:
    """The options of ``gateway sim <role>``."""
    p.add_argument("--connect", required=True, metavar="HOST:PORT[,HOST:PORT…]",
                   type=connect_address,
                   help="the gateway's address (IPv6 as [::1]:7700), or both addresses of "
                        "an active/standby pair, tried in turn (required, no default)")
    p.add_argument("--party", metavar="ID",
                   help="its PartyId (default CCB for a bank, GTJA for a broker)")
    p.add_argument("--gateway-cert", type=Path, metavar="FILE",
                   help="the gateway's certificate, whose key signs what the gateway sends "
                        "(default: HOME/keys/gateway.crt)")
    p.add_argument("--gateway-party", default="GW01", metavar="ID",
                   help="the gateway's PartyId")
    p.add_argument("--connections", type=int, default=1, metavar="N",
                   help="sessions to hold with the gateway (default 1)")
    p.add_argument("--tls", action="store_true",
                   help="dial the gateway over TLS (for `gateway serve --tls`): this party's "
                        "key with --tls-cert as client certificate; the gateway's certificate "
                        "must chain to --tls-ca and name the --connect host")
    p.add_argument("--tls-cert", type=Path, metavar="FILE",
                   help="with --tls: the certificate for this party's key that the gateway's "
                        "operator issued (gateway peer issue); default: HOME/keys/PARTY.crt")
    p.add_argument("--tls-ca", type=Path, metavar="FILE",
                   help="with --tls: the certificate(s) to trust for the gateway, PEM: its "
                        "own certificate, or the CA that issued it; default: --gateway-cert")
    p.add_argument("--eod-dir", type=Path, metavar="DIR",
                   help="write this party's signed end-of-day files (§8) into DIR at the end"
                        + (" (on SIGUSR1: provisional ones, of the day so far, into "
                           f"DIR/{PROVISIONAL}/)" if role == "bank" else "")
                        + " (default: none written)")
    p.add_argument("--eod-date", type=dt.date.fromisoformat, metavar="YYYY-MM-DD",
                   help="trade date of those files (default: the trade date when written)")
    if role == "bank":
        p.add_argument("--broker", default="GTJA",
                       help="the broker whose clients it seeds and whose files it writes")
        p.add_argument("--withhold", nargs="*", metavar="BIZSN",
                       help="book these requests but never answer (timeout tests) "
                        "(default: answer every one)")
        p.add_argument("--delay", type=float, default=0.0, metavar="N",
                       help="answer after N seconds")
        p.add_argument("--holidays", nargs="*", type=dt.date.fromisoformat, default=[],
                       metavar="YYYY-MM-DD",
                       help="the gateway's holidays, for the OTC BookDate in its OTC file "
                            "(default: none, weekends only)")
    else:
        p.add_argument("--bank", default="CCB", help="the bank it sends to (default CCB)")
        p.add_argument("--script", type=Path, metavar="FILE",
                       help="originate the steps of FILE (docs/simulators.md), then exit "
                            "(default: no script)")
        p.add_argument("--rate", type=float, metavar="N",
                       help="originate N mixed transfers a second (after --script, if any) "
                            "(default: none: serve only)")
        p.add_argument("--seconds", type=float, metavar="S",
                       help="with --rate: send for S seconds, then settle and exit "
                            "(default: until SIGTERM)")
        p.add_argument("--exit", action="store_true",
                       help="the business exit (§11), after --script if any: return every "
                            "client's funds (XFER.OUT) and unsign (CTS.UNSIGN) its agreement; "
                            "exit 1 if any is not unsigned (default: off)")
        p.add_argument("--exit-report", type=Path, metavar="FILE",
                       help="with --exit: the JSON of `gateway exit-report --json`; only "
                            "agreements it lists as ready, or blocked by funds alone, are "
                            "unsigned (default: none: every active agreement is tried and "
                            "the gateway's answers decide)")
        p.add_argument("--settle-seconds", type=float, default=SETTLE_SECONDS, metavar="S",
                       help="at the end, wait at most S seconds for the requests not yet "
                            f"settled (default {SETTLE_SECONDS:g}); exit 1 if any is left")


def run(args: argparse.Namespace, home: Path, gateway_cert: Path) -> int:
    """Run the simulated party until it is stopped (or, driving, until it is done)."""
    role = args.sim_command.upper()
    party = args.party or ("CCB" if role == "BANK" else "GTJA")
    if not gateway_cert.exists():
        print(f"gateway sim: no gateway certificate at {gateway_cert} (--gateway-cert)",
              file=sys.stderr)
        return EXIT_FAILED
    steps = None
    if role == "BROKER" and args.script is not None:
        from .script import ScriptError, parse_script

        try:
            steps = parse_script(args.script.read_text(encoding="utf-8"), party)
        except (OSError, UnicodeDecodeError, ScriptError) as exc:
            print(f"gateway sim broker: {exc}", file=sys.stderr)
            return EXIT_USAGE
    exit_report = None
    if role == "BROKER":
        if args.exit_report is not None and not args.exit:
            print("gateway sim broker: --exit-report goes with --exit", file=sys.stderr)
            return EXIT_USAGE
        if args.exit and args.rate is not None:
            print("gateway sim broker: --exit and --rate do not go together: the exit "
                  "ends the business", file=sys.stderr)
            return EXIT_USAGE
        if args.exit_report is not None:
            try:
                exit_report = json.loads(args.exit_report.read_text(encoding="utf-8"))
                if not isinstance(exit_report, dict) or "agreements" not in exit_report:
                    raise ValueError("not the JSON of `gateway exit-report --json`")
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                print(f"gateway sim broker: --exit-report {args.exit_report}: {exc}; make "
                      "it with `gateway exit-report --json > FILE` on the gateway's host",
                      file=sys.stderr)
                return EXIT_USAGE
    if role == "BROKER" and args.rate is not None and args.rate <= 0:
        print("gateway sim broker: --rate must be above 0", file=sys.stderr)
        return EXIT_USAGE
    if role == "BROKER" and (args.settle_seconds < 0 or (args.seconds is not None
                                                         and args.seconds <= 0)):
        print("gateway sim broker: --seconds must be above 0, --settle-seconds 0 or more",
              file=sys.stderr)
        return EXIT_USAGE

    from twisted.internet import reactor

    from .runtime import client_tls, ensure_key, start_sim

    pub = ensure_key(home, party)
    print(f"{role.lower()} {party}: public key {pub} (register it: gateway peer add --id "
          f"{party} --role {role} --cert {pub})", flush=True)
    tls = None
    if args.tls:
        try:
            trusted = (args.tls_ca or gateway_cert).read_bytes()
            tls = client_tls(home, party, args.connect, trusted, args.tls_cert)
        except (OSError, ValueError) as exc:
            print(f"gateway sim {role.lower()}: --tls: {exc}", file=sys.stderr)
            return EXIT_FAILED
    sim = start_sim(reactor, home, role, party, args.connect, gateway_cert.read_bytes(),
                    args.gateway_party, connections=args.connections, tls=tls)
    if role == "BANK":
        return _run_bank(args, sim, reactor)
    return _run_broker(args, sim, reactor, steps, exit_report)


def _eod_day(args: argparse.Namespace, sim: Any) -> dt.date:
    return args.eod_date or dt.date.fromisoformat(sim.node.trade_date())


def _run_bank(args: argparse.Namespace, sim: Any, reactor: Any) -> int:
    from ..bookdate import Calendar
    from .eod import write_bank_files

    sim.book.seed(args.broker)
    sim.book.calendar = Calendar(args.holidays)
    withheld = set(args.withhold or [])
    sim.book.withhold = lambda m: str(m.body.get("BizSn")) in withheld
    if args.delay:
        def later(send: Callable[[], None]) -> None:
            def answer() -> None:
                send()
                sim.node.flush()

            reactor.callLater(args.delay, answer)

        sim.node.answer_later = later

    def write_eod(provisional: bool = False) -> None:
        sim.node.flush()
        day = _eod_day(args, sim)
        out = args.eod_dir / PROVISIONAL if provisional else args.eod_dir
        paths = write_bank_files(sim.book, out, day, args.broker,
                                 sim.node.gateway.party, sim.node.signer, sim.node.local_now())
        print("eod: wrote " + ("provisional " if provisional else "")
              + " ".join(str(p) for p in paths), flush=True)

    def stop() -> Any:
        if args.eod_dir is not None:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the books are about to close
            _guarded(write_eod)
        return sim.stop()  # the shutdown waits for the books and journal to close

    if args.eod_dir is not None:
        signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(
            _guarded, lambda: write_eod(provisional=True)))
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return EXIT_OK if sim.stop_error is None else EXIT_FAILED  # it is logged


def signed_fen(fen: int) -> str:
    """Fen as yuan, with a minus sign when negative."""
    from ..rules import fen_text

    return fen_text(fen) if fen >= 0 else "-" + fen_text(-fen)


def _guarded(write: Callable[[], None]) -> None:
    """End-of-day files are written or the reason is logged; the peer keeps running."""
    try:
        write()
    except Exception:
        log.exception("writing the end-of-day files failed")


class Broker:
    """A broker process: serves relayed requests, originates its script and load, and
    sees every request it sent through to its outcome (gateway/sim/outbox.py), also
    those an earlier run left unsettled."""

    def __init__(self, args: argparse.Namespace, sim: Any, reactor: Any,
                 steps: list[Any] | None) -> None:
        from .drive import Originator

        self.args, self.sim, self.reactor, self.steps = args, sim, reactor, steps
        self.originator = Originator(sim, args.bank, reactor)
        self.load: Any = None
        #: with --exit-report: the exit report's JSON (gateway/sim/exiting.py)
        self.exit_report: dict[str, Any] | None = None
        self.exit_code = EXIT_OK
        self.finished = False
        self.ending = False  # finish() has begun: the reactor is already stopping
        self._finishing: Any = None
        self._concluding: Any = None

    @property
    def driving(self) -> bool:
        return self.steps is not None or self.args.rate is not None or self.args.exit

    def drive(self) -> Any:
        from twisted.internet import defer, task

        from .script import Load, ScriptRun

        @defer.inlineCallbacks
        def go():  # type: ignore[no-untyped-def]
            waited = 0.0
            while not self.sim.node.ready and waited < READY_SECONDS:
                yield task.deferLater(self.reactor, 0.1, lambda: None)
                waited += 0.1
            if not self.sim.node.ready:
                print(f"broker: no ready session after {READY_SECONDS:g} s", flush=True)
                self.exit_code = EXIT_FAILED
            else:
                if self.steps is not None:
                    tally = yield ScriptRun(self.originator, self.steps, self.reactor,
                                            lambda line: print(line, flush=True)).run()
                    self._report("script", tally)
                if self.args.exit and not self.ending:
                    yield self._exit()
                if self.args.rate is not None and not self.ending:
                    self.load = Load(self.originator, self.reactor, self.args.rate,
                                     self.args.seconds)
                    yield self.load.run()  # until --seconds is over, or SIGTERM
                self.finished = True
                yield self.conclude()
            self._stop_reactor()  # the shutdown trigger (finish) does the rest

        d = go()
        d.addErrback(self._crashed)
        return d

    def _exit(self) -> Any:
        """--exit: every client's funds back, every agreement unsigned (or why not)."""
        from twisted.internet import defer

        from .exiting import run_exit

        @defer.inlineCallbacks
        def go():  # type: ignore[no-untyped-def]
            tally = yield run_exit(self.originator, self.exit_report,
                                   lambda line: print(line, flush=True))
            print(f"exit: {len(tally.unsigned)} agreement(s) unsigned, "
                  f"{signed_fen(tally.returned_fen)} returned to wallets, "
                  f"{len(tally.not_unsigned)} not unsigned", flush=True)
            for number, why in tally.not_unsigned:
                print(f"  NOT UNSIGNED {number}: {why}", flush=True)
            if not tally.ok:
                self.exit_code = EXIT_FAILED

        return go()

    def _crashed(self, failure: Any) -> None:
        log.error("broker: driving failed: %s", failure.getTraceback())
        self.exit_code = EXIT_FAILED
        self._stop_reactor()

    def _stop_reactor(self) -> None:
        if not self.ending and self.reactor.running:
            self.ending = True
            self.reactor.stop()

    def _report(self, what: str, tally: Any) -> None:
        results = ", ".join(f"{k} {v}" for k, v in sorted(tally.results.items()))
        print(f"{what}: {tally.steps} answered ({results or 'none'}); "
              + ("all as expected" if tally.ok else f"{len(tally.unexpected)} unexpected"),
              flush=True)
        for line in tally.unexpected[:20]:
            print(f"  UNEXPECTED {line}", flush=True)
        if not tally.ok:
            self.exit_code = EXIT_FAILED

    def conclude(self) -> Any:
        """Once (each caller gets a Deferred of its own): send no new request, wait at
        most --settle-seconds for every request sent to be settled, then say how the run
        ended — the load's tally, what is still unsettled, the books — and fail the run
        (exit 1) if anything is unsettled or the books do not balance."""
        from twisted.internet import defer

        if self._concluding is None:
            # set before it runs: stopping the load resumes drive(), which calls us again
            self._concluding = defer.Deferred()
            defer.maybeDeferred(self._conclude).addErrback(self._crashed).chainDeferred(
                self._concluding)
        done: defer.Deferred[None] = defer.Deferred()
        self._concluding.addCallback(lambda _: done.callback(None))
        return done

    def _conclude(self) -> Any:
        from twisted.internet import defer, task

        @defer.inlineCallbacks
        def go():  # type: ignore[no-untyped-def]
            self.originator.accepting = False
            if self.load is not None:
                self.load.stop()
            deadline = self.reactor.seconds() + self.args.settle_seconds
            while self.originator.outbox and self.reactor.seconds() < deadline:
                yield task.deferLater(self.reactor, 0.1, lambda: None)
            if self.load is not None:
                self._report("rate", self.load.tally)
                if self.load.skipped:
                    print(f"rate: {self.load.skipped} not sent while no session was ready",
                          flush=True)
            self._report_settlement()

        return go()

    def _report_settlement(self) -> None:
        from ..rules import to_fen
        from .broker import HOLD

        o = self.originator
        left = o.unsettled()
        recovered = (f"{o.repeats} sent again, {o.queries} looked up (XFER.QUERY)"
                     if o.repeats or o.queries else "none needed recovery")
        if left:
            print(f"UNSETTLED: {len(left)} request(s) after {self.args.settle_seconds:g} s "
                  f"({recovered}); they stay in the outbox for the next run:", flush=True)
            for entry in left[:20]:
                print(f"  {entry.describe()}", flush=True)
            self.exit_code = EXIT_FAILED
        else:
            print(f"settled: every request sent has its outcome ({recovered})", flush=True)
        book = self.sim.book
        held, total = book.balance(HOLD), book.ledger.total()
        unsettled_out = sum(to_fen(str(e.body["Amount"])) or 0 for e in left
                            if e.business == "XFER.OUT")
        funds = sum(a.balance_fen for a in book.clients())
        print(f"books: client funds {signed_fen(funds)}, in HOLD {signed_fen(held)}, "
              f"total {signed_fen(total)}", flush=True)
        if total != 0 or held != unsettled_out:
            print(f"books: UNBALANCED: the total must be 0.00 and HOLD hold the unsettled "
                  f"XFER.OUTs ({signed_fen(unsettled_out)})", flush=True)
            self.exit_code = EXIT_FAILED

    def finish(self) -> Any:
        """At shutdown (end of the drive, or SIGTERM): conclude (bounded), write the BAL
        file, close the sessions."""
        from twisted.internet import defer

        if self._finishing is not None:
            return self._finishing
        self.ending = True

        @defer.inlineCallbacks
        def go():  # type: ignore[no-untyped-def]
            yield self.conclude()
            if self.driving and not self.finished:
                print("broker: stopped before the drive was done", flush=True)
                self.exit_code = EXIT_FAILED
            if self.args.eod_dir is not None:
                _guarded(self._write_bal)
            yield self.sim.stop()
            if self.sim.stop_error is not None:  # the final commit failed (it is logged)
                self.exit_code = EXIT_FAILED

        self._finishing = go()
        return self._finishing

    def _write_bal(self) -> None:
        from .eod import write_bal_file

        self.sim.node.flush()
        path = write_bal_file(self.sim.book, self.args.eod_dir, _eod_day(self.args, self.sim),
                              self.args.bank, self.sim.node.signer, self.sim.node.local_now())
        print(f"eod: wrote {path}", flush=True)


def _run_broker(args: argparse.Namespace, sim: Any, reactor: Any,
                steps: list[Any] | None, exit_report: dict[str, Any] | None = None) -> int:
    sim.book.seed()
    broker = Broker(args, sim, reactor, steps)
    broker.exit_report = exit_report
    if broker.driving:
        reactor.callWhenRunning(broker.drive)
    reactor.addSystemEventTrigger("before", "shutdown", broker.finish)
    reactor.run()
    return broker.exit_code
