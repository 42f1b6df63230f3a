"""What ``gateway sim broker --script FILE`` and ``--rate N`` originate.

A script is text, one step a line (docs/simulators.md has the reference)::

    # comment
    sign      fund=100020003000                    expect=0000
    xfer-in   fund=100020003000 amount=50000.00
    xfer-out  fund=100020003000 amount=20000.00   sn=GTJAOUT1
    pay       fund=100020003000 amount=199.00 product=L2QUOTE kind=LEVEL2 days=30
    refund    amount=199.00                        # the last paid order, unless orig=BIZSN
    otc-subscribe wallet=0099000011112222 amount=1000000.00 product=SY2026A01
    otc-redeem    amount=400000.00                 # the last subscription, unless orig=
                                                   # (last = the last one answered 0000)
    unsign    fund=100020003000                    # refused locally while funds are left
    wait      2.5                                  # or: wait sn=GTJASLOW1 state=REVERSED

Every step may name its BizSn (``sn=``, beginning with the broker's PartyId, §4) and
the Result it expects (``expect=``; a local refusal matches its code, or
``CODE(local)`` to insist on it).  The clients are
the broker ledger's fund accounts: wallet, name and ID come from there.

``--rate N`` signs every client the registry does not yet hold, then sends N mixed
XFER.IN/XFER.OUT a second (an XFER.OUT only when the fund account holds the amount)
while a session is ready.
"""
from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task

from ..rules import to_fen
from .drive import Originator, Reply

log = logging.getLogger(__name__)

#: verb → (required keys, optional keys)
VERBS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "sign": (frozenset({"fund"}), frozenset({"level", "id_no"})),
    "xfer-in": (frozenset({"fund", "amount"}), frozenset()),
    "xfer-out": (frozenset({"fund", "amount"}), frozenset()),
    "pay": (frozenset({"amount"}), frozenset({"fund", "wallet", "product", "kind", "days",
                                              "order"})),
    "refund": (frozenset({"amount"}), frozenset({"orig"})),
    "otc-subscribe": (frozenset({"wallet", "amount"}), frozenset({"product", "kind", "order"})),
    "otc-redeem": (frozenset({"amount"}), frozenset({"orig", "wallet"})),
    "unsign": (frozenset({"fund"}), frozenset()),
    "wait": (frozenset(), frozenset({"seconds", "state", "type"})),
}
COMMON = frozenset({"sn", "expect"})
#: An amount as §6 writes it: yuan with two decimals (schemas/types.xsd).
AMOUNT = re.compile(r"(?:0|[1-9][0-9]{0,12})\.[0-9]{2}")


class ScriptError(ValueError):
    """A script line that cannot be run: names the line and what is wrong."""

    def __init__(self, line: int, text: str) -> None:
        super().__init__(f"script line {line}: {text}")
        self.line = line


@dataclass(frozen=True)
class Step:
    line: int
    verb: str
    args: dict[str, str]

    @property
    def expect(self) -> str | None:
        return self.args.get("expect")

    def describe(self) -> str:
        shown = " ".join(f"{k}={v}" for k, v in self.args.items() if k != "expect")
        return f"{self.verb} {shown}".strip()


def parse_script(text: str, party: str | None = None) -> list[Step]:
    """The steps of a script; ScriptError for the first line that is wrong.  With
    ``party`` (the broker's PartyId), a step's ``sn=`` must begin with it (§4)."""
    steps = []
    for n, raw in enumerate(text.splitlines(), 1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        verb, args = words[0].lower(), {}
        if verb not in VERBS:
            raise ScriptError(n, f"unknown step {words[0]!r} (one of {', '.join(VERBS)})")
        for word in words[1:]:
            key, eq, value = word.partition("=")
            if not eq and verb == "wait" and "seconds" not in args:
                key, value = "seconds", word  # ``wait 2.5``
            elif not eq or not value:
                raise ScriptError(n, f"{word!r} is not key=value")
            args[key.lower().replace("-", "_")] = value
        _check_step(n, verb, args)
        _check_sn(n, verb, args, party)
        steps.append(Step(n, verb, args))
    return steps


def _check_step(n: int, verb: str, args: dict[str, str]) -> None:
    required, optional = VERBS[verb]
    unknown = set(args) - required - optional - COMMON
    if unknown:
        raise ScriptError(n, f"{verb}: unknown key(s) {', '.join(sorted(unknown))}")
    missing = required - set(args)
    if missing:
        raise ScriptError(n, f"{verb}: missing {', '.join(sorted(missing))}")
    if "amount" in args and not AMOUNT.fullmatch(args["amount"]):
        raise ScriptError(n, f"amount {args['amount']!r} is not an amount like 100.00")
    if verb == "pay" and not ({"fund", "wallet"} & set(args)):
        raise ScriptError(n, "pay: needs fund= or wallet=")
    if verb == "wait":
        if not ({"seconds", "sn"} & set(args)):
            raise ScriptError(n, "wait: needs seconds (wait 2.5) or sn=BIZSN state=STATE")
        try:
            float(args.get("seconds", "0"))
        except ValueError:
            raise ScriptError(n, f"wait: {args['seconds']!r} is not a number") from None


#: A BizSn as §4 has it: 1-32 ASCII letters and digits.
BIZSN = re.compile(r"[A-Za-z0-9]{1,32}")


def _check_sn(n: int, verb: str, args: dict[str, str], party: str | None) -> None:
    """A step's own BizSn is what the gateway takes (§4): 1-32 letters and digits that
    begin with the sender's PartyId, else the gateway answers E111 — which a step may
    expect on purpose (``expect=E111``). ``wait sn=`` names a record and is not checked."""
    sn = args.get("sn")
    if sn is None or verb == "wait" or args.get("expect") == "E111":
        return
    if not BIZSN.fullmatch(sn):
        raise ScriptError(n, f"sn {sn!r} is not 1-32 letters and digits (§4)")
    if party is not None and not sn.startswith(party):
        raise ScriptError(n, f"sn {sn!r} does not begin with the broker's PartyId {party} "
                             "(§4: the gateway would answer E111)")


@dataclass
class Tally:
    """Results of a run: per step/transfer, and whether every expectation held."""

    steps: int = 0
    unexpected: list[str] = field(default_factory=list)
    results: dict[str, int] = field(default_factory=dict)

    def count(self, result: str) -> None:
        self.results[result] = self.results.get(result, 0) + 1

    @property
    def ok(self) -> bool:
        return not self.unexpected


class ScriptRun:
    """Runs the steps one after the other, each waiting for its answer."""

    def __init__(self, originator: Originator, steps: list[Step], reactor: Any,
                 say: Callable[[str], None] = print) -> None:
        self.o, self.steps, self.reactor, self.say = originator, steps, reactor, say
        self.tally = Tally()
        #: "pay"/"otc" → (BizSn, wallet) of the last one that succeeded (refund/redeem it)
        self._last: dict[str, tuple[str, str]] = {}
        self._sent: tuple[str, tuple[str, str]] | None = None

    @defer.inlineCallbacks
    def run(self):  # type: ignore[no-untyped-def]
        for step in self.steps:
            if not self.o.accepting:  # the broker is stopping (SIGTERM): no new step
                self.tally.unexpected.append(f"line {step.line}: {step.describe()} not run: "
                                             "the broker stopped first")
                break
            self._sent = None
            got = yield self._one(step)
            if self._sent is not None and got.result == "0000":
                self._last[self._sent[0]] = self._sent[1]
            expected = step.expect
            ok = expected is None or expected in (got.result, got.shown)
            self.tally.steps += 1
            self.tally.count(got.shown)
            if not ok:
                self.tally.unexpected.append(f"line {step.line}: {step.describe()} → "
                                             f"{got.shown}, expected {expected}")
            self.say(f"step {self.tally.steps} (line {step.line}) {step.describe()}: "
                     f"{got.shown}" + (f" {got.text}" if got.result != "0000" and got.text
                                       else "")
                     + ("" if expected is None else " ok" if ok else f" UNEXPECTED "
                        f"(expected {expected})"))
        return self.tally

    def _one(self, step: Step) -> defer.Deferred[Reply]:
        a, o = step.args, self.o
        sn = a.get("sn") or o.sn({"sign": "S", "xfer-in": "V", "xfer-out": "V", "pay": "P",
                                  "refund": "F", "otc-subscribe": "O", "otc-redeem": "D",
                                  "unsign": "U", "wait": "W"}[step.verb])
        if step.verb == "sign":
            return o.sign(a["fund"], sn, a.get("level", "1"), a.get("id_no"))
        if step.verb in ("xfer-in", "xfer-out"):
            return o.transfer(step.verb.upper().replace("-", "."), a["fund"], a["amount"], sn)
        if step.verb == "pay":
            wallet = a.get("wallet") or self._wallet_of(a["fund"])
            self._sent = ("pay", (sn, wallet))
            return o.pay(wallet, a["amount"], a.get("product", "L2QUOTE"),
                         a.get("kind", "LEVEL2"), int(a.get("days", "30")), sn, a.get("order"))
        if step.verb == "refund":
            return o.refund(a.get("orig") or self._last.get("pay", ("NONE", ""))[0],
                            a["amount"], sn)
        if step.verb == "otc-subscribe":
            self._sent = ("otc", (sn, a["wallet"]))
            return o.otc_subscribe(a["wallet"], a["amount"], a.get("product", "SY001"),
                                   a.get("kind", "CORPORATE"), sn, a.get("order"))
        if step.verb == "otc-redeem":
            orig, wallet = self._last.get("otc", ("NONE", ""))
            return o.otc_redeem(a.get("orig") or orig, a.get("wallet") or wallet,
                                a["amount"], sn)
        if step.verb == "unsign":
            return o.unsign(a["fund"], sn)
        return self._wait(a)

    def _wallet_of(self, fund: str) -> str:
        client = self.o.book.client(fund)
        return str(client.link) if client is not None else "0" * 16

    @defer.inlineCallbacks
    def _wait(self, a: dict[str, str]):  # type: ignore[no-untyped-def]
        seconds = float(a.get("seconds", "30" if "sn" in a else "0"))
        if "sn" not in a:
            yield task.deferLater(self.reactor, seconds, lambda: None)
            return Reply("0000", f"waited {seconds:g} s")
        state = a.get("state", "REVERSED")
        got = yield self.o.wait_state(a["sn"], a.get("type", "XFER.IN"), state, seconds)
        return Reply(state if got == state else got, f"{a['sn']} is {got}")


class Load:
    """``--rate N``: N mixed transfers a second from the signed clients, for
    ``seconds`` (None: until :meth:`stop`), at most ``max_inflight`` unanswered.  While
    the broker has no ready session it sends nothing (a core does not originate into a
    link that is down, nor catch up afterwards: those transfers are ``skipped``)."""

    TICK = 0.02

    def __init__(self, originator: Originator, reactor: Any, rate: float,
                 seconds: float | None = None, max_inflight: int = 500,
                 rng: random.Random | None = None) -> None:
        self.o, self.reactor, self.rate, self.seconds = originator, reactor, rate, seconds
        self.max_inflight = max_inflight
        self.rng = rng or random.Random()
        self.tally = Tally()
        self.sent = 0
        self.skipped = 0
        self.inflight = 0
        self.clients: list[str] = []
        self._loop: task.LoopingCall | None = None
        self._started = 0.0
        self._done: defer.Deferred[Tally] = defer.Deferred()
        self._stopping = False

    @defer.inlineCallbacks
    def run(self):  # type: ignore[no-untyped-def]
        """Sign who needs it, send until the time is up or stop(); fires with the Tally
        when sending has stopped (answers still to come keep counting in it: the
        broker waits for them, bounded, see gateway/sim/process.py)."""
        self.clients = yield self._signed_clients()
        if self._stopping:
            return self.tally
        if not self.clients:
            self.tally.unexpected.append("no client could be signed: nothing to send")
            return self.tally
        log.info("load: %g transfers/s over %d client(s)%s", self.rate, len(self.clients),
                 f" for {self.seconds:g} s" if self.seconds else "")
        self._started = self.reactor.seconds()
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(self.TICK, now=True)
        tally = yield self._done
        return tally

    def stop(self) -> None:
        """Send no more: :meth:`run` fires now."""
        self._stopping = True
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if not self._done.called:
            self._done.callback(self.tally)

    @defer.inlineCallbacks
    def _signed_clients(self):  # type: ignore[no-untyped-def]
        signed = []
        for client in self.o.book.clients():
            if self._stopping:
                break
            agreement = yield self.o.agreement_of(client.id)
            if agreement is None:
                reply = yield self.o.sign(client.id)
                log.info("load: sign %s: %s %s", client.id, reply.shown, reply.text)
                if reply.result != "0000":
                    continue
            signed.append(client.id)
        return signed

    def _tick(self) -> None:
        elapsed = self.reactor.seconds() - self._started
        if self.seconds is not None and elapsed >= self.seconds:
            self.stop()
            return
        due = int(elapsed * self.rate) + 1 - self.sent - self.skipped
        if due > 0 and not self.o.sim.node.ready:
            self.skipped += due
            return
        for _ in range(max(0, min(due, self.max_inflight - self.inflight))):
            self._send_one()

    def _send_one(self) -> None:
        fund = self.rng.choice(self.clients)
        amount = f"{self.rng.randint(100, 10_000) / 100:.2f}"
        out = self.rng.random() < 0.4 and self.o.book.balance(fund) >= (to_fen(amount) or 0)
        self.sent += 1
        self.inflight += 1
        d = self.o.transfer("XFER.OUT" if out else "XFER.IN", fund, amount)
        d.addCallbacks(self._answered, self._failed)

    def _answered(self, reply: Reply) -> None:
        self.inflight -= 1
        self.tally.steps += 1
        self.tally.count(reply.shown)

    def _failed(self, failure: Any) -> None:
        self.inflight -= 1
        self.tally.unexpected.append(f"transfer failed: {failure.getErrorMessage()}")
