"""PROTOCOL §12 end to end, as processes: two gateways (same party, keys and registry)
on one PostgreSQL journal, a sim bank and a sim broker given both addresses
(``--connect A,B``), the broker's load running; the active is SIGKILLed mid-run (or
SIGTERMed: a graceful handover).

The standby takes the lease within ``failover_seconds``, the sims fail over to it, the
load carries on through it, and afterwards nothing is lost or done twice: the broker
exits 0 with nothing unsettled (outbox empty, HOLD 0), every transfer is final in the
shared journal and settled alike in both sims' books (a reversed one undone exactly
once), no transfer was relayed to the bank twice across the pair, and the broker's
client funds (its BAL file total) are the bank's AGGREGATE account. The old active,
started again, is a standby (S903, /readyz 503).

End of day (§8) on the shared journal, run from the pair's homes while they serve: the
gateway's own files of the day (`gateway eod export`, every TYPE to the bank and to the
broker, from the new active's home) and the sims' closing files (the bank's XFER, SIGN,
PAY and OTC, the broker's BAL) check clean from the other home — valid, exit 0, no
discrepancy — by the fingerprint proof and by the exact join (`gateway eod watch
--once` with a fixed hash seed, as a process).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.eod.check import check_file
from gateway.eod.export import export_file, unfinished
from gateway.eod.fileformat import parse_name
from gateway.keystore import KeyStore
from gateway.sim.runtime import ensure_key

from conftest import BANK, BROKER, GatewayHome, RunningGateway, make_home

psycopg = pytest.importorskip("psycopg")

#: as tests/test_ha.py: the lease lasts 0.75 f, a standby polls every f/8.
FAILOVER = 4.0
#: a bank whose key the test holds, for the S903 probe (CCB's and GTJA's are the sims').
BOC = "BOC"
#: the pair's settings: quick relay timeouts and reversal retries (as test_sim_processes).
SETTINGS = ("[gateway]\nrelay_timeout_seconds = 1.5\nreversal_retry_initial_seconds = 0.3\n"
            "reversal_retry_max_seconds = 1.0\n")


class Rig:
    """Two gateway homes (same keys and registry) on one PostgreSQL journal, and the
    homes of the sim bank and broker, whose keys are registered."""

    def __init__(self, root: Path, url: str) -> None:
        self.url = url
        self.bank_home, self.broker_home, self.eod = root / "ccb", root / "gtja", root / "eod"
        self.a = make_home(root / "a", {BANK: "BANK", BROKER: "BROKER", BOC: "BANK"})
        store = KeyStore(self.a.root / "keys")
        store.add_peer(BANK, "BANK", ensure_key(self.bank_home, BANK).read_bytes(), replace=True)
        store.add_peer(BROKER, "BROKER", ensure_key(self.broker_home, BROKER).read_bytes(),
                       replace=True)
        shutil.copytree(self.a.root, root / "b")
        self.b = GatewayHome(root / "b", self.a.keys, self.a.gateway_public_key)
        for home in (self.a, self.b):
            (home.root / "gateway.toml").write_text(
                f'{SETTINGS}\n[journal]\nurl = "{url}"\nfailover_seconds = {FAILOVER}\n')
        self.running: list[RunningGateway] = []
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, home: GatewayHome, listen: str = "127.0.0.1:0") -> RunningGateway:
        gw = RunningGateway(home, listen=listen)
        self.running.append(gw)
        return gw

    def sim(self, role: str, ports: tuple[int, int], *args: str) -> subprocess.Popen[str]:
        """A sim given both addresses; its stdout and stderr go to files (a pipe nobody
        reads during the run would fill and stall it): see :meth:`output`."""
        home = self.bank_home if role == "bank" else self.broker_home
        home.mkdir(parents=True, exist_ok=True)
        with open(home / "out.txt", "w") as out, open(home / "err.txt", "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--home", str(home), "sim", role,
                 "--connect", ",".join(f"127.0.0.1:{p}" for p in ports), "--gateway-cert",
                 str(self.a.root / "keys" / "gateway.crt"), "--eod-dir", str(self.eod),
                 *args], stdout=out, stderr=err, text=True)
        self.procs.append(proc)
        return proc

    def output(self, role: str, proc: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
        """(stdout, stderr) of a sim, once it has exited."""
        proc.wait(timeout)
        home = self.bank_home if role == "bank" else self.broker_home
        return (home / "out.txt").read_text(), (home / "err.txt").read_text()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        for gw in self.running:
            gw.kill()


@pytest.fixture
def rig(tmp_path: Path, pg_store_url: str) -> Iterator[Rig]:
    r = Rig(tmp_path, pg_store_url)
    yield r
    r.close()
    for gw in r.running:
        assert "Traceback" not in gw.log_text(), gw.log_text()


def transfers(url: str) -> dict[str, str]:
    """State per BizSn of the broker's transfers in the shared journal."""
    with psycopg.connect(url) as journal:
        return dict(journal.execute("SELECT biz_sn, state FROM record WHERE origin = %s AND"
                                    " biz_type LIKE 'XFER.%%'", (BROKER,)).fetchall())


def wait_for_transfers(url: str, at_least: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(transfers(url)) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} transfers in the journal"
        time.sleep(0.2)


def relayed_per_bizsn(url: str, party: str) -> dict[str, int]:
    """How often the pair sent ``party`` a transfer request, per BizSn."""
    counts: dict[str, int] = {}
    with psycopg.connect(url) as journal:
        for xml, in journal.execute("SELECT xml FROM message WHERE direction = 'OUT' AND"
                                    " party = %s AND msg_type IN ('XFER.IN.REQ',"
                                    " 'XFER.OUT.REQ')", (party,)):
            sn = re.search(rb"<BizSn>([A-Za-z0-9]+)</BizSn>", bytes(xml))
            assert sn is not None
            counts[sn[1].decode()] = counts.get(sn[1].decode(), 0) + 1
    return counts


def refused_as_standby(gw: RunningGateway) -> None:
    peer = gw.peer(BOC, "BANK").connect()
    rsp = peer.logon()
    assert rsp.type == "SYS.LOGON.RSP" and rsp.body["Result"] == "S903", rsp.body
    assert peer.closed_by_gateway(5)
    peer.close()


def readyz(port: int) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as rsp:
            return int(rsp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def check_settled(rig: Rig, states: dict[str, str]) -> None:
    """Both sims' books agree with the shared journal and with each other."""
    bank = sqlite3.connect(rig.bank_home / "data" / f"{BANK}-ledger.sqlite3")
    books = sqlite3.connect(rig.broker_home / "data" / f"{BROKER}-ledger.sqlite3")
    mine = dict(books.execute("SELECT biz_sn, result FROM op WHERE origin=? AND"
                              " biz_type LIKE 'XFER.%'", (BROKER,)).fetchall())
    assert set(mine) == set(states)  # every request the broker sent is in the journal
    for sn, state in states.items():  # final, and settled alike by the broker
        assert state in ("SUCCEEDED", "FAILED", "REVERSED"), (sn, state)
        assert (mine[sn] == "0000") == (state == "SUCCEEDED"), (sn, state, mine[sn])
        assert (mine[sn] == "B330") == (state == "REVERSED"), (sn, state, mine[sn])
    booked = {sn: (res, rev) for sn, res, rev in bank.execute(
        "SELECT biz_sn, result, reversed FROM op WHERE origin=? AND biz_type LIKE 'XFER.%'",
        (BROKER,))}
    for sn, state in states.items():  # the bank moved money iff SUCCEEDED ...
        if sn not in booked:  # never reached the bank (refused or timed out before it)
            assert state != "SUCCEEDED", sn
            continue
        result, reversed_ = booked[sn]
        assert (state == "SUCCEEDED") == (result == "0000" and not reversed_), (sn, state)
    for key, in bank.execute("SELECT DISTINCT biz_key FROM posting WHERE reversal=1"):
        legs = dict(bank.execute("SELECT reversal, count(*) FROM posting WHERE biz_key=?"
                                 " GROUP BY reversal", (key,)))
        assert legs.get(0) == legs.get(1), (key, legs)  # ... and undid a reversal once
    assert books.execute("SELECT count(*) FROM outbox").fetchone() == (0,)
    held, = books.execute("SELECT balance_fen FROM account WHERE id='HOLD'").fetchone()
    total, = books.execute("SELECT SUM(balance_fen) FROM account").fetchone()
    funds, = books.execute("SELECT SUM(balance_fen) FROM account WHERE kind='FUND'").fetchone()
    aggregate, = bank.execute("SELECT balance_fen FROM account WHERE id='AGGREGATE'").fetchone()
    dedicated, = bank.execute("SELECT balance_fen FROM account WHERE id='DEDICATED'").fetchone()
    assert (held, total, dedicated) == (0, 0, 0)
    assert funds == aggregate and funds > 0
    bal = next(rig.eod.glob(f"BAL_*{BROKER}*.txt")).read_text().splitlines()
    assert bal[-1].split("|")[2] == f"{aggregate // 100}.{aggregate % 100:02d}"


def check_eod(rig: Rig, exporter: GatewayHome, checker: GatewayHome) -> str:
    """The day's §8 files on the shared journal: ``exporter``'s home exports every TYPE
    to both sims, ``checker``'s checks those and the sims' own files, each valid and
    reconciled (exit 0, no discrepancy); then `eod watch --once` of the folder, the
    exact path (fixed hash seed), accepts them all.  What it checked, as text."""
    sims = sorted(rig.eod.glob("*.txt"))
    assert sorted(p.name.split("_")[0] for p in sims) == ["BAL", "OTC", "PAY", "SIGN", "XFER"]
    day = parse_name(sims[0].name).day
    made = []
    for file_type in ("XFER", "SIGN", "PAY", "OTC"):
        for peer in (BANK, BROKER):
            assert unfinished(exporter.root, file_type, day, peer) == 0, (file_type, peer)
            made.append(export_file(exporter.root, day, file_type, peer, rig.eod,
                                    force=False))
    records = {}
    for path in [*made, *sims]:
        report = check_file(checker.root, path)
        rec = report.reconciliation
        assert report.valid and report.exit_code == 0, (path.name, report)
        assert rec is None or (rec.clean and rec.matched == report.records), (path.name, rec)
        records[path.name] = report.records
    assert min(n for name, n in records.items() if name.startswith("XFER_")) > 20, records
    watch = subprocess.run(
        [sys.executable, "-m", "gateway", "--home", str(checker.root), "eod", "watch",
         str(rig.eod), "--once"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONHASHSEED": "0"})  # the exact check for every file
    files = len(made) + len(sims)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    assert (f"{files} file(s): {files} accepted, 0 accepted with discrepancies, 0 rejected"
            in watch.stdout), watch.stdout
    return f"eod: {files} files clean ({', '.join(f'{k} {v}' for k, v in records.items())})"


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_the_active_killed_under_load_the_standby_carries_on_and_nothing_is_lost_or_doubled(
        how: str, rig: Rig) -> None:
    """SIGKILL: what A relayed and left unanswered is reversed by B (B330 to the broker).
    SIGTERM: A drains (answers what is in flight, S902 to new requests), gives the lease
    back, and B takes it at its next poll: nothing to reverse."""
    a = rig.start(rig.a)
    a.wait_for_log(r"active: lease epoch 1 taken", timeout=20)
    b = rig.start(rig.b)
    b.wait_for_log(r"standby until the lease is ours", timeout=20)
    ports = (a.port, b.port)
    bank = rig.sim("bank", ports, "--delay", "0.3")  # requests in flight when A dies
    a.wait_for_log(r"CCB logged on as BANK", timeout=30)
    broker = rig.sim("broker", ports, "--rate", "20", "--seconds", "16",
                     "--settle-seconds", "40")
    a.wait_for_log(r"GTJA logged on as BROKER", timeout=30)
    wait_for_transfers(rig.url, 20, timeout=30)  # the load runs through A

    a.proc.send_signal(getattr(signal, how))
    killed, killed_at = time.monotonic(), time.time()
    before = len(transfers(rig.url))
    b.wait_for_log(r"active: lease epoch 2 taken", timeout=FAILOVER + 5)
    took = time.monotonic() - killed
    assert took < FAILOVER + 1.0, took  # as tests/test_ha.py
    b.wait_for_log(r"CCB logged on as BANK", timeout=30)  # both sims failed over
    b.wait_for_log(r"GTJA logged on as BROKER", timeout=30)

    out, err = rig.output("broker", broker, timeout=90)
    assert "Traceback" not in err, err
    assert broker.returncode == 0, out + err
    assert "settled: every request sent has its outcome" in out, out
    assert "UNSETTLED" not in out and "UNBALANCED" not in out, out
    bank.send_signal(signal.SIGTERM)
    bank_out, bank_err = rig.output("bank", bank, timeout=30)
    assert bank.returncode == 0 and "Traceback" not in bank_out + bank_err, bank_out + bank_err

    states = transfers(rig.url)
    assert len(states) > before + 20, (before, len(states))  # the load went on through B
    with psycopg.connect(rig.url) as journal:  # and succeeded there: money moved via B
        after, = journal.execute("SELECT count(*) FROM record WHERE origin = %s AND state ="
                                 " 'SUCCEEDED' AND created_at > %s", (BROKER, killed_at)
                                 ).fetchone()
    assert after > 10, after
    check_settled(rig, states)
    eod = check_eod(rig, rig.b, rig.a)  # any home of the pair: end of day only reads
    relayed = relayed_per_bizsn(rig.url, BANK)  # no transfer relayed twice across the pair
    assert relayed and max(relayed.values()) == 1, [sn for sn, n in relayed.items() if n > 1]
    with psycopg.connect(rig.url) as journal:  # the pair's MsgIds: none used twice
        doubled = journal.execute(
            "SELECT msg_id, count(*) FROM message WHERE direction = 'OUT'"
            " GROUP BY msg_id HAVING count(*) > 1").fetchall()
    assert doubled == [], doubled  # (a reversal's every attempt has a MsgId of its own)
    reversed_ = list(states.values()).count("REVERSED")
    if how == "SIGKILL":  # what A left in flight (the bank answers after 0.3 s: ~6 at 20
        assert reversed_ >= 1, states  # a second) was reversed by B: B330 to the broker
    else:
        assert a.proc.wait(30) == 0 and reversed_ == 0, (a.proc.returncode, states)

    old = rig.start(rig.a, listen=f"127.0.0.1:{a.port}")  # the old active, again
    old.wait_for_log(r"standby until the lease is ours", timeout=20)
    refused_as_standby(old)
    assert readyz(old.ops_port) == 503
    assert readyz(b.ops_port) == 200
    print(f"{how}: takeover {took:.2f} s; {len(states)} transfers ({before} before the kill,"
          f" {after} succeeded through B); "
          + "; ".join(re.findall(r"rate: .*|settled: .*", out)) + f"; {eod}")
