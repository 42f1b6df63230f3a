"""Issue 20, the business exit (PROTOCOL §11), across real processes on loopback:
`gateway serve`, `gateway sim bank` and `gateway sim broker` runs.

A business day (signs, transfers in and out, a timed-out transfer reversed, paid
services, an OTC subscription and a partial redemption); the broker's BAL file checked
by `eod watch`; the bank suspended mid-day (new business B340; XFER.OUT, PAY.REFUND,
OTC.REDEEM and CTS.UNSIGN still 0000); `gateway exit-report` saying what blocks whom;
the broker's `--exit` returning funds and unsigning what the report lets it; what is
left settled; the exit run again; and at the end: every agreement ended, every wallet
and the aggregate account back where they were (ledgers vs journal), every end-of-day
file valid and reconciled; and the journal frozen by `gateway archive`, verified, whose
own exit report says nothing is left.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_ops import write_toml
from test_sim_processes import (
    CORP,
    RIG_SETTINGS,
    Rig,
    eod_check,
    net_by_key,
    run_broker,
    start_rig,
)

from conftest import BANK, BROKER

#: The personal wallets the bank seeds (gateway/sim/bank.py) and their opening fen.
SEEDED = {"0071130812093028": 20_000_000, "0071130812093036": 5_000_000,
          "0071130812093044": 300_000, CORP: 2_000_000_000}

DAY = f"""\
sign fund=100020003000 expect=0000
sign fund=100020003018 expect=0000
xfer-in  fund=100020003000 amount=50000.00 expect=0000
xfer-out fund=100020003000 amount=20000.00 expect=0000
xfer-in  fund=100020003018 amount=300.00 sn=GTJASLOW1 expect=B330
wait sn=GTJASLOW1 state=REVERSED seconds=20
xfer-in  fund=100020003018 amount=700.00 expect=0000
pay fund=100020003000 amount=199.00 product=L2QUOTE expect=0000
refund amount=199.00 expect=0000
pay fund=100020003018 amount=88.00 product=ADVICE kind=ADVISORY days=30 sn=GTJAADV1 expect=0000
otc-subscribe wallet={CORP} amount=1000000.00 product=SY2026A01 sn=GTJASUB1 expect=0000
otc-redeem amount=400000.00 expect=0000
"""

#: New business with the suspended bank: B340 before any other rule (the class-II
#: wallet's sign would be B302 otherwise).
NEW_BUSINESS = f"""\
sign fund=100020003026 expect=B340
xfer-in fund=100020003000 amount=1.00 sn=GTJANEW1 expect=B340
pay fund=100020003000 amount=1.00 expect=B340
otc-subscribe wallet={CORP} amount=1.00 expect=B340
"""

#: What the suspended bank still takes: the refund and the redemption that clear the
#: exit report's last blockers.
SETTLE_REST = f"""\
refund orig=GTJAADV1 amount=88.00 expect=0000
otc-redeem orig=GTJASUB1 wallet={CORP} amount=600000.00 expect=0000
"""


@pytest.fixture
def rig(home, start_gateway, tmp_path: Path) -> Iterator[Rig]:  # type: ignore[no-untyped-def]
    """test_sim_processes' rig, the gateway's ops API on a port gateway.toml names (for
    `gateway suspend`) and `[ops] eod_dirs` the drop folder (for `gateway exit-report`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    write_toml(home, gateway=RIG_SETTINGS,
               ops={"listen": f"127.0.0.1:{port}", "eod_dirs": [str(tmp_path / "drop")]})
    real = start_gateway

    def start(**_: Any) -> Any:  # the settings are in gateway.toml already
        return real(ops_listen=None)

    rig = start_rig(home, start, tmp_path, "--withhold", "GTJASLOW1")
    yield rig
    if rig.bank.poll() is None:
        rig.bank.kill()
        rig.bank.wait(10)


def gateway(rig: Rig, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "gateway", "--home", str(rig.gw_home), *args],
                         capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def exit_report(rig: Rig) -> tuple[int, dict[str, Any], Path]:
    """`gateway exit-report --json` (balances from [ops] eod_dirs' accepted BAL files),
    kept in a file for the broker's --exit-report."""
    out = gateway(rig, "exit-report", "--json")
    assert out.returncode in (0, 3), out.stderr
    path = rig.eod.parent / f"exit-report-{time.monotonic_ns()}.json"
    path.write_text(out.stdout, encoding="utf-8")
    return out.returncode, json.loads(out.stdout), path


def script(rig: Rig, name: str, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = rig.eod.parent / name
    path.write_text(text, encoding="utf-8")
    return run_broker(rig, "--script", str(path), *args)


def by_fund(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The report's agreements by the last 4 digits of their fund account."""
    return {a["fund_acct"][-4:]: a for a in report["agreements"]}


def accept_bal(rig: Rig, drop: Path) -> None:
    """The broker's latest BAL file dropped into ``drop`` and checked by `eod watch`."""
    drop.mkdir(exist_ok=True)
    bal = next(rig.eod.glob("BAL_*.txt"))
    for name in (bal.name, bal.name + ".sig"):
        (drop / name).write_bytes((rig.eod / name).read_bytes())
    out = gateway(rig, "eod", "watch", str(drop), "--once")
    assert out.returncode == 0 and "accepted" in out.stdout, out.stdout + out.stderr


def journal_net_of_wallets(rig: Rig) -> dict[str, int]:
    """What the gateway's journal says each wallet paid out (−) and got back (+), from the
    records that ended SUCCEEDED (reversed ones moved nothing)."""
    journal = sqlite3.connect(rig.gw_home / "data" / "journal.sqlite3")
    sign = {"XFER.IN": -1, "XFER.OUT": 1, "PAY.ORDER": -1, "PAY.REFUND": 1,
            "OTC.SUBSCRIBE": -1, "OTC.REDEEM": 1}
    net: dict[str, int] = {}
    for kind, wallet, fen in journal.execute(
            "SELECT biz_type, wallet_id, amount_fen FROM record WHERE state='SUCCEEDED'"
            " AND biz_type IN ('XFER.IN','XFER.OUT','PAY.ORDER','PAY.REFUND','OTC.SUBSCRIBE',"
            "'OTC.REDEEM')"):
        net[wallet] = net.get(wallet, 0) + sign[kind] * fen
    return net


def reconcile(rig: Rig) -> None:
    """The simulators' ledgers agree with the gateway's journal, record by record, and
    every wallet is back at its opening balance, the bank's pools and the broker's
    accounts at 0.00."""
    journal = sqlite3.connect(rig.gw_home / "data" / "journal.sqlite3")
    bank = sqlite3.connect(rig.bank_home / "data" / f"{BANK}-ledger.sqlite3")
    broker = sqlite3.connect(rig.broker_home / "data" / f"{BROKER}-ledger.sqlite3")
    records = journal.execute("SELECT biz_type, biz_sn, state FROM record WHERE origin=? AND"
                              " receiver=? ORDER BY biz_type, biz_sn", (BROKER, BANK)).fetchall()
    assert records and {s for _, _, s in records} <= {"SUCCEEDED", "FAILED", "REVERSED"}
    booked = {(t, sn): (res, rev) for t, sn, res, rev in bank.execute(
        "SELECT biz_type, biz_sn, result, reversed FROM op WHERE origin=?", (BROKER,))}
    assert set(booked) == {(t, sn) for t, sn, _ in records}  # B340 reached neither
    for kind, sn, state in records:
        result, reversed_ = booked[(kind, sn)]
        assert (state == "SUCCEEDED") == (result == "0000" and not reversed_), (kind, sn)
        assert (state == "REVERSED") == bool(reversed_), (kind, sn)
        if kind.startswith("XFER.") and state != "SUCCEEDED":
            assert net_by_key(bank, f"{BROKER}|{kind}|{sn}") == {}, (kind, sn)
    # the broker's transfers: booked alike; the B340 one refused before the journal (§11)
    states = {sn: state for kind, sn, state in records if kind.startswith("XFER.")}
    mine = dict(broker.execute("SELECT biz_sn, result FROM op WHERE origin=? AND biz_type"
                               " LIKE 'XFER.%'", (BROKER,)).fetchall())
    assert {sn: r for sn, r in mine.items() if r == "B340"} == {"GTJANEW1": "B340"}
    assert set(mine) - {"GTJANEW1"} == set(states)
    for sn, state in states.items():
        assert (mine[sn] == "0000") == (state == "SUCCEEDED"), (sn, state, mine[sn])
    # every wallet: the ledger is the opening balance plus the journal's net, which is 0
    balances = dict(bank.execute("SELECT id, balance_fen FROM account"))
    net = journal_net_of_wallets(rig)
    for wallet, seeded in SEEDED.items():
        assert balances[wallet] == seeded + net.get(wallet, 0) == seeded, wallet
    assert {pool: balances[pool] for pool in ("AGGREGATE", "DEDICATED", "MERCHANT", "PRODUCT")
            } == dict.fromkeys(("AGGREGATE", "DEDICATED", "MERCHANT", "PRODUCT"), 0)
    assert broker.execute("SELECT id, balance_fen FROM account WHERE balance_fen != 0"
                          ).fetchall() == []
    assert broker.execute("SELECT count(*) FROM outbox").fetchone() == (0,)


def check_all_files(rig: Rig) -> list[str]:
    """Every §8 file of the day — the simulators' and the gateway's own exports — is
    valid and reconciles with the journal without a discrepancy."""
    day = next(rig.eod.glob("BAL_*.txt")).name.rsplit("_", 1)[1][:8]
    date = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    for kind in ("XFER", "SIGN", "PAY", "OTC"):
        out = gateway(rig, "eod", "export", "--date", date, "--type", kind, "--to", BANK,
                      "--out", str(rig.eod))
        assert out.returncode == 0, out.stdout + out.stderr
    names = sorted(p.name for p in rig.eod.glob("*.txt"))
    assert len(names) == 9, names  # BAL, the bank's 4, the gateway's 4
    for name in names:
        code, checked = eod_check(rig, rig.eod / name)
        assert code == 0 and checked["valid"] is True, checked
        assert checked["missing_in_file"] == checked["extra_in_file"] == []
        assert checked["mismatched"] == []
    return names


def test_a_business_day_ends_with_a_complete_clean_exit(rig: Rig) -> None:
    drop = rig.eod.parent / "drop"
    out = script(rig, "day.txt", DAY)
    assert out.returncode == 0 and "all as expected" in out.stdout, out.stdout + out.stderr
    accept_bal(rig, drop)

    # --- mid-day, the bank is suspended: new business B340 --------------------------------
    out = gateway(rig, "suspend", "--party", BANK, "--reason", "CCB leaves the platform")
    assert out.returncode == 0, out.stdout + out.stderr
    out = script(rig, "new.txt", NEW_BUSINESS)
    assert out.returncode == 0 and "all as expected" in out.stdout, out.stdout + out.stderr

    # --- the exit report: who is blocked by what -----------------------------------------
    code, report, report_path = exit_report(rig)
    assert code == 3 and report["version"] == 1 and report["exit_code"] == 3
    [bal] = report["bal_files"]
    assert bal["file"] == str(drop / "accepted" /
                              f"BAL_GTJA_CCB_{report['today'].replace('-', '')}.txt")
    agreements = by_fund(report)
    assert set(agreements) == {"3000", "3018"} and report["ready"] == []
    first, second = agreements["3000"], agreements["3018"]
    assert first["balance"] == {"amount": "30000.00", "source": "bal",
                                "bal_file": Path(bal["file"]).name,
                                "bal_amount": "30000.00", "since_amount": "0.00"}
    assert [b["kind"] for b in first["blockers"]] == ["funds"]
    assert [b["kind"] for b in second["blockers"]] == ["service", "funds"]
    assert second["blockers"][0]["biz_sn"] == "GTJAADV1"
    assert second["balance"]["amount"] == "700.00"  # the 300.00 was reversed
    [corp] = report["subscriptions"]
    assert corp["left"] == "600000.00" and corp["subscriptions"][0]["biz_sn"] == "GTJASUB1"
    text = gateway(rig, "exit-report", "--party", BANK)
    assert text.returncode == 3 and "BLOCKED" in text.stdout and "GTJAADV1" in text.stdout
    assert "100020003000" not in text.stdout + report_path.read_text()  # masked
    typo = gateway(rig, "exit-report", "--party", "CBB")  # never "nothing blocks"
    assert typo.returncode == 1 and "no party CBB" in typo.stderr and typo.stdout == ""

    # --- the broker's exit: what the report lets it do -----------------------------------
    out = run_broker(rig, "--exit", "--exit-report", str(report_path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"exit: {first['agreement_no']}: fund ********3000: unsigned" in out.stdout
    assert (f"NOT UNSIGNED {second['agreement_no']}: the exit report says: PAY.ORDER "
            "GTJAADV1") in out.stdout
    assert "exit: 1 agreement(s) unsigned, 30000.00 returned to wallets, 1 not" in out.stdout

    # --- what is left is settled, the exit is run again -----------------------------------
    out = script(rig, "rest.txt", SETTLE_REST)
    assert out.returncode == 0 and "all as expected" in out.stdout, out.stdout + out.stderr
    code, report, report_path = exit_report(rig)
    assert code == 3 and report["subscriptions"] == []
    [left] = report["agreements"]
    assert [b["kind"] for b in left["blockers"]] == ["funds"]
    out = run_broker(rig, "--exit", "--exit-report", str(report_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "exit: 1 agreement(s) unsigned, 700.00 returned to wallets, 0 not" in out.stdout
    code, report, _ = exit_report(rig)
    assert code == 0 and report["agreements"] == [] and report["subscriptions"] == []
    assert report["ready"] == [] and report["summary"]["agreements"] == 0

    # --- every agreement ended; wallets, the aggregate account and the files agree --------
    journal = sqlite3.connect(rig.gw_home / "data" / "journal.sqlite3")
    assert journal.execute("SELECT status, count(*) FROM agreement GROUP BY status"
                           ).fetchall() == [("ENDED", 2)]
    bank_out = rig.stop_bank()  # writes its end-of-day files
    assert "eod: wrote" in bank_out
    reconcile(rig)
    check_all_files(rig)
    bal_lines = next(rig.eod.glob("BAL_*.txt")).read_text().splitlines()
    assert bal_lines[-1].split("|")[1:3] == ["3", "0.00"]  # every client at 0.00
    sign = next(rig.eod.glob("SIGN_CCB_GTJA_*.txt")).read_text().splitlines()
    actions = sorted(line.split("|")[2] for line in sign if line.startswith("D|"))
    assert actions == ["SIGN", "SIGN", "UNSIGN", "UNSIGN"]

    # --- the technical exit: the journal frozen while the gateway still serves ------------
    frozen = rig.eod.parent / "archive"
    out = gateway(rig, "archive", "--out", str(frozen))
    assert out.returncode == 0, out.stdout + out.stderr
    out = gateway(rig, "archive", "verify", str(frozen))
    assert out.returncode == 0 and "intact" in out.stdout, out.stdout + out.stderr
    copy = sqlite3.connect(f"file:{frozen / 'data' / 'journal.sqlite3'}?mode=ro", uri=True)
    assert copy.execute("SELECT status, count(*) FROM agreement GROUP BY status"
                        ).fetchall() == [("ENDED", 2)]
    copy.close()
    out = subprocess.run([sys.executable, "-m", "gateway", "--home", str(frozen), "exit-report",
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout)["agreements"] == [], out.stderr
    out = gateway(rig, "archive", "verify", str(frozen))  # reading it changed nothing
    assert out.returncode == 0 and "intact" in out.stdout, out.stdout + out.stderr


def test_without_a_report_the_broker_exit_tries_every_agreement_and_the_gateway_decides(
        rig: Rig) -> None:
    """`--exit` alone: funds returned and the unsign sent for every ACTIVE agreement; the
    one with a paid service still valid is refused by the gateway (B304, its reason),
    which fails the run, and stays signed with its funds back in the wallet."""
    out = script(rig, "day.txt", """\
sign fund=100020003000 expect=0000
sign fund=100020003018 expect=0000
xfer-in fund=100020003000 amount=500.00 expect=0000
xfer-in fund=100020003018 amount=70.00 expect=0000
pay fund=100020003018 amount=8.00 product=ADVICE kind=ADVISORY days=30 sn=GTJAADV2 expect=0000
""")
    assert out.returncode == 0 and "all as expected" in out.stdout, out.stdout + out.stderr
    out = run_broker(rig, "--exit")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "fund ********3000: 500.00 returned to the wallet (XFER.OUT 0000)" in out.stdout
    assert "fund ********3000: unsigned (CTS.UNSIGN 0000)" in out.stdout
    assert "fund ********3018: 70.00 returned to the wallet" in out.stdout
    assert "NOT unsigned: CTS.UNSIGN got B304 wallet 0071130812093036 has a paid service" \
        in out.stdout
    assert "exit: 1 agreement(s) unsigned, 570.00 returned to wallets, 1 not" in out.stdout
    code, report, _ = exit_report(rig)
    assert code == 3 and [b["kind"] for b in report["agreements"][0]["blockers"]] == ["service"]
    assert report["agreements"][0]["balance"] == {
        "amount": "0.00", "source": "journal", "bal_file": None, "bal_amount": None,
        "since_amount": "0.00"}  # no BAL file checked: the journal's net transfers


def test_the_demo_ends_with_the_business_exit(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "gateway", "demo", "--keep", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    for line in ("ok  CCB suspended: new business refused            B340",
                 "ok  exit report: 张三 blocked by funds only, ¥600,000.00 not redeemed",
                 "ok  broker's exit: funds back in the wallet, every agreement unsigned: "
                 "¥30000.00 returned",
                 "ok  exit report: nothing blocks any more",
                 "ok  aggregate account = sum of client funds at the broker: 0.00 = 0.00"):
        assert line in out.stdout, out.stdout
    journal = sqlite3.connect(tmp_path / "gateway" / "data" / "journal.sqlite3")
    assert journal.execute("SELECT status, count(*) FROM agreement WHERE agreement_no IS NOT"
                           " NULL GROUP BY status").fetchall() == [("ENDED", 2)]
    code = subprocess.run([sys.executable, "-m", "gateway", "--home", str(tmp_path / "gateway"),
                           "exit-report"], capture_output=True, text=True, timeout=60)
    assert code.returncode == 0 and "nothing blocks" in code.stdout, code.stdout + code.stderr


@pytest.mark.parametrize("args, says", [
    (["--exit-report", "r.json"], "--exit-report goes with --exit"),
    (["--exit", "--rate", "5"], "--exit and --rate do not go together"),
    (["--exit", "--exit-report", "absent.json"], "make it with `gateway exit-report --json"),
    (["--exit", "--exit-report", "bad.json"], "not the JSON of `gateway exit-report --json`"),
])
def test_the_broker_exit_options_are_checked_before_anything_is_sent(
        tmp_path: Path, args: list[str], says: str) -> None:
    gw_home = tmp_path / "gw"
    assert subprocess.run([sys.executable, "-m", "gateway", "--home", str(gw_home), "init"],
                          capture_output=True, timeout=60).returncode == 0
    (tmp_path / "bad.json").write_text('{"ready": []}')
    out = subprocess.run([sys.executable, "-m", "gateway", "--home", str(tmp_path / "gtja"),
                          "sim", "broker", "--connect", "127.0.0.1:9", "--gateway-cert",
                          str(gw_home / "keys" / "gateway.crt"),
                          *[str(tmp_path / a) if a.endswith(".json") else a for a in args]],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 64 and says in out.stderr, out.stderr


# --- the report's logic over a journal made by hand (no gateway) --------------------------
from gateway import exitreport  # noqa: E402
from gateway.bookdate import CHINA  # noqa: E402
from gateway.journal import Agreement, Journal, Record, Reversal  # noqa: E402

TODAY = "2026-12-02"
WALLET, FUND, OTHER_WALLET, OTHER_FUND = "0071130812093028", "100020003000", "0071", "1000"


class Book:
    """A journal written the way the relay writes it, one record at a time."""

    def __init__(self, path: Path | str) -> None:
        self.journal = Journal(path)
        self.at = 1_000.0
        self.sn = 0

    def agreement(self, number: str | None = "AG1", fund: str = FUND, wallet: str = WALLET,
                  status: str = "ACTIVE", broker: str = BROKER, bank: str = BANK) -> None:
        self.sn += 1
        self.journal.insert_agreement(Agreement(
            number, broker, bank, fund, wallet, "1", "PERSONAL", status, TODAY, None,
            "sealed", "01", "sealed", None, f"{broker}S{self.sn}"))

    def record(self, biz_type: str, state: str = "SUCCEEDED", fen: int | None = 10_000,
               origin: str = BROKER, receiver: str = BANK, **fields: Any) -> Record:
        self.sn += 1
        self.at += 10
        fields.setdefault("biz_sn", f"{origin}X{self.sn}")
        if biz_type.startswith("XFER.") and biz_type != "XFER.REVERSE":
            fields.setdefault("fund_acct", FUND)
            fields.setdefault("wallet_id", WALLET)
        fields.setdefault("trade_date", TODAY)
        rec = Record(origin=origin, biz_type=biz_type, receiver=receiver, msg_id=f"M{self.sn}",
                     content_hash="h", state=state, amount_fen=fen,
                     result="0000" if state == "SUCCEEDED" else None, **fields)
        self.journal.insert_record(rec, self.at)
        return rec

    def report(self, party: str | None = None,
               bal: Any = ()) -> exitreport.ExitReport:
        self.journal.flush()
        return exitreport.build_report(self.journal, TODAY, TODAY + "T10:00:00+08:00", party,
                                       bal)


@pytest.fixture
def book(tmp_path: Path) -> Iterator[Book]:
    b = Book(tmp_path / "journal.sqlite3")
    yield b
    b.journal.close()


def kinds(report: exitreport.ExitReport, number: str = "AG1") -> list[str]:
    [a] = [a for a in report.agreements if a.agreement.agreement_no == number]
    return [b.kind for b in a.blockers]


def test_an_agreement_without_funds_records_or_services_is_ready(book: Book) -> None:
    book.agreement()
    xin = book.record("XFER.IN")
    book.record("XFER.OUT", fen=10_000)
    book.record("XFER.IN", state="FAILED", fen=5_000)
    book.record("XFER.REVERSE", orig_type="XFER.IN", orig_from=BROKER,
                orig_biz_sn=xin.biz_sn, state="FAILED")  # a failed give-back takes nothing
    report = book.report()
    assert kinds(report) == [] and report.exit_code == exitreport.EXIT_READY
    data = report.as_dict()
    assert data["ready"] == ["AG1"] and data["exit_code"] == 0
    assert data["agreements"][0]["fund_acct"] == "********3000"  # masked
    assert data["agreements"][0]["wallet_id"] == "************3028"
    assert "100020003000" not in json.dumps(data) + exitreport.as_text(report)
    assert "result: nothing blocks" in exitreport.as_text(report)


def test_funds_are_the_journals_net_transfers_less_what_is_given_back(book: Book) -> None:
    book.agreement()
    book.record("XFER.IN", fen=50_000)
    book.record("XFER.OUT", fen=20_000)
    book.record("XFER.IN", state="REVERSED", fen=7_000)
    given = book.record("XFER.IN", fen=3_000)
    book.record("XFER.REVERSE", state="PENDING", orig_type="XFER.IN", orig_from=BROKER,
                orig_biz_sn=given.biz_sn, fen=3_000)  # being given back: not the client's
    book.record("XFER.IN", fen=900, fund_acct=OTHER_FUND)  # another account
    book.record("XFER.IN", fen=800, origin=BROKER, receiver="ICBC")  # another bank
    book.record("XFER.IN", fen=700, trade_date="2026-11-30")  # an earlier agreement's
    report = book.report()
    [a] = report.agreements
    assert a.balance == exitreport.Balance(30_000, "journal")
    assert kinds(report) == ["open_record", "funds"]  # the reversal in flight, the 300.00
    assert a.blockers[1].detail == {"amount": "300.00", "source": "journal"}
    assert report.exit_code == exitreport.EXIT_BLOCKED


def test_an_overdraft_blocks_too(book: Book) -> None:
    book.agreement()
    book.record("XFER.OUT", fen=100)
    report = book.report()
    assert kinds(report) == ["funds"]
    assert "an overdraft in the fund account: -1.00" in report.agreements[0].blockers[0].text


def test_records_not_final_and_queued_reversals_block(book: Book) -> None:
    book.agreement()
    book.record("XFER.OUT", state="PENDING", fen=100)
    slow = book.record("XFER.IN", state="REVERSING", fen=200)
    book.journal.queue_reversal(Reversal(BROKER, "XFER.IN", slow.biz_sn, BANK, "GW01R1", 200,
                                         "QUEUED", 3, 0.0, None, None, 1_000.0))
    pay = book.record("PAY.ORDER", fen=500, wallet_id=WALLET, service_end="2026-01-01")
    book.record("XFER.REVERSE", state="PENDING", orig_type="PAY.ORDER", orig_from=BROKER,
                orig_biz_sn=pay.biz_sn, fen=500)  # no wallet of its own: its original's
    book.record("XFER.OUT", state="PENDING", fen=100, wallet_id=OTHER_WALLET)  # not this one
    report = book.report()
    assert kinds(report) == ["open_record", "open_record", "open_record", "reversal_queued"]
    texts = [b.text for b in report.agreements[0].blockers]
    assert "is REVERSING" in texts[2] and "(3 attempt(s) so far)" in texts[3]
    assert [b.detail["biz_type"] for b in report.agreements[0].blockers] == [
        "XFER.OUT", "XFER.REVERSE", "XFER.IN", "XFER.IN"]  # PENDING ones, then REVERSING


def test_paid_services_in_validity_block_until_refunded_in_full(book: Book) -> None:
    book.agreement()
    running = book.record("PAY.ORDER", fen=8_800, wallet_id=WALLET, service_end=TODAY,
                          order_no="O1", product_code="ADVICE")
    book.record("PAY.ORDER", fen=100, wallet_id=WALLET, service_end="2026-12-01")  # ended
    refunded = book.record("PAY.ORDER", fen=199, wallet_id=WALLET, service_end="2027-01-01")
    book.record("PAY.REFUND", fen=199, orig_type="PAY.ORDER", orig_from=BROKER,
                orig_biz_sn=refunded.biz_sn, wallet_id=WALLET)
    book.record("PAY.REFUND", fen=8_000, orig_type="PAY.ORDER", orig_from=BROKER,
                orig_biz_sn=running.biz_sn, wallet_id=WALLET)  # in part only
    report = book.report()
    assert kinds(report) == ["service"]
    blocker = report.agreements[0].blockers[0]
    assert blocker.detail["biz_sn"] == running.biz_sn and blocker.detail["service_end"] == TODAY
    assert "runs until 2026-12-02" in blocker.text
    book.record("PAY.REFUND", fen=800, orig_type="PAY.ORDER", orig_from=BROKER,
                orig_biz_sn=running.biz_sn, wallet_id=WALLET)
    assert kinds(book.report()) == []


def test_a_sign_in_flight_is_listed_as_not_answered(book: Book) -> None:
    book.agreement(None, status="PENDING")
    report = book.report()
    assert [a.agreement.status for a in report.agreements] == ["PENDING"]
    assert kinds(report, None) == ["sign_pending"]  # type: ignore[arg-type]
    book.agreement("AG9", fund="2", wallet="3", status="ENDED")  # ended: not listed
    assert len(book.report().agreements) == 1


def test_the_balance_is_the_checked_bal_files_plus_the_transfers_since(
        book: Book, tmp_path: Path) -> None:
    book.agreement()
    book.agreement("AG2", fund=OTHER_FUND, wallet=OTHER_WALLET)
    book.record("XFER.IN", fen=50_000)
    created = dt.datetime.fromtimestamp(book.at, CHINA).replace(microsecond=0)
    book.at += 5
    book.record("XFER.OUT", fen=20_000)  # after the file was made
    bal = exitreport.parse_bal(tmp_path / "BAL_GTJA_CCB_20261202.txt", (
        f"H|SBDX1|BAL|20261202|GTJA|CCB|{created.isoformat()}\n"
        f"D|{FUND}|{WALLET}|490.00\nD|9|9|-1.50\nT|2|488.50|00\n"))
    assert bal.balances[("9", "9")] == -150
    older = dataclasses.replace(bal, day=dt.date(2026, 12, 1), balances={})
    report = book.report(bal=[older, bal])
    first, second = report.agreements
    assert first.balance == exitreport.Balance(29_000, "bal", bal.name, 49_000, -20_000)
    assert second.balance == exitreport.Balance(0, "journal")  # not in the file
    assert [f.name for f in report.bal_files] == [bal.name]
    assert "BAL_GTJA_CCB_20261202.txt: 490.00, transfers since: -200.00" in \
        exitreport.as_text(report)
    assert exitreport.latest_bal([older, bal], BROKER, "ICBC") is None


def test_only_bal_files_eod_watch_accepted_as_valid_count(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    (drop / "accepted" / "1").mkdir(parents=True)
    text = "H|SBDX1|BAL|20261202|GTJA|CCB|2026-12-02T16:00:00+08:00\nD|1|2|3.00\nT|1|3.00|0\n"
    for where, valid in ((drop / "accepted", True), (drop / "accepted" / "1", False)):
        (where / "BAL_GTJA_CCB_20261202.txt").write_text(text)
        (where / "BAL_GTJA_CCB_20261202.txt.report.json").write_text(
            json.dumps({"valid": valid}))
        (where / "BAL_GTJA_CCB_20261202.txt.report.txt").write_text("valid")
    (drop / "accepted" / "BAL_GTJA_CCB_20261203.txt").write_text("nonsense")
    (drop / "accepted" / "BAL_GTJA_CCB_20261203.txt.report.json").write_text('{"valid": true}')
    found, problems = exitreport.accepted_bal_files([drop, tmp_path / "absent"])
    assert [(f.path.parent.name, f.balances) for f in found] == [("accepted", {("1", "2"): 300})]
    assert len(problems) == 1 and "BAL_GTJA_CCB_20261203.txt: left out" in problems[0]


def test_subscriptions_not_redeemed_per_corporate_wallet_and_the_party_filter(
        book: Book) -> None:
    corp = "0099000011112222"
    book.agreement()
    book.agreement("AG2", fund="2", wallet="3", broker="HTSC", bank="ICBC")
    sub = book.record("OTC.SUBSCRIBE", fen=100_000, wallet_id=corp, order_no="SY1",
                      product_code="SY2026A01", book_date="2026-12-03")
    book.record("OTC.REDEEM", fen=40_000, orig_type="OTC.SUBSCRIBE", orig_from=BROKER,
                orig_biz_sn=sub.biz_sn, wallet_id=corp)
    done = book.record("OTC.SUBSCRIBE", fen=5_000, wallet_id=corp)
    book.record("OTC.REDEEM", fen=5_000, orig_type="OTC.SUBSCRIBE", orig_from=BROKER,
                orig_biz_sn=done.biz_sn, wallet_id=corp)
    book.record("OTC.SUBSCRIBE", state="REVERSED", fen=7_000, wallet_id=corp)
    book.record("OTC.SUBSCRIBE", fen=1_000, wallet_id="X1", origin="HTSC", receiver="ICBC")
    report = book.report()
    assert [(w.wallet_id, w.left_fen) for w in report.subscriptions] == [(corp, 60_000),
                                                                        ("X1", 1_000)]
    assert report.exit_code == exitreport.EXIT_BLOCKED  # the agreements are ready
    assert report.as_dict()["subscriptions"][0] == {
        "corp_wallet_id": "************2222", "broker": BROKER, "bank": BANK,
        "left": "600.00", "subscriptions": [{
            "biz_sn": sub.biz_sn, "order_no": "SY1", "product_code": "SY2026A01",
            "state": "SUCCEEDED", "trade_date": TODAY, "book_date": "2026-12-03",
            "amount": "1000.00", "redeemed": "400.00", "left": "600.00"}]}
    ccb = book.report(party=BANK)
    assert [a.agreement.agreement_no for a in ccb.agreements] == ["AG1"]
    assert [w.wallet_id for w in ccb.subscriptions] == [corp]
    assert [a.agreement.agreement_no for a in book.report(party="HTSC").agreements] == ["AG2"]


def test_exit_report_command_without_a_journal_exits_1(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert exitreport.exit_report_command(tmp_path, None, False, []) == 1
    assert "no journal at" in capsys.readouterr().err


def test_exit_report_reads_the_postgresql_journal_its_gateway_toml_names(
        tmp_path: Path, pg_store_url: str) -> None:
    """With ``[journal] url = "postgresql://…"`` the command reads that journal (one
    REPEATABLE READ, READ ONLY transaction: tests/test_store_snapshot.py)."""
    book = Book(pg_store_url)
    book.agreement()
    book.record("XFER.IN")  # 100.00 left in FUND: AG1 is blocked
    book.agreement("AG2", fund=OTHER_FUND, wallet=OTHER_WALLET)  # nothing: ready
    book.journal.close()
    (tmp_path / "gateway.toml").write_text(f'[journal]\nurl = "{pg_store_url}"\n',
                                           encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "gateway", "--home", str(tmp_path),
                          "exit-report", "--json"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == exitreport.EXIT_BLOCKED, out.stderr
    data = json.loads(out.stdout)
    assert data["ready"] == ["AG2"]
    [blocked] = [a for a in data["agreements"] if a["agreement_no"] == "AG1"]
    assert [b["kind"] for b in blocked["blockers"]] == ["funds"]
    assert data["exit_code"] == exitreport.EXIT_BLOCKED


def test_the_broker_exit_plans_by_the_report() -> None:
    from gateway.sim.exiting import plan

    report = {"agreements": [
        {"agreement_no": "AG1", "broker": BROKER, "blockers": [{"kind": "funds", "text": "f"}]},
        {"agreement_no": "AG2", "broker": BROKER, "blockers": [
            {"kind": "funds", "text": "f"}, {"kind": "service", "text": "PAY.ORDER P1 runs"}]},
        {"agreement_no": "AG4", "broker": BROKER, "blockers": []},
        {"agreement_no": "AG5", "broker": "HTSC", "blockers": []}]}
    active = {"AG1": "1", "AG2": "2", "AG3": "3", "AG4": "4"}
    go, left = plan(report, BROKER, active)
    assert go == {"AG1": "1", "AG4": "4"}
    assert left == [("AG2", "the exit report says: PAY.ORDER P1 runs"),
                    ("AG3", "not in the exit report (signed after it was made?): run "
                            "`gateway exit-report --json` again")]
    assert plan(None, BROKER, active) == (active, [])
