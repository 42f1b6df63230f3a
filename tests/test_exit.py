"""Issue 20, the business exit (PROTOCOL §11), across real processes on loopback:
`gateway serve`, `gateway sim bank` and `gateway sim broker` runs.

A business day (signs, transfers in and out, a timed-out transfer reversed, paid
services, an OTC subscription and a partial redemption); the broker's BAL file checked
by `eod watch`; the bank suspended mid-day (new business B340; XFER.OUT, PAY.REFUND,
OTC.REDEEM and CTS.UNSIGN still 0000); `gateway exit-report` saying what blocks whom;
the broker's `--exit` returning funds and unsigning what the report lets it; what is
left settled; the exit run again; and at the end: every agreement ended, every wallet
and the aggregate account back where they were (ledgers vs journal), every end-of-day
file valid and reconciled.
"""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import BANK, BROKER
from test_sim_processes import CORP, Rig, check_day, eod_check, run_broker, start_rig

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

#: What the suspended bank still takes: the refund and the redemption that clear the
#: exit report's last blockers.
SETTLE_REST = f"""\
refund orig=GTJAADV1 amount=88.00 expect=0000
otc-redeem orig=GTJASUB1 wallet={CORP} amount=600000.00 expect=0000
"""


@pytest.fixture
def rig(home, start_gateway, tmp_path: Path) -> Iterator[Rig]:  # type: ignore[no-untyped-def]
    rig = start_rig(home, start_gateway, tmp_path, "--withhold", "GTJASLOW1")
    yield rig
    if rig.bank.poll() is None:
        rig.bank.kill()
        rig.bank.wait(10)


def gateway(rig: Rig, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "gateway", "--home", str(rig.gw_home), *args],
                         capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def exit_report(rig: Rig, drop: Path) -> tuple[int, dict[str, Any], Path]:
    out = gateway(rig, "exit-report", "--json", "--eod-dir", str(drop))
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


def wallet_balances(rig: Rig) -> dict[str, int]:
    bank = sqlite3.connect(rig.bank_home / "data" / f"{BANK}-ledger.sqlite3")
    return dict(bank.execute("SELECT id, balance_fen FROM account"))


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


def test_a_business_day_ends_with_a_complete_clean_exit(rig: Rig) -> None:
    drop = rig.eod.parent / "drop"
    out = script(rig, "day.txt", DAY)
    assert out.returncode == 0 and "all as expected" in out.stdout, out.stdout + out.stderr
    accept_bal(rig, drop)

    # --- the exit report: who is blocked by what -----------------------------------------
    code, report, report_path = exit_report(rig, drop)
    assert code == 3 and report["version"] == 1
    assert report["bal_files"][0]["file"].endswith("accepted/BAL_GTJA_CCB_" +
                                                   report["today"].replace("-", "") + ".txt")
    agreements = by_fund(report)
    assert set(agreements) == {"3000", "3018"} and report["ready"] == []
    first, second = agreements["3000"], agreements["3018"]
    assert first["balance"] == {"amount": "30000.00", "source": "bal",
                                "bal_file": Path(report["bal_files"][0]["file"]).name,
                                "bal_amount": "30000.00", "since_amount": "0.00"}
    assert [b["kind"] for b in first["blockers"]] == ["funds"]
    assert [b["kind"] for b in second["blockers"]] == ["service", "funds"]
    assert second["blockers"][0]["biz_sn"] == "GTJAADV1"
    assert second["balance"]["amount"] == "700.00"  # the 300.00 was reversed
    [corp] = report["subscriptions"]
    assert corp["left"] == "600000.00" and corp["subscriptions"][0]["biz_sn"] == "GTJASUB1"
    text = gateway(rig, "exit-report", "--eod-dir", str(drop), "--party", BANK)
    assert text.returncode == 3 and "BLOCKED" in text.stdout and "GTJAADV1" in text.stdout
    assert "100020003000" not in text.stdout + report_path.read_text()  # masked
    assert gateway(rig, "exit-report", "--party", "NOBODY").returncode == 0

    # --- the broker's exit: what the report lets it do -----------------------------------
    out = run_broker(rig, "--exit", "--exit-report", str(report_path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"exit: {first['agreement_no']}: fund ********3000: unsigned" in out.stdout
    assert f"NOT UNSIGNED {second['agreement_no']}: the exit report says: PAY.ORDER " \
           "GTJAADV1" in out.stdout
    assert "exit: 1 agreement(s) unsigned, 30000.00 returned to wallets, 1 not" in out.stdout

    # --- what is left is settled, the exit is run again -----------------------------------
    out = script(rig, "rest.txt", SETTLE_REST)
    assert out.returncode == 0 and "all as expected" in out.stdout, out.stdout + out.stderr
    code, report, report_path = exit_report(rig, drop)
    assert code == 3 and report["subscriptions"] == []
    [left] = report["agreements"]
    assert [b["kind"] for b in left["blockers"]] == ["funds"]
    out = run_broker(rig, "--exit", "--exit-report", str(report_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "exit: 1 agreement(s) unsigned, 700.00 returned to wallets, 0 not" in out.stdout
    code, report, _ = exit_report(rig, drop)
    assert code == 0 and report["agreements"] == [] and report["subscriptions"] == []

    # --- every agreement ended; wallets, the aggregate account and the files agree --------
    journal = sqlite3.connect(rig.gw_home / "data" / "journal.sqlite3")
    assert journal.execute("SELECT status, count(*) FROM agreement GROUP BY status"
                           ).fetchall() == [("ENDED", 2)]
    rig.bank.send_signal(signal.SIGUSR1)
    bank_out = rig.stop_bank()
    states = check_day(rig)
    assert states["GTJASLOW1"] == "REVERSED"
    balances = wallet_balances(rig)
    net = journal_net_of_wallets(rig)
    for wallet, seeded in SEEDED.items():  # ledger = seed + the journal's net, = the seed
        assert balances[wallet] == seeded + net.get(wallet, 0) == seeded, wallet
    for pool in ("AGGREGATE", "DEDICATED", "MERCHANT", "PRODUCT"):
        assert balances[pool] == 0, pool
    broker = sqlite3.connect(rig.broker_home / "data" / f"{BROKER}-ledger.sqlite3")
    assert broker.execute("SELECT count(*) FROM account WHERE balance_fen != 0"
                          ).fetchone() == (0,)
    assert "eod: wrote" in bank_out
    for path in sorted(rig.eod.glob("*.txt")):
        code, checked = eod_check(rig, path)
        assert code == 0 and checked["valid"] is True, checked
        assert checked["missing_in_file"] == checked["extra_in_file"] == []
        assert checked["mismatched"] == []
    bal = next(rig.eod.glob("BAL_*.txt")).read_text().splitlines()
    assert bal[-1].split("|")[1:3] == ["3", "0.00"]  # every client at 0.00, as AGGREGATE
    sign_lines = (rig.eod / next(p.name for p in rig.eod.glob("SIGN_CCB_*.txt"))).read_text()
    assert sign_lines.count("|UNSIGN|") == 2
