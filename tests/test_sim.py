"""`gateway sim bank` as a real process against a real gateway (issue 6), and the
simulators' books as units: reversal tombstones, e-CNY wallet limits."""
from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.keystore import KeyStore
from gateway.message import Head, Message
from gateway.sim.bank import AGGREGATE, DEDICATED, PERSONAL, BankBook
from gateway.sim.broker import BrokerBook
from gateway.sim.ledger import Ledger
from gateway.sim.runtime import ensure_key

from conftest import BROKER
from flows import call, sign_fields, xfer

WALLET, FUND = "0071130812093028", "100020003000"


@pytest.fixture
def sim_bank(home, start_gateway, tmp_path):  # type: ignore[no-untyped-def]
    sim_home = tmp_path / "ccb"
    pub = ensure_key(sim_home, "CCB")  # the key the sim will use, registered first
    KeyStore(home.root / "keys").add_peer("CCB", "BANK", pub.read_bytes(), replace=True)
    gw = start_gateway(relay_timeout_seconds=1.5, reversal_retry_initial_seconds=0.5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--home", str(sim_home), "sim", "bank",
         "--connect", f"127.0.0.1:{gw.port}", "--gateway-cert",
         str(home.root / "keys" / "gateway.crt"), "--withhold", "GTJASLOW1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    gw.wait_for_log(r"CCB logged on as BANK")
    gw.wait_for_log(r"session key G\w+ installed")
    yield gw, sim_home
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)


def ledger(sim_home: Path) -> sqlite3.Connection:
    return sqlite3.connect(sim_home / "data" / "CCB-ledger.sqlite3")


def balance(sim_home: Path, acct: str) -> int:
    return int(ledger(sim_home).execute("SELECT balance_fen FROM account WHERE id=?",
                                        (acct,)).fetchone()[0])


def test_sim_bank_checks_identity_funds_sweeps_and_reverses(sim_bank) -> None:  # type: ignore[no-untyped-def]
    gw, sim_home = sim_bank
    broker = gw.peer(BROKER).open_session()
    wrong: list[tuple[str, Any]] = [(k, "李四" if k == "CustName" else v)
                                    for k, v in sign_fields("GTJAS0")]
    assert call(broker, "CTS.SIGN.REQ", wrong, encrypt=("CustName", "IdNo", "Phone")).body["Result"] == "B303"
    fields = [(k, v) for k, v in sign_fields("GTJAS1") if k != "Phone"]
    signed = call(broker, "CTS.SIGN.REQ", fields, encrypt=("CustName", "IdNo"))
    assert signed.body["Result"] == "0000" and signed.body["AgreementNo"].startswith("AG")
    before = balance(sim_home, WALLET)
    rsp = call(broker, "XFER.IN.REQ", xfer("GTJAT1", amount="1000.00"))
    assert rsp.body["Result"] == "0000" and rsp.body["SweepRef"] and rsp.body["BankSn"]
    assert balance(sim_home, WALLET) == before - 100_000
    assert balance(sim_home, "DEDICATED") == 0 and balance(sim_home, "AGGREGATE") == 100_000
    assert call(broker, "XFER.IN.REQ", xfer("GTJAT2", amount="999999.00")).body["Result"] == "B310"
    assert call(broker, "XFER.IN.REQ", xfer("GTJASLOW1", amount="500.00")).body["Result"] == "B330"
    gw.wait_for_log("REVERSED")
    deadline = time.monotonic() + 5
    while balance(sim_home, WALLET) != before - 100_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert balance(sim_home, WALLET) == before - 100_000  # the silent one undone
    assert balance(sim_home, "AGGREGATE") == 100_000


# --- the books as units: no gateway, no sockets --------------------------------------

DAY = "2026-11-25"
BANK_WALLET = "0071130812093999"


class Books:
    """A bank's books on a file, with a settable business day."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.day = DAY
        self.n = 0
        self.bank = self.reopen()

    def reopen(self) -> BankBook:
        self.bank = BankBook(Ledger(self.path), "CCB", lambda: self.day,
                             lambda: f"{self.day}T10:00:00.000+08:00")
        return self.bank

    def request(self, kind: str, sender: str = "GTJA", **body: str) -> dict[str, Any]:
        self.n += 1
        head = Head(kind + ".REQ", f"{sender}{self.n:08d}", sender, "CCB",
                    f"{self.day}T10:00:00.000+08:00", trade_date=self.day)
        answer = self.bank.handle(Message(head, body, b""), {})
        assert answer is not None
        return answer

    def pay(self, sn: str, amount: Decimal | str, wallet: str = BANK_WALLET) -> str:
        return str(self.request("PAY.ORDER", BizSn=sn, OrderNo="O" + sn, WalletId=wallet,
                                Amount=f"{Decimal(amount):.2f}", Ccy="CNY",
                                ProductCode="L2DATA", ProductKind="LEVEL2",
                                ServiceEnd="2026-12-31")["Result"])

    def xfer(self, kind: str, sn: str, amount: Decimal | str, sender: str = "GTJA",
             wallet: str = BANK_WALLET) -> dict[str, Any]:
        return self.request(kind, sender, BizSn=sn, FundAcct=FUND, WalletId=wallet,
                            Amount=f"{Decimal(amount):.2f}", Ccy="CNY")

    def reverse(self, orig_type: str, orig_sn: str, amount: str, sn: str) -> dict[str, Any]:
        return self.request("XFER.REVERSE", "GW01", BizSn=sn, OrigType=orig_type,
                            OrigFrom="GTJA", OrigBizSn=orig_sn, Amount=amount)

    def balance(self, acct: str) -> int:
        got = self.bank.ledger.account(acct)
        assert got is not None
        return got.balance_fen


def fen(amount: Decimal | str) -> int:
    return int(Decimal(amount) * 100)


@pytest.fixture
def books(tmp_path: Path) -> Books:
    b = Books(tmp_path / "CCB-ledger.sqlite3")
    b.bank.seed("GTJA")
    return b


def open_wallet(books: Books, level: int, balance: Decimal | str, link: str | None = FUND,
                wallet: str = BANK_WALLET) -> None:
    books.bank.ledger.open_account(wallet, PERSONAL, fen(balance), level=level, name="测试",
                                   id_type="01", id_no="110101199001011234", link=link)


def test_an_original_after_its_reversal_is_refused_and_moves_nothing(books: Books) -> None:
    """§6: the reversal of an unseen original is success — and the bank remembers it, so
    the original arriving later (another session, reordering) cannot book money."""
    open_wallet(books, 1, "1000.00")
    rev = books.reverse("XFER.IN", "T1", "100.00", "GW01R1")
    assert rev["Result"] == "0000"
    assert books.bank.ledger.tombstone("GTJA|XFER.IN|T1") is not None
    before = (books.balance(BANK_WALLET), books.balance(AGGREGATE), books.balance(DEDICATED))
    late = books.xfer("XFER.IN", "T1", "100.00")
    assert late["Result"] == "B399" and "reversed before it arrived" in late["ResultText"]
    assert (books.balance(BANK_WALLET), books.balance(AGGREGATE),
            books.balance(DEDICATED)) == before
    moved = books.bank.ledger.db.execute("SELECT count(*) FROM posting WHERE biz_key=?",
                                         ("GTJA|XFER.IN|T1",)).fetchone()[0]
    assert moved == 0
    # durable: a restarted bank still refuses it, and a repeat gets the same answer
    books.bank.ledger.db.close()
    books.reopen()
    assert books.xfer("XFER.IN", "T1", "100.00")["Result"] == "B399"
    assert books.pay("P1", "10.00") == "0000"  # other business is not affected
    # the bank's XFER file says R for it, as the gateway's journal does (REVERSED)
    rows = {r[0]: r for r in books.bank.xfer_records(DAY, "GTJA", "GW01")}
    assert rows["T1"][5] == "R" and rows["T1"][6] == ""


@pytest.mark.parametrize("kind", ["XFER.OUT", "PAY.ORDER", "OTC.SUBSCRIBE"])
def test_every_reversible_original_is_refused_after_its_reversal(books: Books, kind: str) -> None:
    open_wallet(books, 1, "1000.00")
    assert books.reverse(kind, "X1", "5.00", "GW01R2")["Result"] == "0000"
    total = books.bank.ledger.total()
    if kind == "XFER.OUT":
        late = books.xfer("XFER.OUT", "X1", "5.00")
    elif kind == "PAY.ORDER":
        late = {"Result": books.pay("X1", "5.00")}
    else:
        late = books.request("OTC.SUBSCRIBE", BizSn="X1", OrderNo="OX1",
                             CorpWalletId="0099000011112222", WalletKind="CORPORATE",
                             ProductCode="SY001", Amount="5.00", Ccy="CNY")
    assert late["Result"] == "B399"
    assert books.bank.ledger.total() == total
    assert books.bank.ledger.db.execute("SELECT count(*) FROM posting WHERE biz_key LIKE"
                                        " '%|X1'").fetchone()[0] == 0


def test_broker_refuses_a_bank_transfer_after_its_reversal(tmp_path: Path) -> None:
    day = DAY
    broker = BrokerBook(Ledger(tmp_path / "GTJA-ledger.sqlite3"), "GTJA", lambda: day,
                        lambda: f"{day}T10:00:00.000+08:00")
    broker.seed()

    def request(kind: str, sender: str, **body: str) -> dict[str, Any]:
        head = Head(kind + ".REQ", f"{sender}{kind}", sender, "GTJA",
                    f"{day}T10:00:00.000+08:00", trade_date=day)
        answer = broker.handle(Message(head, body, b""), {})
        assert answer is not None
        return answer

    assert request("XFER.REVERSE", "GW01", BizSn="R1", OrigType="XFER.IN", OrigFrom="CCB",
                   OrigBizSn="K1", Amount="50.00")["Result"] == "0000"
    late = request("XFER.IN", "CCB", BizSn="K1", FundAcct=FUND, WalletId=WALLET,
                   Amount="50.00", Ccy="CNY")
    assert late["Result"] == "B399" and "reversed before it arrived" in late["ResultText"]
    assert broker.balance(FUND) == 0


#: (class, balance cap, per payment, per day) as docs/simulators.md states them.
LIMITS = [(2, "500000.00", "50000.00", "100000.00"),
          (3, "20000.00", "5000.00", "10000.00"),
          (4, "10000.00", "2000.00", "5000.00")]
CENT = Decimal("0.01")


@pytest.mark.parametrize(("level", "cap", "per_payment", "per_day"), LIMITS)
def test_wallet_per_payment_limit_exact_passes_a_cent_more_fails(
        books: Books, level: int, cap: str, per_payment: str, per_day: str) -> None:
    open_wallet(books, level, cap)
    assert books.pay("P1", Decimal(per_payment) + CENT) == "B302"
    assert books.balance(BANK_WALLET) == fen(cap)
    assert books.pay("P2", per_payment) == "0000"
    assert books.balance(BANK_WALLET) == fen(cap) - fen(per_payment)


@pytest.mark.parametrize(("level", "cap", "per_payment", "per_day"), LIMITS)
def test_wallet_daily_limit_exact_passes_a_cent_more_fails_and_resets_next_day(
        books: Books, level: int, cap: str, per_payment: str, per_day: str) -> None:
    open_wallet(books, level, cap)
    left, n = Decimal(per_day), 0
    while left > 0:
        n += 1
        amount = min(Decimal(per_payment), left)
        assert books.pay(f"D{n}", amount) == "0000", (n, amount)
        left -= amount
    assert books.pay("OVER", CENT) == "B302"
    books.day = "2026-11-26"
    assert books.pay("NEXT", CENT) == "0000"


@pytest.mark.parametrize(("level", "cap", "per_payment", "per_day"), LIMITS)
def test_wallet_balance_cap_exact_passes_a_cent_more_fails_and_nothing_sticks(
        books: Books, level: int, cap: str, per_payment: str, per_day: str) -> None:
    open_wallet(books, level, Decimal(cap) - 100)
    books.bank.ledger.open_account("SOURCE", "TEST", fen("1000.00"))
    books.bank.ledger.post("funding", "SOURCE", AGGREGATE, fen("1000.00"), DAY)
    over = books.xfer("XFER.OUT", "X1", Decimal(100) + CENT)
    assert over["Result"] == "B302", over
    # refused after the aggregate → dedicated leg: that leg is rolled back too
    assert books.balance(AGGREGATE) == fen("1000.00") and books.balance(DEDICATED) == 0
    assert books.xfer("XFER.OUT", "X2", "100.00")["Result"] == "0000"
    assert books.balance(BANK_WALLET) == fen(cap) and books.balance(DEDICATED) == 0


def test_class_1_wallet_has_no_limits(books: Books) -> None:
    open_wallet(books, 1, "2000000.00")
    assert books.pay("P1", "600000.00") == "0000"
    assert books.pay("P2", "600000.00") == "0000"


def test_a_reversal_gives_back_the_daily_limit_it_consumed(books: Books) -> None:
    open_wallet(books, 4, "10000.00")
    assert books.pay("P1", "2000.00") == "0000"
    assert books.pay("P2", "2000.00") == "0000"
    assert books.pay("P3", "2000.00") == "B302"  # 6,000 > 5,000 a day
    assert books.reverse("PAY.ORDER", "P2", "2000.00", "GW01R9")["Result"] == "0000"
    assert books.balance(BANK_WALLET) == fen("8000.00")
    assert books.pay("P4", "2000.00") == "0000"  # 4,000 used again, not 6,000
    assert books.pay("P5", "1000.01") == "B302"  # 5,000.01
    assert books.pay("P6", "1000.00") == "0000"  # exactly 5,000


def test_a_bank_transfer_the_broker_refused_gives_back_limit_and_money(books: Books) -> None:
    open_wallet(books, 4, "10000.00")
    assert books.bank.hold("K1", BANK_WALLET, fen("2000.00")) is None
    books.bank.settle("K1", FUND, BANK_WALLET, fen("2000.00"), "B300")
    assert books.balance(BANK_WALLET) == fen("10000.00") and books.balance(DEDICATED) == 0
    for sn in ("P1", "P2"):
        assert books.pay(sn, "2000.00") == "0000"
    assert books.pay("P3", "1000.00") == "0000"  # the refused 2,000 no longer counts


def test_a_broker_script_parses_every_step_and_names_the_bad_line() -> None:
    from gateway.sim.script import ScriptError, parse_script

    steps = parse_script("# a day\n\nsign fund=100020003000 expect=0000\n"
                         "xfer-in fund=100020003000 amount=10.00 sn=GTJAA1  # note\n"
                         "wait 1.5\nwait sn=GTJAA1 state=REVERSED type=XFER.IN\n"
                         "refund amount=1.00\notc-redeem amount=2.00 orig=O1\n")
    assert [(s.line, s.verb) for s in steps] == [(3, "sign"), (4, "xfer-in"), (5, "wait"),
                                                 (6, "wait"), (7, "refund"), (8, "otc-redeem")]
    assert steps[0].expect == "0000" and steps[1].args["sn"] == "GTJAA1"
    assert steps[2].args == {"seconds": "1.5"}
    for text, message in [("fly fund=1", "unknown step 'fly'"),
                          ("xfer-in fund=1", "missing amount"),
                          ("xfer-in fund=1 amount=1.5", "is not an amount"),
                          ("xfer-in fund=1 amount=1.50 colour=red", "unknown key(s) colour"),
                          ("pay amount=1.00", "needs fund= or wallet="),
                          ("sign fund", "is not key=value"),
                          ("wait", "needs seconds"), ("wait soon", "is not a number"),
                          ("sign fund=1 sn=A1", "does not begin with the broker's PartyId"),
                          ("sign fund=1 sn=GTJA-1", "is not 1-32 letters and digits"),
                          ("sign fund=1 sn=GTJA" + "9" * 29, "is not 1-32 letters")]:
        with pytest.raises(ScriptError, match=r"script line 2: .*" + re.escape(message)):
            parse_script("# first\n" + text, "GTJA")


def test_a_script_sn_must_begin_with_the_party_unless_e111_is_expected() -> None:
    """§4: the gateway answers E111 to a BizSn that does not begin with its sender's
    PartyId; a script is refused before anything is sent, unless that is the point."""
    from gateway.sim.script import parse_script

    steps = parse_script("xfer-in fund=1 amount=1.00 sn=GTJA" + "9" * 28 + "\n"
                         "xfer-in fund=1 amount=1.00 sn=X1 expect=E111\n"
                         "wait sn=CCBK1 state=REVERSED\n", "GTJA")
    assert [s.args["sn"] for s in steps] == ["GTJA" + "9" * 28, "X1", "CCBK1"]


def test_generated_bizsns_begin_with_the_party_and_fit_32_characters() -> None:
    from gateway.sim.drive import serial

    assert serial("GTJA", "V20261202093000", 1) == "GTJAV202612020930000001"
    assert serial("ABCDEFGHIJKL", "V20261202093000", 99_999) == \
        "ABCDEFGHIJKLV2026120209300099999"  # the longest PartyId still fits
    with pytest.raises(ValueError, match="1-32"):
        serial("ABCDEFGHIJKL", "V20261202093000", 100_000)


# --- one file, one commit: the sim's books share its journal's transaction ------------

def _count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as other:  # another connection: sees only what is committed
        return int(other.execute(sql).fetchone()[0])


def test_sim_books_and_journal_commit_together_in_one_file(tmp_path: Path) -> None:
    from gateway.sim.runtime import books_file, open_books

    journal, books = open_books(tmp_path, "CCB")
    path = books_file(tmp_path, "CCB")
    assert journal.path == path
    assert not (tmp_path / "data" / "CCB-journal.sqlite3").exists()
    books.open_account("A", "X", 500)
    books.open_account("B", "X", 0)
    journal.flush()

    books.begin()  # one booking (a savepoint in the journal's transaction) ...
    books.post("k1", "A", "B", 120, "2026-11-25")
    books.commit()
    books.flush()  # ... that the books alone no longer commit
    journal.log_message(1.0, "OUT", "S1", "GW01", "XFER.OUT.RSP", "M1", "R1", b"env", b"<x/>")
    assert _count(path, "SELECT COUNT(*) FROM posting") == 0
    assert _count(path, "SELECT COUNT(*) FROM message") == 0
    journal.flush()  # one COMMIT: the booking and the evidence of its answer, together
    assert _count(path, "SELECT COUNT(*) FROM posting") == 1
    assert _count(path, "SELECT COUNT(*) FROM message") == 1
    assert _count(path, "SELECT balance_fen FROM account WHERE id='B'") == 120

    # a booking rolled back leaves the journal's writes made before it alone
    journal.log_message(2.0, "IN", "S1", "GW01", "XFER.OUT.REQ", "M2", None, b"env", b"<y/>")
    books.begin()
    books.post("k2", "A", "B", 1, "2026-11-25")
    books.rollback()
    journal.flush()
    assert _count(path, "SELECT COUNT(*) FROM posting") == 1
    assert _count(path, "SELECT COUNT(*) FROM message") == 2
    journal.close()


def test_a_sim_home_with_a_separate_journal_file_keeps_it(tmp_path: Path) -> None:
    from gateway.journal import Journal
    from gateway.sim.runtime import books_file, open_books

    Journal(tmp_path / "data" / "CCB-journal.sqlite3").close()  # a home made before
    journal, books = open_books(tmp_path, "CCB")
    assert journal.path == tmp_path / "data" / "CCB-journal.sqlite3"
    books.open_account("A", "X", 5)
    books.begin()
    books.commit()
    books.flush()  # its own file, its own commit
    assert _count(books_file(tmp_path, "CCB"), "SELECT COUNT(*) FROM account") == 1
    # closing stops the books' own checkpoint thread and commits what is booked
    checkpointer = books._checkpointer
    assert checkpointer is not None and checkpointer._thread.is_alive()
    books.begin()
    books.open_account("B", "X", 7)
    books.commit()
    books.close()
    assert not checkpointer._thread.is_alive()
    assert _count(books_file(tmp_path, "CCB"), "SELECT COUNT(*) FROM account") == 2
    journal.close()


def test_books_are_not_opened_on_a_journal_with_a_transaction_open(tmp_path: Path) -> None:
    from gateway.journal import Journal

    journal = Journal(tmp_path / "j.sqlite3")
    journal.begin()  # the schema script would COMMIT this behind the journal's back
    with pytest.raises(RuntimeError, match="before the journal's first write"):
        Ledger(journal)
    journal.close()


# --- recovery of requests without an outcome (issue 17 case 8) -------------------------

@pytest.mark.parametrize("result, attempts, verdict", [
    ("0000", 1, "SETTLE"), ("B310", 1, "SETTLE"), ("B399", 3, "SETTLE"),
    ("B330", 1, "AWAIT_REVERSAL"),  # final only when the reversal is: XFER.QUERY
    ("B331", 1, "REPEAT"), ("S901", 1, "REPEAT"), ("S902", 2, "REPEAT"), ("S903", 1, "REPEAT"),
    ("LOST", 1, "REPEAT"),  # the session closed before the answer came
    ("S900", 1, "QUERY"),
    ("E111", 1, "SETTLE"), ("E207", 2, "REPEAT"),  # a repeat's E-code says nothing of the 1st
    ("B312", 1, "SETTLE"), ("B312", 2, "QUERY"),
])
def test_what_an_answer_means_for_a_request(result: str, attempts: int, verdict: str) -> None:
    from gateway.sim.outbox import judge

    assert judge(result, attempts) == verdict


@pytest.mark.parametrize("state, reversing, reversible, then", [
    ("SUCCEEDED", False, True, "SUCCEEDED"), ("FAILED", False, True, "FAILED"),
    ("REVERSED", True, True, "REVERSED"), ("FAILED", True, True, "FAILED"),
    ("SUCCEEDED", True, True, None),  # §6: given back by a reversal, never SUCCEEDED
    ("B313", True, True, None), ("REVERSING", True, True, None), ("PENDING", False, True, None),
    ("B313", False, True, "REPEAT"),  # the gateway never recorded it: send it (again)
    ("PENDING", False, False, "REPEAT"),  # unanswered, not reversible: a repeat asks again
])
def test_what_xfer_query_says_about_a_request(state: str, reversing: bool, reversible: bool,
                                              then: str | None) -> None:
    from gateway.sim.outbox import read_state

    assert read_state(state, reversing, reversible) == then


def test_the_outbox_is_durable_in_the_party_s_own_file(tmp_path: Path) -> None:
    from gateway.sim.outbox import REVERSING, Entry, Outbox

    path = tmp_path / "GTJA-ledger.sqlite3"
    outbox = Outbox(Ledger(path))
    body = {"BizSn": "GTJAV1", "FundAcct": FUND, "WalletId": WALLET, "Amount": "1.00",
            "Ccy": "CNY", "Phone": None}
    outbox.add(Entry("GTJA|XFER.OUT|GTJAV1", "XFER.OUT.REQ", "CCB", body, None, at="t"))
    outbox.add(Entry("GTJA|CTS.SIGN|GTJAS1", "CTS.SIGN.REQ", "CCB", {"BizSn": "GTJAS1"},
                     {"IdNo": "110101199003071234"}, at="t"))
    entry = outbox.get("GTJA|XFER.OUT|GTJAV1")
    assert entry is not None
    entry.state, entry.attempts, entry.last = REVERSING, 2, "B330"
    outbox.save(entry)
    outbox.remove("GTJA|CTS.SIGN|GTJAS1")
    outbox.ledger.close()
    again = Outbox(Ledger(path))  # a restarted sim
    assert list(again.entries) == ["GTJA|XFER.OUT|GTJAV1"]
    got = again.entries["GTJA|XFER.OUT|GTJAV1"]
    assert (got.body, got.state, got.attempts, got.last) == (body, REVERSING, 2, "B330")
    assert got.business == "XFER.OUT" and got.biz_sn == "GTJAV1" and got.reversible


def test_requests_unanswered_when_their_session_closes_are_lost_with_it(tmp_path: Path) -> None:
    """The peer node tells whoever waits for an answer that its session closed: before,
    the waiter stayed for ever (the broker hung, issue 17 case 8)."""
    from cryptography.hazmat.primitives import serialization

    from gateway.config import Config
    from gateway.journal import Journal
    from gateway.keystore import generate_key_file
    from gateway.session import Sent
    from gateway.sim.node import PeerNode
    from gateway.sim.runtime import gateway_peer

    class FakeSession:
        ready = True

        def __init__(self) -> None:
            self.n = 0

        def send(self, msg_type: str, body: Any, **_: Any) -> Sent:
            self.n += 1
            return Sent(f"GTJA{id(self)}{self.n}", b"")

    pem = generate_key_file(tmp_path / "gw.key").public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    node = PeerNode(Config(party="GTJA"), Journal(tmp_path / "j.sqlite3"),
                    generate_key_file(tmp_path / "gtja.key"), lambda: 0.0,
                    gateway_peer(pem, "GW01"), "BROKER", None)  # type: ignore[arg-type]
    first, second = FakeSession(), FakeSession()
    node._ready.extend([first, second])  # type: ignore[list-item]
    told: list[str] = []
    for n in range(4):  # round-robin: two on each session
        node.request("XFER.IN.REQ", {"BizSn": f"GTJAV{n}"}, "CCB", lambda m: told.append("answer"),
                     on_lost=lambda n=n: told.append(f"lost {n}"))  # type: ignore[misc]
    node.session_closed(first)  # type: ignore[arg-type]
    assert sorted(told) == ["lost 0", "lost 2"] and node.outstanding == 2
    node.session_closed(second)  # type: ignore[arg-type]
    assert sorted(told) == ["lost 0", "lost 1", "lost 2", "lost 3"] and node.outstanding == 0
