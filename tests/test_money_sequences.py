"""Issue 17: the money invariant holds for every order of requests, answers, timeouts and
restarts — a stateful property test (hypothesis RuleBasedStateMachine).

The gateway's sans-IO core runs in process (tests/inproc.py: real journal file, real keys
and signatures, no sockets).  A broker sends originals (XFER.IN/OUT, PAY.ORDER,
OTC.SUBSCRIBE) and give-backs (PAY.REFUND, OTC.REDEEM, XFER.REVERSE of any original, in
any amount), repeats any of them; a model bank answers what reaches it in any order, late,
twice or with a conflicting second answer, or never; time passes (relay timeouts,
reversal retries) and the gateway restarts.  The model bank books whatever the gateway
relays to it and it accepts — it trusts the gateway, so a give-back the gateway should
have refused shows up in its books — and it follows the receiver's rules of §6 (one
reversal per original; an original arriving after its reversal is refused; the reversal
of an unknown original is acknowledged).

Business is suspended and resumed with the bank, the broker or every party (§11): the
model expects B340 for a new original while either is suspended, and nothing else refused
with B340 — give-backs, reversals and XFER.OUT still flow.  On a PostgreSQL journal
(§12) the active gateway is also replaced by the standby of its pair (``takeover``): the
old one stands by — a turn it had not committed is fenced and discarded, its sessions cut
— and the other one takes over (suspensions read again, what was in flight reversed).

After every step: no original has more given back than it moved, at the bank or in the
gateway's accounts; no record is both reversed and SUCCEEDED; the gateway's records agree
with the bank's books; no original reached the bank twice.  At the end of each run the
gateway's end-of-day files of the day check valid and reconcile with its journal.

Issue 21: the machine runs on both stores, SQLite and PostgreSQL (a fresh database per
example, tests/pg.py).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from inproc import Clock, Rig, fast_config

from gateway import givebacks, records
from gateway.eod.check import check_file
from gateway.eod.export import export_file
from gateway.rules import fen_text
from gateway.suspension import NEW_BUSINESS

from conftest import BANK, BROKER, make_home
from flows import CORP, FUND, WALLET, sign_fields
from peer import Frame, TestPeer
from pg import drop_database, new_store_database

ORIGINALS = ("XFER.IN", "XFER.OUT", "PAY.ORDER", "OTC.SUBSCRIBE")
GIVE_BACK_OF = {"PAY.REFUND": "PAY.ORDER", "OTC.REDEEM": "OTC.SUBSCRIBE"}
Key = tuple[str, str, str]


class ModelBank:
    """The bank's books, as §6 asks a receiver to keep them."""

    def __init__(self) -> None:
        self.booked: dict[Key, int] = {}  # originals it booked: fen moved
        self.given: dict[Key, int] = defaultdict(int)  # refunds/redemptions booked
        self.reversed: set[Key] = set()  # reversals it applied (one per original)
        self.answers: dict[Key, str] = {}  # its own idempotency: the Result it gave
        self.delivered: Counter[Key] = Counter()

    def handle(self, req: Frame, ok: bool) -> str:
        """Book ``req`` (ok: as asked; not ok: refuse it) and return the Result."""
        b, kind = req.body, req.type[:-4]
        key = (str(req.head("From")), kind, b["BizSn"])
        if key in self.answers:
            return self.answers[key]
        result = self._book(kind, key, b, ok)
        self.answers[key] = result
        return result

    def _book(self, kind: str, key: Key, b: dict[str, str], ok: bool) -> str:
        fen = int(b["Amount"].replace(".", ""))
        if kind == "XFER.REVERSE":
            orig = (b["OrigFrom"], b["OrigType"], b["OrigBizSn"])
            if orig in self.reversed:
                return "0000"  # applied once; the same answer again
            if not ok:
                return "B399"
            self.reversed.add(orig)  # money back if it was booked; else nothing moves
            return "0000"
        if kind in GIVE_BACK_OF:
            if not ok:
                return "B310"
            self.given[(key[0], GIVE_BACK_OF[kind], b["OrigBizSn"])] += fen
            return "0000"
        if key in self.reversed:  # an original after its reversal is refused
            return "B314"
        if not ok:
            return "B310"
        self.booked[key] = fen
        return "0000"


class ModelSuspensions:
    """§11 as docs/operations.md describes ``suspend`` / ``resume`` (gateway/suspension.py)."""

    def __init__(self) -> None:
        self.every = False
        self.parties: set[str] = set()

    def suspend(self, party: str | None) -> None:
        if party is None:
            self.every = True
        else:
            self.parties.add(party)

    def resume(self, party: str | None) -> None:
        if party is None:
            self.every, self.parties = False, set()
            return
        self.parties.discard(party)
        if self.every:  # the others stay suspended, one by one
            self.every = False
            self.parties |= {BANK, BROKER} - {party}

    def holds(self, *parties: str) -> bool:
        return self.every or bool(self.parties.intersection(parties))


#: Answers the gateway gives without journaling the request (B320, §11 B340, S-codes):
#: a repeat of it is a new request.
NOT_JOURNALED = ("B320", "B340", "S")


def _amount(fen: int) -> str:
    return fen_text(fen)


def _original_fields(kind: str, sn: str, amount: str) -> list[tuple[str, Any]]:
    return {
        "XFER.IN": [("BizSn", sn), ("FundAcct", FUND), ("WalletId", WALLET),
                    ("Amount", amount), ("Ccy", "CNY")],
        "XFER.OUT": [("BizSn", sn), ("FundAcct", FUND), ("WalletId", WALLET),
                     ("Amount", amount), ("Ccy", "CNY")],
        "PAY.ORDER": [("BizSn", sn), ("OrderNo", "O" + sn), ("WalletId", WALLET),
                      ("Amount", amount), ("Ccy", "CNY"), ("ProductCode", "L2"),
                      ("ProductKind", "LEVEL2"), ("ServiceEnd", "2099-12-31")],
        "OTC.SUBSCRIBE": [("BizSn", sn), ("OrderNo", "O" + sn), ("CorpWalletId", CORP),
                          ("WalletKind", "CORPORATE"), ("ProductCode", "SY1"),
                          ("Amount", amount), ("Ccy", "CNY")],
    }[kind]


class MoneySequences(RuleBasedStateMachine):
    """On the SQLite journal; :class:`PgMoneySequences` on PostgreSQL."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="sbdx-money-"))
        home = make_home(self.tmp / "gw")
        self.clock = Clock(time.time())
        bank = TestPeer(BANK, "BANK", home.keys[BANK], port=0)
        broker = TestPeer(BROKER, "BROKER", home.keys[BROKER], port=0)
        self.config = self.make_config()
        self.rig = Rig(home, self.config, self.clock, bank, broker)
        self.model = ModelBank()
        self.suspended = ModelSuspensions()
        self.journaled: set[Key] = set()  # requests the gateway has a record of
        self.held: list[Frame] = []  # relayed to the bank, not answered yet
        self.done: list[tuple[Frame, str]] = []  # answered by the bank, with its Result
        self.lost: list[tuple[Frame, str]] = []  # the same, the answer lost (takeover)
        self.originals: list[tuple[str, str, int]] = []  # (Type, BizSn, fen)
        self.sent: list[tuple[str, list[tuple[str, Any]]]] = []  # for repeats
        self.n = 0
        self._sign()

    def make_config(self) -> Any:
        return fast_config()

    def teardown(self) -> None:
        try:
            self._the_days_files_reconcile()
        finally:
            self.rig.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _the_days_files_reconcile(self) -> None:
        """§8: the gateway's export of the day, for every family, checks valid and
        reconciles with its journal (a REV line without a fund account, a record listed
        twice or a state with no letter would be rejected)."""
        day = self.rig.gateway.local_now().date()
        out = self.tmp / "eod"
        for file_type in ("XFER", "PAY", "OTC", "SIGN"):
            path = export_file(self.rig.home.root, day, file_type, BANK, out)
            report = check_file(self.rig.home.root, path)
            assert report.valid and report.exit_code == 0, (file_type, report)

    # --- plumbing -------------------------------------------------------------------
    def _sn(self, letter: str) -> str:
        self.n += 1
        return f"{BROKER}{letter}{self.n:05d}"

    def _sign(self) -> None:
        self.rig.broker.send("CTS.SIGN.REQ", sign_fields("GTJAS0"), to=BANK,
                             encrypt=("CustName", "IdNo", "Phone"))
        req = self._business(self.rig.bank.take())[0]
        self._answer(req, "0000", AgreementNo="AG1")
        self.rig.broker.take()

    @staticmethod
    def _business(frames: list[Frame]) -> list[Frame]:
        return [f for f in frames if f.type.endswith(".REQ") and not f.type.startswith("SYS.")]

    def _collect(self, answer_to: str | None = None) -> list[Frame]:
        """Deliver what the gateway sent the bank to the model bank; the broker's
        answers to ``answer_to`` (a MsgId).  B340 answers nothing else (§11)."""
        for req in self._business(self.rig.bank.take()):
            kind = req.type[:-4]
            self.model.delivered[(str(req.head("From")), kind, req.body["BizSn"])] += 1
            self.held.append(req)
        answers = [f for f in self.rig.broker.take() if f.type.endswith(".RSP")]
        for f in answers:
            if f.head("RefId") != answer_to:
                assert f.body.get("Result") != "B340", ("B340 out of turn", f.type, f.body)
        return [f for f in answers if f.head("RefId") == answer_to]

    def _answer(self, req: Frame, result: str, **extra: str) -> None:
        kind = req.type[:-4]
        fields: list[tuple[str, Any]] = [("Result", result), ("ResultText", "model bank"),
                                         ("BizSn", req.body["BizSn"])]
        if result == "0000":
            sn = req.body["BizSn"]
            need = {"XFER.IN": ("BankSn", "SweepRef"), "XFER.OUT": ("BankSn",),
                    "PAY.ORDER": ("BankSn",), "OTC.SUBSCRIBE": ("BankSn",)}.get(kind, ())
            fields += [(n, ("B" if n == "BankSn" else "SW") + sn) for n in need]
        fields += list(extra.items())
        self.rig.bank.send(kind + ".RSP", fields, to=req.head("From"), ref=req.head("MsgId"))

    def _send(self, msg_type: str, fields: list[tuple[str, Any]]) -> None:
        """The broker sends; §11: a new original is refused with B340 (and reaches
        nobody) while the bank or the broker is suspended, unless the gateway has it
        already (a repeat is answered as in §6); nothing else is refused with B340."""
        self.sent.append((msg_type, fields))
        kind = msg_type[:-4]
        key = (BROKER, kind, dict(fields)["BizSn"])
        refused = (kind in NEW_BUSINESS and key not in self.journaled
                   and self.suspended.holds(BANK, BROKER))
        delivered = self.model.delivered[key]
        msg_id = self.rig.broker.send(msg_type, fields, to=BANK)
        answers = [f.body.get("Result") for f in self._collect(answer_to=msg_id)]
        if refused:
            assert answers == ["B340"], (msg_type, key, answers)
            assert self.model.delivered[key] == delivered, (key, "relayed while suspended")
        else:
            assert "B340" not in answers, (msg_type, key, answers, "refused, not suspended")
        if not answers or not str(answers[0]).startswith(NOT_JOURNALED):
            self.journaled.add(key)

    # --- the broker -----------------------------------------------------------------
    @rule(kind=st.sampled_from(ORIGINALS), fen=st.integers(1, 100000))
    def original(self, kind: str, fen: int) -> None:
        sn = self._sn(kind[0] + kind[-1])
        self.originals.append((kind, sn, fen))
        self._send(kind + ".REQ", _original_fields(kind, sn, _amount(fen)))

    @precondition(lambda self: self.originals)
    @rule(data=st.data(), kind=st.sampled_from(("PAY.REFUND", "OTC.REDEEM", "XFER.REVERSE")))
    def give_back(self, data: st.DataObject, kind: str) -> None:
        fitting = [o for o in self.originals if kind == "XFER.REVERSE"
                   or o[0] == GIVE_BACK_OF[kind]] or self.originals
        otype, osn, ofen = data.draw(st.sampled_from(fitting), label="original")
        if kind == "XFER.REVERSE":
            fen = data.draw(st.sampled_from((ofen, ofen, ofen, max(1, ofen - 1))), label="fen")
        else:
            fen = data.draw(st.integers(1, ofen + 100), label="fen")
        sn = self._sn({"PAY.REFUND": "F", "OTC.REDEEM": "R", "XFER.REVERSE": "V"}[kind])
        fields: list[tuple[str, Any]] = {
            "PAY.REFUND": [("BizSn", sn), ("OrigBizSn", osn), ("Amount", _amount(fen))],
            "OTC.REDEEM": [("BizSn", sn), ("OrigBizSn", osn), ("CorpWalletId", CORP),
                           ("Amount", _amount(fen))],
            "XFER.REVERSE": [("BizSn", sn), ("OrigType", otype), ("OrigFrom", BROKER),
                             ("OrigBizSn", osn), ("Amount", _amount(fen))],
        }[kind]
        self._send(kind + ".REQ", fields)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def repeat(self, data: st.DataObject) -> None:
        msg_type, fields = data.draw(st.sampled_from(self.sent), label="repeat")
        self._send(msg_type, fields)

    # --- the bank -------------------------------------------------------------------
    @precondition(lambda self: self.held)
    @rule(data=st.data(), ok=st.booleans())
    def bank_answers(self, data: st.DataObject, ok: bool) -> None:
        req = self.held.pop(data.draw(st.integers(0, len(self.held) - 1), label="held"))
        result = self.model.handle(req, ok)
        self.done.append((req, result))
        self._answer(req, result)
        self._collect()

    @precondition(lambda self: self.done or self.lost)
    @rule(data=st.data(), conflicting=st.booleans())
    def bank_answers_again(self, data: st.DataObject, conflicting: bool) -> None:
        """A duplicate answer, or one that contradicts the first (books unchanged).  An
        answer lost with a fenced turn (``takeover``) is only repeated: the gateway never
        had the first, so a contradiction would be the bank's word, not a conflict."""
        pool = self.done + self.lost
        i = data.draw(st.integers(0, len(pool) - 1), label="answered")
        req, result = pool[i]
        if i >= len(self.done):
            self.done.append(self.lost.pop(i - len(self.done)))
        elif conflicting:
            result = "B310" if result == "0000" else "0000"
        self._answer(req, result)
        self._collect()

    # --- time and failures ----------------------------------------------------------
    @rule()
    def time_passes(self) -> None:
        self.clock.advance(self.config.relay_timeout_seconds + 0.5)
        self.rig.tick()
        self._collect()

    @rule()
    def restart(self) -> None:
        self.rig.restart()
        self._collect()

    # --- the operator (§11) ---------------------------------------------------------
    @rule(party=st.sampled_from((BANK, BROKER, None)), reason=st.sampled_from(("", "exit")))
    def suspend(self, party: str | None, reason: str) -> None:
        """As ``POST /api/suspend`` does it (gateway/ops.py): the change joins the
        journal's transaction, acknowledged once committed."""
        self.rig.gateway.suspensions.suspend(party, reason)
        self.rig.gateway.flush()
        self.suspended.suspend(party)
        self._collect()

    @rule(party=st.sampled_from((BANK, BROKER, None)))
    def resume(self, party: str | None) -> None:
        self.rig.gateway.suspensions.resume(party)
        self.rig.gateway.flush()
        self.suspended.resume(party)
        self._collect()

    # --- invariants -----------------------------------------------------------------
    def _gateway_originals(self) -> list[givebacks.Account]:
        accounts = []
        for otype, osn, _ in self.originals:
            acct = givebacks.account(self.rig.gateway.journal, (BROKER, otype, osn))
            if acct is not None:
                accounts.append(acct)
        return accounts

    @invariant()
    def the_bank_never_gives_back_more_than_it_booked(self) -> None:
        m = self.model
        for orig in set(m.given) | m.reversed:
            booked = m.booked.get(orig, 0)
            back = m.given.get(orig, 0) + (booked if orig in m.reversed else 0)
            assert back <= booked, (orig, booked, back)

    @invariant()
    def the_gateway_never_admits_more_than_was_moved(self) -> None:
        for acct in self._gateway_originals():
            assert acct.given_fen <= acct.moved_fen
            reversals = [r for r in acct.give_backs if r.biz_type == "XFER.REVERSE"
                         and r.state == records.SUCCEEDED]
            if reversals:
                assert acct.original.state != records.SUCCEEDED, acct

    @invariant()
    def the_gateways_records_agree_with_the_banks_books(self) -> None:
        m = self.model
        for acct in self._gateway_originals():
            rec = acct.original
            key = rec.key
            booked = key in m.booked
            if booked and key not in m.reversed:
                assert rec.state in (records.SUCCEEDED, records.REVERSING), (rec, "booked")
            if rec.state == records.SUCCEEDED:
                assert booked and key not in m.reversed, (rec, "not booked, or reversed")
            if rec.state == records.FAILED:
                assert not booked, (rec, "FAILED but booked")
            for g in acct.give_backs:
                if g.biz_type in GIVE_BACK_OF and g.state == records.SUCCEEDED:
                    assert m.answers.get(g.key) == "0000", (g, "not booked by the bank")

    @invariant()
    def no_original_reaches_the_bank_twice(self) -> None:
        for (sender, kind, sn), count in self.model.delivered.items():
            if kind in ORIGINALS:
                assert count <= 1, (sender, kind, sn, count)


class PgMoneySequences(MoneySequences):
    """The same on a fresh PostgreSQL database, the gateway holding its lease (§12);
    and the take-over of a pair."""

    server = template = ""  # set by the test (tests/pg.py's pg_server, pg_template)

    def __init__(self) -> None:
        super().__init__()
        # the end-of-day commands read the journal gateway.toml's [journal] url names
        (self.rig.home.root / "gateway.toml").write_text(f'[journal]\nurl = "{self.url}"\n')

    def make_config(self) -> Any:
        self.url = new_store_database(self.server, self.template)
        return fast_config(journal_url=self.url)

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            drop_database(self.server, self.url)

    @rule(data=st.data(), stalled=st.sampled_from(("no", "bank_answers", "original")),
          ok=st.booleans())
    def takeover(self, data: st.DataObject, stalled: str, ok: bool) -> None:
        """§12: the standby takes the lease and over; the active stands by.  With
        ``stalled``, the active had read a bank's answer (booked by the bank) or a new
        original and not committed that turn yet: fenced, discarded, never answered."""
        lost: Key | None = None
        if stalled == "bank_answers" and self.held:
            req = self.held.pop(data.draw(st.integers(0, len(self.held) - 1), label="held"))
            result = self.model.handle(req, ok)
            self.lost.append((req, result))
            self.rig.bank.stalled = True
            self._answer(req, result)
        elif stalled == "original":
            kind = data.draw(st.sampled_from(ORIGINALS), label="kind")
            fen = data.draw(st.integers(1, 100000), label="fen")
            sn = self._sn(kind[0] + kind[-1])
            self.originals.append((kind, sn, fen))
            fields = _original_fields(kind, sn, _amount(fen))
            self.sent.append((kind + ".REQ", fields))
            self.rig.broker.stalled = True
            self.rig.broker.send(kind + ".REQ", fields, to=BANK)
            lost = (BROKER, kind, sn)
        self.rig.take_over()
        self._collect()
        if lost is not None:
            assert self.rig.gateway.journal.record(*lost) is None, "a fenced turn was kept"
            assert self.model.delivered[lost] == 0, "a fenced turn's relay left"


#: The SQLite journal runs the machine as issue 17 set it up.
SQLITE = settings(max_examples=200, stateful_step_count=50, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
#: PostgreSQL: fewer examples (each gets a fresh database, every turn commits over a
#: socket with fsync on) to keep CI time reasonable; the rules and invariants are the same.
POSTGRESQL = settings(SQLITE, max_examples=40)


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_money_sequences(store: str, request: pytest.FixtureRequest) -> None:
    if store == "sqlite":
        run_state_machine_as_test(MoneySequences, settings=SQLITE)
        return
    machine = type("PgRun", (PgMoneySequences,), {
        "server": request.getfixturevalue("pg_server"),
        "template": request.getfixturevalue("pg_template")})
    run_state_machine_as_test(machine, settings=POSTGRESQL)


def test_a_refused_late_answer_to_a_timed_out_reversal_leaves_the_originator_to_the_queue(
        tmp_path: Path) -> None:
    """The original is taken out of flight by a peer's reversal, which times out (B330,
    the gateway queues its own reversal); the peer reversal's late answer is a refusal.
    The original must stay with the queue: when the bank acknowledges the gateway's
    reversal, the originator gets B314 as the original's answer."""
    home = make_home(tmp_path / "gw")
    clock = Clock(time.time())
    config = fast_config()
    rig = Rig(home, config, clock, TestPeer(BANK, "BANK", home.keys[BANK], port=0),
              TestPeer(BROKER, "BROKER", home.keys[BROKER], port=0))
    try:
        rig.broker.send("CTS.SIGN.REQ", sign_fields("GTJAS0"), to=BANK,
                        encrypt=("CustName", "IdNo", "Phone"))
        sign = MoneySequences._business(rig.bank.take())[0]
        rig.bank.send("CTS.SIGN.RSP", [("Result", "0000"), ("ResultText", "ok"),
                                       ("BizSn", "GTJAS0"), ("AgreementNo", "AG1")],
                      to=BROKER, ref=sign.head("MsgId"))
        rig.broker.take()
        original_id = rig.broker.send("XFER.IN.REQ", [
            ("BizSn", "GTJAT1"), ("FundAcct", FUND), ("WalletId", WALLET),
            ("Amount", "5.00"), ("Ccy", "CNY")], to=BANK)
        rig.broker.send("XFER.REVERSE.REQ", [
            ("BizSn", "GTJAV1"), ("OrigType", "XFER.IN"), ("OrigFrom", BROKER),
            ("OrigBizSn", "GTJAT1"), ("Amount", "5.00")], to=BANK)
        _, peer_rev = MoneySequences._business(rig.bank.take())
        clock.advance(config.relay_timeout_seconds + 0.5)
        rig.tick()
        answers = {f.body["BizSn"]: f.body["Result"] for f in rig.broker.take()
                   if f.type.endswith(".RSP")}
        assert answers == {"GTJAV1": "B330"}
        ours = [f for f in MoneySequences._business(rig.bank.take())
                if f.head("From") == "GW01"][0]
        rig.bank.send("XFER.REVERSE.RSP", [("Result", "B399"), ("ResultText", "late no"),
                                           ("BizSn", "GTJAV1")], to=BROKER,
                      ref=peer_rev.head("MsgId"))
        assert not [f for f in rig.broker.take() if f.type.endswith(".RSP")]
        rig.bank.send("XFER.REVERSE.RSP", [("Result", "0000"), ("ResultText", "ok"),
                                           ("BizSn", ours.body["BizSn"])], to="GW01",
                      ref=ours.head("MsgId"))
        got = [f for f in rig.broker.take() if f.head("RefId") == original_id]
        assert [f.body["Result"] for f in got] == ["B314"]
        rec = rig.gateway.journal.record(BROKER, "XFER.IN", "GTJAT1")
        assert rec is not None and rec.state == records.REVERSED
    finally:
        rig.close()
