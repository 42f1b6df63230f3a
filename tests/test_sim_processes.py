"""`gateway serve`, `gateway sim bank` and a driving `gateway sim broker` as three
processes on loopback (issue 6): after the broker's script (or load), money is
conserved, every reversal was undone once, both ledgers agree with the gateway's
journal, and every end-of-day file the simulators wrote passes `gateway eod check`."""
from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.keystore import KeyStore
from gateway.sim.runtime import ensure_key

from conftest import BANK, BROKER, RunningGateway

CORP = "0099000011112222"
DAY_SCRIPT = f"""\
# the business day tests/test_sim_processes.py drives
sign fund=100020003000 expect=0000
sign fund=100020003018 expect=0000
sign fund=100020003026 expect=B302          # class-II wallet: the gateway refuses
xfer-in  fund=100020003000 amount=50000.00 expect=0000
xfer-out fund=100020003000 amount=20000.00 expect=0000
xfer-out fund=100020003018 amount=1.00 expect=B310(local)
xfer-in  fund=100020003018 amount=999999.00 expect=B310   # the bank: wallet short
xfer-in  fund=100020003018 amount=300.00 sn=GTJASLOW1 expect=B330
wait sn=GTJASLOW1 state=REVERSED seconds=20
xfer-in  fund=100020003018 amount=700.00 expect=0000
pay fund=100020003000 amount=199.00 product=L2QUOTE expect=0000
refund amount=199.00 expect=0000
refund amount=199.00 expect=B314
pay fund=100020003018 amount=88.00 product=ADVICE kind=ADVISORY days=30 sn=GTJAADV1 expect=0000
otc-subscribe wallet={CORP} amount=1000000.00 product=SY2026A01 expect=0000
otc-subscribe wallet=0071130812093028 amount=10.00 kind=PERSONAL expect=B302
otc-redeem amount=400000.00 expect=0000
xfer-out fund=100020003018 amount=700.00 expect=0000
unsign fund=100020003000 expect=B304(local)  # funds left: the broker does not send it
unsign fund=100020003018 expect=B304         # the advisory is still valid
refund orig=GTJAADV1 amount=88.00 expect=0000
unsign fund=100020003018 expect=0000
"""


@dataclass
class Rig:
    gw: RunningGateway
    gw_home: Path
    bank_home: Path
    broker_home: Path
    eod: Path
    bank: subprocess.Popen[str]

    def sim(self, role: str, *args: str) -> list[str]:
        home = self.bank_home if role == "bank" else self.broker_home
        return [sys.executable, "-m", "gateway", "--home", str(home), "sim", role, "--connect",
                f"127.0.0.1:{self.gw.port}", "--gateway-cert",
                str(self.gw_home / "keys" / "gateway.crt"), "--eod-dir", str(self.eod), *args]

    def stop_bank(self) -> str:
        self.bank.send_signal(signal.SIGTERM)
        out, _ = self.bank.communicate(timeout=30)
        assert self.bank.returncode == 0, out
        return out


#: The rig's gateway settings: quick timeouts and reversal retries.
RIG_SETTINGS = dict(relay_timeout_seconds=1.5, reversal_retry_initial_seconds=0.3,
                    reversal_retry_max_seconds=1.0)


def start_rig(home, start_gateway, tmp_path: Path, *bank_args: str) -> Rig:  # type: ignore[no-untyped-def]
    bank_home, broker_home = tmp_path / "ccb", tmp_path / "gtja"
    store = KeyStore(home.root / "keys")  # the sims' own keys, registered first
    store.add_peer(BANK, "BANK", ensure_key(bank_home, BANK).read_bytes(), replace=True)
    store.add_peer(BROKER, "BROKER", ensure_key(broker_home, BROKER).read_bytes(), replace=True)
    gw = start_gateway(**RIG_SETTINGS)
    rig = Rig(gw, home.root, bank_home, broker_home, tmp_path / "eod", None)  # type: ignore[arg-type]
    rig.bank = subprocess.Popen(rig.sim("bank", *bank_args), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    gw.wait_for_log(r"CCB logged on as BANK", timeout=20)
    return rig


@pytest.fixture
def rig(home, start_gateway, tmp_path: Path) -> Iterator[Rig]:  # type: ignore[no-untyped-def]
    rig = start_rig(home, start_gateway, tmp_path, "--withhold", "GTJASLOW1")
    yield rig
    if rig.bank.poll() is None:
        rig.bank.kill()
        rig.bank.wait(10)


def run_broker(rig: Rig, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(rig.sim("broker", *args), capture_output=True, text=True,
                         timeout=timeout)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def eod_check(rig: Rig, path: Path) -> tuple[int, dict[str, object]]:
    out = subprocess.run([sys.executable, "-m", "gateway", "--home", str(rig.gw_home), "eod",
                          "check", str(path), "--json"], capture_output=True, text=True,
                         timeout=60)
    return out.returncode, json.loads(out.stdout)


def net_by_key(ledger: sqlite3.Connection, key: str) -> dict[str, int]:
    net: dict[str, int] = {}
    for debit, credit, fen in ledger.execute("SELECT debit, credit, amount_fen FROM posting"
                                             " WHERE biz_key=? ORDER BY id", (key,)):
        net[debit] = net.get(debit, 0) - fen
        net[credit] = net.get(credit, 0) + fen
    return {acct: fen for acct, fen in net.items() if fen}


def check_day(rig: Rig) -> dict[str, str]:
    """The invariants of the day; returns the journal's state per XFER BizSn."""
    journal = sqlite3.connect(rig.gw_home / "data" / "journal.sqlite3")
    bank = sqlite3.connect(rig.bank_home / "data" / f"{BANK}-ledger.sqlite3")
    broker = sqlite3.connect(rig.broker_home / "data" / f"{BROKER}-ledger.sqlite3")
    records = journal.execute(
        "SELECT biz_type, biz_sn, state FROM record WHERE origin=? AND receiver=?"
        " ORDER BY biz_type, biz_sn", (BROKER, BANK)).fetchall()
    assert records and {s for _, _, s in records} <= {"SUCCEEDED", "FAILED", "REVERSED"}
    # §4: every BizSn a sim made begins with its originator's PartyId
    assert [sn for _, sn, _ in records if not sn.startswith(BROKER)] == []
    booked = {(t, sn): (res, rev) for t, sn, res, rev in bank.execute(
        "SELECT biz_type, biz_sn, result, reversed FROM op WHERE origin=? ORDER BY biz_key",
        (BROKER,))}
    # the bank's ledger agrees with the journal, record by record
    for kind, sn, state in records:
        result, reversed_ = booked[(kind, sn)]
        assert (state == "SUCCEEDED") == (result == "0000" and not reversed_), (kind, sn, state)
        assert (state == "REVERSED") == bool(reversed_), (kind, sn, state)
    # the broker's ledger agrees on what it originated: money moved iff SUCCEEDED
    states = {sn: state for kind, sn, state in records if kind.startswith("XFER.")}
    mine = {sn: res for sn, res in broker.execute(
        "SELECT biz_sn, result FROM op WHERE origin=? AND biz_type LIKE 'XFER.%'"
        " ORDER BY biz_key", (BROKER,))}
    assert set(mine) == set(states)
    for sn, state in states.items():
        assert (mine[sn] == "0000") == (state == "SUCCEEDED"), (sn, state, mine[sn])
        assert (mine[sn] == "B330") == (state == "REVERSED"), (sn, state, mine[sn])
    # every wallet debit reached the aggregate account (and back): nothing in between
    for kind, sn, state in records:
        if not kind.startswith("XFER."):
            continue
        moved = net_by_key(bank, f"{BROKER}|{kind}|{sn}")
        wallets = sum(fen for acct, fen in moved.items() if acct.isdigit())
        assert wallets == -moved.get("AGGREGATE", 0) and "DEDICATED" not in moved, (sn, moved)
        if state != "SUCCEEDED":
            assert moved == {}, (sn, moved)
    # every reversal undone exactly once: each posting of the original has one mirror
    for kind, sn, state in records:
        if state == "REVERSED":
            legs = dict(bank.execute("SELECT reversal, count(*) FROM posting WHERE biz_key=?"
                                     " GROUP BY reversal ORDER BY reversal",
                                     (f"{BROKER}|{kind}|{sn}",)))
            assert legs.get(0) == legs.get(1) and legs.get(1), (sn, legs)
    dedicated, = bank.execute("SELECT balance_fen FROM account WHERE id='DEDICATED'").fetchone()
    aggregate, = bank.execute("SELECT balance_fen FROM account WHERE id='AGGREGATE'").fetchone()
    funds, = broker.execute("SELECT COALESCE(SUM(balance_fen), 0) FROM account"
                            " WHERE kind='FUND'").fetchone()
    assert dedicated == 0 and aggregate == funds
    return states


def check_files(rig: Rig, bank_out: str, broker_out: str) -> list[str]:
    names = sorted(p.name for p in rig.eod.glob("*.txt"))
    assert [n.split("_")[0] for n in names] == ["BAL", "OTC", "PAY", "SIGN", "XFER"], names
    assert "eod: wrote" in bank_out and "eod: wrote" in broker_out
    assert not [p for p in rig.eod.iterdir() if p.name.startswith(".")]  # no temp left
    for name in names:
        assert (rig.eod / (name + ".sig")).exists()
        code, report = eod_check(rig, rig.eod / name)
        assert code == 0, report
        assert report["valid"] is True and report["mismatched"] == []
        assert report["missing_in_file"] == [] and report["extra_in_file"] == []
    return names


def test_a_scripted_business_day_across_three_processes_balances_and_reconciles(rig: Rig) -> None:
    script = rig.eod.parent / "day.txt"
    script.write_text(DAY_SCRIPT, encoding="utf-8")
    out = run_broker(rig, "--script", str(script))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all as expected" in out.stdout and "UNEXPECTED" not in out.stdout
    assert out.stdout.count("\nstep ") == DAY_SCRIPT.count("\n") - 1
    rig.bank.send_signal(signal.SIGUSR1)  # provisional files now; the bank keeps running
    provisional = rig.eod / "provisional"
    deadline = time.monotonic() + 15
    while len(list(provisional.glob("*_CCB_GTJA_*.txt.sig"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(list(provisional.glob("*_CCB_GTJA_*.txt.sig"))) == 4 and rig.bank.poll() is None
    assert list(rig.eod.glob("*_CCB_GTJA_*")) == []  # not the day's files: none in DIR
    midday = {p.name: p.read_bytes() for p in provisional.iterdir()}
    bank_out = rig.stop_bank()  # the closing files, in DIR
    assert bank_out.count("eod: wrote") == 2 and bank_out.count("eod: wrote provisional") == 1
    states = check_day(rig)
    assert states["GTJASLOW1"] == "REVERSED"
    assert sorted(states.values()).count("SUCCEEDED") == 4
    names = check_files(rig, bank_out, out.stdout)
    # the BAL file's total is the aggregate account's balance (§8)
    bal = next(rig.eod.glob("BAL_*.txt")).read_text().splitlines()
    bank = sqlite3.connect(rig.bank_home / "data" / f"{BANK}-ledger.sqlite3")
    aggregate, = bank.execute("SELECT balance_fen FROM account WHERE id='AGGREGATE'").fetchone()
    assert bal[-1].split("|")[2] == f"{aggregate // 100}.{aggregate % 100:02d}"
    assert "Traceback" not in rig.gw.log_text() + bank_out
    # a watcher of DIR takes the closing files, never the provisional ones
    watch = subprocess.run([sys.executable, "-m", "gateway", "--home", str(rig.gw_home), "eod",
                            "watch", str(rig.eod), "--once"], capture_output=True, text=True,
                           timeout=120)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    assert sorted(p.name for p in (rig.eod / "accepted").glob("*.txt")
                  if ".report." not in p.name) == names
    assert {p.name: p.read_bytes() for p in provisional.iterdir()} == midday


def test_a_broker_under_load_until_sigterm_drains_and_writes_its_bal_file(rig: Rig) -> None:
    proc = subprocess.Popen(rig.sim("broker", "--rate", "40"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    rig.gw.wait_for_log(r"GTJA logged on as BROKER", timeout=20)
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in err
    assert "rate: " in out and "all as expected" in out, out
    answered = int(out.split("rate: ")[1].split()[0])
    assert answered > 40, out  # about 40 a second for the seconds after signing
    assert_closed_its_journal(BROKER, rig.broker_home, err)
    bank_out = rig.stop_bank()
    assert_closed_its_journal(BANK, rig.bank_home, bank_out)
    states = check_day(rig)
    assert sum(s == "SUCCEEDED" for s in states.values()) > 20
    check_files(rig, bank_out, out)


def assert_closed_its_journal(party: str, home: Path, log: str) -> None:
    """A sim that exited closed its journal: its totals logged, its WAL folded back into
    the file (checked before anything else opens the file, which makes a WAL again)."""
    assert re.search(rf"journal {party}-ledger.sqlite3 closed: \d+ commits", log), log
    assert not (home / "data" / f"{party}-ledger.sqlite3-wal").exists()


def test_a_broker_with_seconds_stops_by_itself(rig: Rig) -> None:
    out = run_broker(rig, "--rate", "30", "--seconds", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "eod: wrote" in out.stdout and "rate: " in out.stdout


def test_a_bad_script_is_refused_before_anything_is_sent(rig: Rig) -> None:
    script = rig.eod.parent / "bad.txt"
    script.write_text("sign fund=100020003000\nxfer-in fund=100020003000 amount=12,5\n")
    out = run_broker(rig, "--script", str(script), timeout=30)
    assert out.returncode == 64  # a usage error (gateway.exitcodes)
    assert "script line 2: amount '12,5'" in out.stderr
    journal = sqlite3.connect(rig.gw_home / "data" / "journal.sqlite3")
    assert journal.execute("SELECT count(*) FROM record").fetchone() == (0,)


BROKEN_BOOKS = """
import sys
import gateway.sim.ledger as ledger
from gateway import cli

def close(self):
    raise OSError("disk full (test)")  # books in a file of their own fail to close

ledger.Ledger.close = close
sys.exit(cli.main(sys.argv[1:]))
"""

BROKEN_FINAL_COMMIT = """
import sys
import gateway.journal as journal
import gateway.sim.runtime as runtime
from gateway import cli

stopping = []
real_flush, real_stop = journal.Journal.flush, runtime.Sim.stop

def flush(self):
    if stopping:  # every commit from the stop on fails (the books share the file)
        raise OSError("disk full (test)")
    return real_flush(self)

def stop(self):
    stopping.append(True)
    return real_stop(self)

journal.Journal.flush = flush
runtime.Sim.stop = stop
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("broken", [BROKEN_BOOKS, BROKEN_FINAL_COMMIT],
                         ids=["books", "final-commit"])
def test_a_sim_whose_books_fail_to_close_exits_1_and_still_closes_its_journal(
        broken: str, tmp_path: Path) -> None:
    gw_home, bank_home = tmp_path / "gw", tmp_path / "ccb"
    assert subprocess.run([sys.executable, "-m", "gateway", "--home", str(gw_home), "init"],
                          capture_output=True, timeout=60).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-c", broken, "--home", str(bank_home), "sim", "bank",
         "--connect", "127.0.0.1:9", "--gateway-cert", str(gw_home / "keys" / "gateway.crt")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # nobody listens on port 9: it keeps dialling
        if "dialling the gateway" in line:
            break
    time.sleep(1.5)  # the reactor runs (and handles SIGTERM) just after that line
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    assert "stopping: " in out and "disk full (test)" in out
    assert_closed_its_journal(BANK, bank_home, out)  # closed although the books failed


# --- issue 17 case 8: the broker across a gateway crash or restart --------------------

def relayed_per_bizsn(journal: sqlite3.Connection, party: str) -> dict[str, int]:
    """How often the gateway sent ``party`` a transfer request, per BizSn."""
    counts: dict[str, int] = {}
    for xml, in journal.execute("SELECT xml FROM message WHERE direction='OUT' AND party=?"
                                " AND msg_type IN ('XFER.IN.REQ', 'XFER.OUT.REQ')", (party,)):
        sn = re.search(rb"<BizSn>([A-Za-z0-9]+)</BizSn>", bytes(xml))
        assert sn is not None
        counts[sn.group(1).decode()] = counts.get(sn.group(1).decode(), 0) + 1
    return counts


def wait_for_transfers(rig: Rig, timeout: float) -> None:
    journal = sqlite3.connect(rig.gw_home / "data" / "journal.sqlite3")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if journal.execute("SELECT count(*) FROM record WHERE biz_type LIKE 'XFER.%'"
                           ).fetchone()[0]:
            journal.close()
            return
        time.sleep(0.1)
    raise AssertionError("no transfer reached the gateway")


def check_settled(rig: Rig) -> None:
    """Every transfer the broker sent is final at the gateway and settled alike in the
    broker's books; nothing is held back; the broker's client funds (and its BAL file)
    are the bank's aggregate account; no transfer was relayed to the bank twice."""
    journal = sqlite3.connect(rig.gw_home / "data" / "journal.sqlite3")
    bank = sqlite3.connect(rig.bank_home / "data" / f"{BANK}-ledger.sqlite3")
    books = sqlite3.connect(rig.broker_home / "data" / f"{BROKER}-ledger.sqlite3")
    # every transfer the broker sent is final at the gateway, and settled alike by the broker
    states = dict(journal.execute("SELECT biz_sn, state FROM record WHERE origin=? AND"
                                  " biz_type LIKE 'XFER.%'", (BROKER,)).fetchall())
    mine = dict(books.execute("SELECT biz_sn, result FROM op WHERE origin=? AND"
                              " biz_type LIKE 'XFER.%'", (BROKER,)).fetchall())
    assert len(states) > 50 and set(mine) == set(states)
    for sn, state in states.items():
        assert state in ("SUCCEEDED", "FAILED", "REVERSED"), (sn, state)
        assert (mine[sn] == "0000") == (state == "SUCCEEDED"), (sn, state, mine[sn])
        assert (mine[sn] == "B330") == (state == "REVERSED"), (sn, state, mine[sn])
    assert books.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
    # the broker's books: nothing held back, and its clients' funds are the aggregate account
    held, = books.execute("SELECT balance_fen FROM account WHERE id='HOLD'").fetchone()
    total, = books.execute("SELECT SUM(balance_fen) FROM account").fetchone()
    funds, = books.execute("SELECT SUM(balance_fen) FROM account WHERE kind='FUND'").fetchone()
    aggregate, = bank.execute("SELECT balance_fen FROM account WHERE id='AGGREGATE'").fetchone()
    dedicated, = bank.execute("SELECT balance_fen FROM account WHERE id='DEDICATED'").fetchone()
    assert (held, total, dedicated) == (0, 0, 0)
    assert funds == aggregate and funds > 0
    bal = next(rig.eod.glob("BAL_*.txt")).read_text().splitlines()
    assert bal[-1].split("|")[2] == f"{aggregate // 100}.{aggregate % 100:02d}"
    # no transfer was relayed to the bank twice (§6: a repeat is answered, not relayed)
    relayed = relayed_per_bizsn(journal, BANK)
    assert relayed and max(relayed.values()) == 1, [sn for sn, n in relayed.items() if n > 1]


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_a_broker_under_load_settles_everything_across_a_gateway_restart(
        how: str, home, start_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`sim broker --rate 30 --seconds 8`, the gateway killed (or stopped) 3 s into the
    load and started again on the same port 2 s later: the broker asks again or looks up
    every request left without an outcome, settles each from the answer, ends by itself,
    and exits 0 with nothing in HOLD and its BAL total equal to the bank's AGGREGATE.
    The bank answers after 0.3 s, so requests are in flight when the gateway goes."""
    rig = start_rig(home, start_gateway, tmp_path, "--delay", "0.3")
    try:
        broker = subprocess.Popen(rig.sim("broker", "--rate", "30", "--seconds", "8",
                                          "--settle-seconds", "30"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rig.gw.wait_for_log(r"GTJA logged on as BROKER", timeout=20)
        wait_for_transfers(rig, timeout=20)  # the load has begun
        time.sleep(3)
        if how == "SIGKILL":
            rig.gw.kill()
        else:
            assert rig.gw.stop() == 0  # drains: new requests get S902 meanwhile
        time.sleep(2)
        rig.gw = start_gateway(listen=f"127.0.0.1:{rig.gw.port}")
        out, err = broker.communicate(timeout=60)
        assert "Traceback" not in err, err
        assert broker.returncode == 0, out + err
        assert "settled: every request sent has its outcome" in out, out
        recovered = re.search(r"\((\d+) sent again, (\d+) looked up", out)
        assert recovered and int(recovered[1]) + int(recovered[2]) > 0, out  # it was needed
        assert "UNSETTLED" not in out and "UNBALANCED" not in out, out
        bank_out = rig.stop_bank()
    finally:
        if rig.bank.poll() is None:
            rig.bank.kill()
    check_settled(rig)
    assert "Traceback" not in rig.gw.log_text() + bank_out


def test_a_broker_killed_under_load_settles_what_it_left_when_it_starts_again(
        home, start_gateway, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The broker itself SIGKILLed with transfers in flight (the bank answers after 1 s):
    they are in its outbox, in its own SQLite file, and the next run settles them
    first (same BizSn, same content: the gateway answers from its record)."""
    rig = start_rig(home, start_gateway, tmp_path, "--delay", "1")
    try:
        first = subprocess.Popen(rig.sim("broker", "--rate", "30"), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        rig.gw.wait_for_log(r"GTJA logged on as BROKER", timeout=20)
        wait_for_transfers(rig, timeout=20)
        time.sleep(2.5)
        first.kill()
        first.wait(10)
        books = sqlite3.connect(rig.broker_home / "data" / f"{BROKER}-ledger.sqlite3")
        left, = books.execute("SELECT count(*) FROM outbox").fetchone()
        books.close()
        assert left > 5  # ~30 a second, each unanswered for 1 s
        out = run_broker(rig, "--rate", "30", "--seconds", "2", "--settle-seconds", "30",
                         timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert f"{left} request(s) unsettled from an earlier run" in out.stderr, out.stderr
        assert "settled: every request sent has its outcome" in out.stdout, out.stdout
        again = re.search(r"\((\d+) sent again", out.stdout)
        assert again and int(again[1]) >= left, out.stdout
        bank_out = rig.stop_bank()
    finally:
        if rig.bank.poll() is None:
            rig.bank.kill()
    check_settled(rig)
    assert "Traceback" not in rig.gw.log_text() + bank_out
