"""`gateway demo` as a new user runs it, and the books it leaves behind (issue 6)."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path


def test_demo_runs_a_whole_business_day_and_exits_zero(tmp_path: Path) -> None:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "gateway", "demo", "--keep", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    assert elapsed < 60
    text = out.stdout
    assert "RESULT: every step did what it should" in text
    for flow in ("CTS", "XFER", "PAY", "OTC"):
        assert f"\n{flow} " in text
    assert "B330" in text and "REVERSED" in text  # the timeout → reversal path ran
    assert "unsign 李四: service still valid" in text and "B304" in text
    assert " BAD " not in text
    assert "Traceback" not in out.stderr
    journal = tmp_path / "gateway" / "data" / "journal.sqlite3"
    assert f"journal: {journal}" in text and journal.exists()  # kept, and says where
    # the books it leaves: every wallet debit reached the aggregate account, reversal once
    bank = sqlite3.connect(tmp_path / "ccb" / "data" / "CCB-ledger.sqlite3")
    dedicated, = bank.execute("SELECT balance_fen FROM account WHERE id='DEDICATED'").fetchone()
    assert dedicated == 0
    ops = bank.execute("SELECT biz_key, biz_type, result, amount_fen, wallet_id, reversed"
                       " FROM op WHERE biz_type IN ('XFER.IN', 'XFER.OUT')").fetchall()
    assert ops
    for key, kind, result, amount, wallet, reversed_ in ops:
        net: dict[str, int] = {}
        for debit, credit, fen in bank.execute(
                "SELECT debit, credit, amount_fen FROM posting WHERE biz_key=?", (key,)):
            net[debit] = net.get(debit, 0) - fen
            net[credit] = net.get(credit, 0) + fen
        moved = {acct: fen for acct, fen in net.items() if fen}
        if result != "0000" or reversed_:
            assert moved == {}, (key, moved)  # refused or reversed: nothing stuck anywhere
        else:
            sign = -1 if kind == "XFER.IN" else 1
            assert moved == {wallet: sign * amount, "AGGREGATE": -sign * amount}, (key, moved)
    undone, = bank.execute("SELECT count(*) FROM posting WHERE reversal=1").fetchone()
    assert undone == 2  # the one timed-out transfer: two postings undone, once
    journal = sqlite3.connect(tmp_path / "gateway" / "data" / "journal.sqlite3")
    states = dict(journal.execute("SELECT state, count(*) FROM record GROUP BY state"))
    assert states.get("REVERSED") == 1 and "PENDING" not in states and "REVERSING" not in states
    # §4: each BizSn the day's requests carried begins with its originator's PartyId
    origins = journal.execute("SELECT origin, biz_sn FROM record").fetchall()
    assert {o for o, _ in origins} == {"GTJA", "CCB"}
    assert [(o, sn) for o, sn in origins if not sn.startswith(o)] == []


def test_demo_leaves_no_process_behind(tmp_path: Path) -> None:
    marker = str(tmp_path / "this-demo")  # other demos may run on the machine meanwhile
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--keep", marker],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.wait(timeout=120) == 0
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if marker in line and "ps -eo" not in line]


def test_a_day_that_recorded_nothing_or_did_not_complete_is_not_ok() -> None:
    from gateway.demo import Day, Outcome

    assert not Day().ok  # nothing recorded is not "every step did what it should"
    day = Day(outcomes=[Outcome("XFER", "a step", "0000", "0000")])
    assert not day.ok  # every step fine, but the day never reached its end
    day.completed = True
    assert day.ok
    day.timed_out(3)
    assert not day.ok


HANG = """
import sys
from twisted.internet import defer
import gateway.sim.drive as drive
import gateway.demo as demo

def never(self, *args, **kwargs):
    return defer.Deferred()  # the gateway's answer never comes

drive.Originator.wait_state = never
sys.exit(demo.main(timeout=4))
"""


def test_a_hung_demo_is_stopped_by_its_timer_and_fails_saying_where() -> None:
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", HANG], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert time.monotonic() - started < 30
    text = out.stdout
    assert "RESULT: FAILED" in text and "every step did what it should" not in text
    assert "BAD demo finished within 4 s" in text
    assert "still waiting for: the timed-out transfer is reversed" in text
    assert "the day did not run to its end" in text
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr


BROKEN_CLOSE = """
import sys
import gateway.sim.ledger as ledger
import gateway.demo as demo

def close(self):
    raise OSError("disk full (test)")  # the books' final commit fails

ledger.Ledger.close = close
sys.exit(demo.main())
"""


def test_a_sim_whose_final_commit_fails_fails_the_demo_and_says_so() -> None:
    out = subprocess.run([sys.executable, "-c", BROKEN_CLOSE], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "RESULT: FAILED" in out.stdout
    assert "BAD everything stopped cleanly" in out.stdout, out.stdout
    for party in ("CCB", "GTJA"):
        assert f"{party}: closing the books: disk full (test)" in out.stdout, out.stdout
        assert f"{party}: stopping: closing the books failed" in out.stderr  # and the log
