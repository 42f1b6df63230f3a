"""Soak (issue 9) — SLOW, run by hand, not in CI (pytest collects tests/ only).

    python bench/soak.py [--minutes 30] [--rate 75] [--dir DIR] [--sample 10]
                         [--retention-days 0]

Starts ``gateway serve`` (a subprocess, gateway.toml: ``rotate_seconds = 60`` so every
session key is rotated each minute, ``relay_timeout_seconds = 3``) and
``gateway sim bank`` (a subprocess with its own ledger), then drives steady mixed load
from one broker session (bench/soak_load.py): XFER.IN/OUT, PAY.ORDER, CTS.QUERY,
XFER.QUERY, repeats (same content, and changed content → B312), tampered MACs and
signatures (E200/E202), replayed MsgIds (E204), a transfer the bank never answers every
30 s (B330 → reversal), and beside it a hostile connection every 5 s.

Every ``--sample`` seconds it records the gateway's RSS (/proc/PID/status VmRSS), open
fds (/proc/PID/fd), CPU seconds, the key rotations in its log, and the journal's size
(main file, WAL, the month files of ``--retention-days``) with its evidence and record
rows.  At the end: every
BizSn must be in a final state in the journal and agree with the answer the broker got
and with the bank's books, the bank's EOD XFER file must reconcile with 0
discrepancies, and SIGTERM must drain the gateway with exit 0.  The summary is printed
and written to DIR/soak-report.json and DIR/soak-report.md; the process exits 1 if a
check failed.  Results of the last full run: docs/reliability.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from soak_load import NOT_JOURNALED, Broker, Hostile  # noqa: E402

from gateway.eod import check_file, write_file  # noqa: E402
from gateway.keystore import KeyStore, load_signer  # noqa: E402
from gateway.sim.bank import BankBook  # noqa: E402
from gateway.sim.ledger import Ledger  # noqa: E402
from gateway.sim.runtime import ensure_key, key_file  # noqa: E402

from conftest import make_home  # noqa: E402
from flows import sign_fields  # noqa: E402
from peer import CN, TestPeer  # noqa: E402

FINAL = ("SUCCEEDED", "FAILED", "REVERSED")
STATE_OF = {"0000": "SUCCEEDED", "B330": "REVERSED"}  # anything else: FAILED
INSTALLED = re.compile(r"session (\S+): session key (\S+) installed")


# --- processes ----------------------------------------------------------------------------
@dataclass
class Rig:
    """The gateway and bank processes of one soak, and where their files are."""

    root: Path
    port: int
    gw: subprocess.Popen[bytes]
    bank: subprocess.Popen[bytes]
    gw_log: Path
    bank_log: Path
    broker_key: Any  # GTJA's private key, registered with the gateway

    @property
    def gw_home(self) -> Path:
        return self.root / "gw"

    @property
    def sim_home(self) -> Path:
        return self.root / "ccb"

    def log_text(self) -> str:
        return self.gw_log.read_text("utf-8", "replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_rig(root: Path, relay_timeout: float, withheld: list[str],
              retention_days: float = 0.0) -> Rig:
    port = free_port()
    home = make_home(root / "gw", {"GTJA": "BROKER"})
    sim_home = root / "ccb"
    KeyStore(home.root / "keys").add_peer("CCB", "BANK", ensure_key(sim_home, "CCB").read_bytes())
    home.write_config(listen=f"127.0.0.1:{port}", rotate_seconds=60.0,
                      relay_timeout_seconds=relay_timeout, reversal_retry_initial_seconds=0.5,
                      reversal_retry_max_seconds=5.0)
    if retention_days:  # PROTOCOL §11: evidence of records final for longer moves out
        with open(home.root / "gateway.toml", "a") as toml:
            toml.write(f"\n[journal]\nretention_days = {retention_days!r}\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    gw_log, bank_log = root / "gateway.log", root / "bank.log"
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "--home", str(home.root), "serve"],
                          stdout=subprocess.DEVNULL, stderr=open(gw_log, "wb"), env=env)
    wait_for_log(gw_log, r"serving on", 30)
    bank = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--home", str(sim_home), "sim", "bank", "--connect",
         f"127.0.0.1:{port}", "--gateway-cert", str(home.root / "keys" / "gateway.crt"),
         "--withhold", *withheld],
        stdout=open(bank_log, "wb"), stderr=subprocess.STDOUT, env=env)
    rig = Rig(root, port, gw, bank, gw_log, bank_log, home.keys["GTJA"])
    wait_for_log(gw_log, r"CCB logged on as BANK", 30)
    wait_for_log(gw_log, r"session key G\w+ installed", 30)
    return rig


def wait_for_log(path: Path, pattern: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and re.search(pattern, path.read_text("utf-8", "replace")):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{path.name} never matched {pattern!r}")


def broker_session(rig: Rig) -> TestPeer:
    gw_key = KeyStore(rig.gw_home / "keys").signer().public_key
    peer = TestPeer("GTJA", "BROKER", rig.broker_key, rig.port,
                    gateway_public_key=gw_key).open_session()
    fields = [(k, v) for k, v in sign_fields("GTJAS1") if k != "Phone"]
    rsp = peer.request("CTS.SIGN.REQ", fields, to="CCB", encrypt=("CustName", "IdNo"))
    if rsp.body.get("Result") != "0000":
        raise RuntimeError(f"CTS.SIGN refused: {rsp.body}")
    return peer


# --- sampling -------------------------------------------------------------------------------
@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int
    threads: int
    cpu_s: float
    rotations: int
    sent: int
    answered: int
    p99_ms: float | None
    journal_kib: int = 0  #: data/journal.sqlite3 (the main file; its -wal apart)
    wal_kib: int = 0
    archive_kib: int = 0  #: data/archive/*.sqlite3 (retention's month files)
    messages: int = 0  #: evidence rows in the journal
    records: int = 0  #: business records in the journal


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def installs(log: str) -> dict[str, list[str]]:
    """Session id → the key ids installed on it, in order, from the gateway log."""
    out: dict[str, list[str]] = {}
    for session, key_id in INSTALLED.findall(log):
        out.setdefault(session, []).append(key_id)
    return out


def rotations(log: str) -> int:
    """Keys installed on a session after its first one."""
    return sum(len(keys) - 1 for keys in installs(log).values())


def kib(path: Path) -> int:
    return path.stat().st_size // 1024 if path.exists() else 0


def journal_sizes(home: Path) -> dict[str, int]:
    """The journal's files and rows now (read from this process, as ``journal show``)."""
    data = home / "data"
    path = data / "journal.sqlite3"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        messages = db.execute("SELECT count(*) FROM message").fetchone()[0]
        records = db.execute("SELECT count(*) FROM record").fetchone()[0]
    return {"journal_kib": kib(path), "wal_kib": kib(data / "journal.sqlite3-wal"),
            "archive_kib": sum(kib(p) for p in (data / "archive").glob("*.sqlite3*")),
            "messages": int(messages), "records": int(records)}


def take_sample(rig: Rig, broker: Broker, started: float) -> Sample:
    pid = rig.gw.pid
    status = proc_status(pid)
    window, broker.tally.window_ms = broker.tally.window_ms, []
    p99 = statistics.quantiles(window, n=100)[98] if len(window) >= 2 else None
    answered = sum(broker.tally.answered.values())
    return Sample(round(time.monotonic() - started, 1), int(status["VmRSS"].split()[0]),
                  len(os.listdir(f"/proc/{pid}/fd")), int(status["Threads"]),
                  round(cpu_seconds(pid), 2), rotations(rig.log_text()),
                  sum(broker.tally.sent.values()), answered,
                  None if p99 is None else round(p99, 2), **journal_sizes(rig.gw_home))


def drive(rig: Rig, broker: Broker, seconds: float, every: float,
          samples: list[Sample], started: float) -> None:
    """Run the load in slices of ``every`` seconds, sampling between slices."""
    samples.append(take_sample(rig, broker, started))
    deadline = started + seconds
    while (left := deadline - time.monotonic()) > 0:
        broker.run(min(every, left))
        samples.append(take_sample(rig, broker, started))
        last = samples[-1]
        print(f"[{last.t:7.1f}s] sent {last.sent} answered {last.answered} rss "
              f"{last.rss_kib} KiB fds {last.fds} rotations {last.rotations} "
              f"p99 {last.p99_ms} ms journal {last.journal_kib} KiB (wal {last.wal_kib}, "
              f"archive {last.archive_kib}) messages {last.messages} records "
              f"{last.records}", flush=True)


# --- the checks at the end ------------------------------------------------------------------
@dataclass
class Checks:
    failures: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def expect(self, ok: bool, text: str) -> None:
        if not ok:
            self.failures.append(text)


def wait_settled(journal: Path, seconds: float) -> int:
    """Wait for no PENDING/REVERSING record; return how many are still open."""
    deadline = time.monotonic() + seconds
    while True:
        with closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
            open_ = db.execute("SELECT count(*) FROM record WHERE state IN "
                               "('PENDING','REVERSING')").fetchone()[0]
        if not open_ or time.monotonic() > deadline:
            return int(open_)
        time.sleep(0.5)


def check_final_states(rig: Rig, broker: Broker, checks: Checks) -> None:
    """Every BizSn the broker sent is in one final state that agrees with its answer
    and with the bank's books; no hostile BizSn was journaled."""
    journal = rig.gw_home / "data" / "journal.sqlite3"
    checks.expect(wait_settled(journal, 60) == 0, "records still PENDING/REVERSING after 60 s")
    with closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
        rows = {(t + ".REQ", sn): (st, rcv) for t, sn, st, rcv in db.execute(
            "SELECT biz_type, biz_sn, state, receiver FROM record WHERE origin='GTJA'")}
        keyx = dict(db.execute("SELECT party, count(*) FROM message WHERE direction='OUT' "
                               "AND msg_type='SYS.KEYX.REQ' GROUP BY party").fetchall())
    with closing(sqlite3.connect(rig.sim_home / "data" / "CCB-ledger.sqlite3")) as led:
        booked = {(t + ".REQ", sn): (res, rev) for t, sn, res, rev in led.execute(
            "SELECT biz_type, biz_sn, result, reversed FROM op WHERE origin='GTJA'")}
    states: dict[str, int] = {}
    bad: list[str] = []
    unanswered = [k for k, b in broker.business.items() if b.result is None]
    for key, biz in broker.business.items():
        if biz.result in NOT_JOURNALED or biz.result is None:
            continue
        state, receiver = rows.get(key, (None, None))
        states[str(state)] = states.get(str(state), 0) + 1
        if state != STATE_OF.get(biz.result, "FAILED"):
            bad.append(f"{key}: answered {biz.result}, journal {state}")
        elif receiver == "CCB":
            res, rev = booked.get(key, (None, 0))
            if (res == "0000" and not rev) != (state == "SUCCEEDED"):
                bad.append(f"{key}: journal {state}, bank {res} reversed={rev}")
    hostile = [sn for (_, sn) in rows if sn in broker.hostile_sns]
    checks.facts.update(final_states=states, unanswered=len(unanswered),
                        disagreements=bad[:20], n_disagreements=len(bad),
                        hostile_journaled=len(hostile), journal_records=len(rows),
                        gateway_keyx_requests=keyx)
    checks.expect(not unanswered, f"{len(unanswered)} business requests never answered")
    checks.expect(not bad, f"{len(bad)} BizSns disagree (answer/journal/bank): {bad[:5]}")
    checks.expect(set(states) <= set(FINAL), f"non-final states: {states}")
    checks.expect(not hostile, f"hostile BizSns journaled: {hostile[:5]}")


def check_eod(rig: Rig, checks: Checks) -> None:
    """The bank's XFER file of each trade date reconciles with the journal."""
    journal = rig.gw_home / "data" / "journal.sqlite3"
    with closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
        days = [d for d, in db.execute("SELECT DISTINCT trade_date FROM record "
                                       "WHERE biz_type LIKE 'XFER.%'")]
    out = []
    for text in days:
        day = dt.date.fromisoformat(text)
        ledger = Ledger(rig.sim_home / "data" / "CCB-ledger.sqlite3")
        try:
            book = BankBook(ledger, "CCB", day.isoformat, lambda: dt.datetime.now(CN).isoformat())
            records = book.xfer_records(text, "GTJA", "GW01")
        finally:
            ledger.db.close()
        path = write_file(rig.root / "eod", "XFER", "CCB", "GTJA", day, records,
                          load_signer(key_file(rig.sim_home, "CCB")), dt.datetime.now(CN))
        report = check_file(rig.gw_home, path)
        rec = report.reconciliation
        issues = (len(rec.missing_in_file) + len(rec.extra_in_file) + len(rec.mismatched)
                  if rec else None)
        out.append({"file": path.name, "valid": report.valid, "reason": report.reason,
                    "records": report.records, "matched": rec.matched if rec else 0,
                    "discrepancies": issues})
        checks.expect(report.valid and issues == 0 and rec is not None
                      and rec.matched == report.records, f"EOD {path.name}: {out[-1]}")
    checks.facts["eod"] = out


def stop_rig(rig: Rig, checks: Checks) -> None:
    rig.gw.send_signal(signal.SIGTERM)
    code = rig.gw.wait(60)
    rig.bank.send_signal(signal.SIGTERM)
    rig.bank.wait(30)
    log = rig.log_text()
    warnings: dict[str, int] = {}
    for m in re.finditer(r" WARNING (\S+): (?:session \S+: )?(.{0,60})", log):
        kind = re.sub(r"[0-9A-Za-z]{12,}|\d+", "#", m.group(2))
        warnings[kind] = warnings.get(kind, 0) + 1
    checks.facts.update(gateway_exit=code, drained="journal flushed" in log,
                        tracebacks=log.count("Traceback"), warnings=warnings)
    checks.expect(code == 0 and "journal flushed" in log, f"gateway exit {code} on SIGTERM")
    checks.expect("Traceback" not in log, "Traceback in the gateway log")


# --- the report -----------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    mem = proc_meminfo_mib()
    return {"cpus": os.cpu_count(), "cpu": model, "mem_mib": mem,
            "python": platform.python_version(), "kernel": platform.release()}


def proc_meminfo_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 0


def series(values: list[int]) -> dict[str, int]:
    return {"first": values[0], "last": values[-1], "min": min(values), "max": max(values)}


def slope_per_min(samples: list[Sample]) -> float:
    """Least-squares RSS slope (KiB/min) over the samples after the first tenth of the run."""
    tail = samples[len(samples) // 10:]
    if len(tail) < 3:
        return 0.0
    xs, ys = [s.t / 60 for s in tail], [s.rss_kib for s in tail]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den, 1) \
        if den else 0.0


def journal_growth(samples: list[Sample]) -> dict[str, Any]:
    """The journal's main file and rows over the run, and its growth per record over
    the second half (after retention, if on, has reached its steady state)."""
    half = samples[len(samples) // 2:]
    first, last = half[0], half[-1]
    new = last.records - first.records
    return {"journal_kib": series([s.journal_kib for s in samples]),
            "wal_kib_max": max(s.wal_kib for s in samples),
            "archive_kib_last": samples[-1].archive_kib,
            "messages": series([s.messages for s in samples]),
            "records_last": samples[-1].records,
            "second_half_bytes_per_record": round((last.journal_kib - first.journal_kib)
                                                  * 1024 / new) if new > 0 else None}


def latency(ms: list[float]) -> dict[str, float]:
    if len(ms) < 2:
        return {}
    q = statistics.quantiles(ms, n=100)
    return {"p50": round(q[49], 2), "p95": round(q[94], 2), "p99": round(q[98], 2),
            "max": round(max(ms), 2)}


def summary(args: argparse.Namespace, rig: Rig, broker: Broker, hostile: Hostile,
            samples: list[Sample], checks: Checks, seconds: float) -> dict[str, Any]:
    t = broker.tally
    by_kind: dict[str, dict[str, int]] = {}
    for (kind, code), n in sorted(t.answered.items()):
        by_kind.setdefault(kind, {})[code] = n
    by_code: dict[str, int] = {}
    for (_, code), n in t.answered.items():
        by_code[code] = by_code.get(code, 0) + n
    conns: dict[str, dict[str, int]] = {}
    for (variant, outcome), n in sorted(hostile.outcomes.items()):
        conns.setdefault(variant, {})[outcome] = n
    per_session = {s: len(k) - 1 for s, k in installs(rig.log_text()).items()}
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(), "dir": str(rig.root),
        "config": {"rotate_seconds": 60, "relay_timeout_seconds": args.relay_timeout,
                   "rate_per_s": args.rate, "sample_seconds": args.sample,
                   "retention_days": args.retention_days},
        "duration_s": round(seconds, 1),
        "requests": {"sent": sum(t.sent.values()), "sent_by_kind": dict(t.sent),
                     "answered": sum(t.answered.values()), "answered_by_code": by_code,
                     "answered_by_kind": by_kind,
                     "unexpected": {f"{k}: want {w} got {g}": n
                                    for (k, w, g), n in t.unexpected.items()},
                     "latency_ms": latency(t.latencies_ms),
                     "verify_failures": t.verify_failures, "errors": t.errors[:20],
                     "n_errors": len(t.errors), "heartbeats_received": t.heartbeats},
        "hostile_connections": conns,
        "rotations": {"total": rotations(rig.log_text()), "per_session": per_session,
                      "answered_by_broker": t.keyx_answered},
        "rss_kib": {**series([s.rss_kib for s in samples]),
                    "slope_kib_per_min_after_warmup": slope_per_min(samples)},
        "fds": series([s.fds for s in samples]),
        "threads": series([s.threads for s in samples]),
        "gateway_cpu_s": samples[-1].cpu_s,
        "journal": journal_growth(samples),
        "checks": {"ok": not checks.failures, "failures": checks.failures, **checks.facts},
        "samples": [vars(s) for s in samples],
    }


def markdown(rep: dict[str, Any]) -> str:
    r, rss, fds, j = rep["requests"], rep["rss_kib"], rep["fds"], rep["journal"]
    lines = [f"# Soak {rep['duration_s'] / 60:.1f} min — {'OK' if rep['checks']['ok'] else 'FAILED'}",
             "", f"`{rep['command']}` on {rep['machine']['cpus']} × {rep['machine']['cpu']}", "",
             "| | |", "|---|---|",
             f"| requests sent / answered | {r['sent']} / {r['answered']} |",
             f"| answered by code | {_codes(r['answered_by_code'])} |",
             f"| unexpected answers | {r['unexpected'] or 0} |",
             f"| MAC/signature failures on gateway frames | {r['verify_failures']} |",
             f"| latency ms p50/p95/p99/max | {_lat(r['latency_ms'])} |",
             f"| key rotations (gateway log) | {rep['rotations']['total']} "
             f"{rep['rotations']['per_session']} |",
             f"| RSS KiB first/last/min/max | {rss['first']}/{rss['last']}/{rss['min']}/"
             f"{rss['max']} (slope after warm-up {rss['slope_kib_per_min_after_warmup']} "
             "KiB/min) |",
             f"| open fds first/last/min/max | {fds['first']}/{fds['last']}/{fds['min']}/"
             f"{fds['max']} |",
             f"| gateway CPU seconds | {rep['gateway_cpu_s']} |",
             f"| journal KiB first/last (WAL max; archive) | {j['journal_kib']['first']}/"
             f"{j['journal_kib']['last']} ({j['wal_kib_max']}; {j['archive_kib_last']}) |",
             f"| evidence rows in the journal first/last/max | {j['messages']['first']}/"
             f"{j['messages']['last']}/{j['messages']['max']} |",
             f"| journal growth per record, second half | "
             f"{j['second_half_bytes_per_record']} bytes |",
             f"| final states | {rep['checks'].get('final_states')} |",
             f"| EOD | {rep['checks'].get('eod')} |",
             f"| failures | {rep['checks']['failures'] or 'none'} |", "",
             "| minute | RSS KiB | fds | rotations | sent | p99 ms (last window) | journal KiB "
             "| WAL KiB | archive KiB | evidence rows | records |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    shown = -1
    for s in rep["samples"]:
        if int(s["t"] // 60) != shown:
            shown = int(s["t"] // 60)
            lines.append(f"| {s['t'] / 60:.1f} | {s['rss_kib']} | {s['fds']} | "
                         f"{s['rotations']} | {s['sent']} | {s['p99_ms']} | "
                         f"{s['journal_kib']} | {s['wal_kib']} | {s['archive_kib']} | "
                         f"{s['messages']} | {s['records']} |")
    return "\n".join(lines) + "\n"


def _codes(codes: dict[str, int]) -> str:
    return ", ".join(f"{c} {n}" for c, n in sorted(codes.items()))


def _lat(lat: dict[str, float]) -> str:
    return "/".join(str(lat.get(k)) for k in ("p50", "p95", "p99", "max"))


# --- main -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=75.0, help="broker requests per second")
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--relay-timeout", type=float, default=3.0)
    p.add_argument("--hostile-every", type=float, default=5.0,
                   help="seconds between hostile connections")
    p.add_argument("--dir", type=Path, help="work directory (default: a new temp dir)")
    p.add_argument("--retention-days", type=float, default=0.0,
                   help="[journal] retention_days for the gateway (PROTOCOL §11); a fraction "
                        "for the bench, e.g. 0.0007 = ~60 s (default: 0, keep all)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="sbdx-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    withheld = [f"GTJAW{i:04d}" for i in range(int(args.minutes * 2) + 2)]
    rig = start_rig(root, args.relay_timeout, withheld, args.retention_days)
    checks = Checks()
    try:
        end = (dt.date.today() + dt.timedelta(days=30)).isoformat()
        broker = Broker(broker_session(rig), args.rate, withheld, 30.0, end)
        hostile = Hostile(rig.port, args.hostile_every)
        hostile.start()
        samples: list[Sample] = []
        started = time.monotonic()
        drive(rig, broker, args.minutes * 60, args.sample, samples, started)
        seconds = time.monotonic() - started
        hostile.stop.set()
        broker.drain(args.relay_timeout * 3 + 10)
        samples.append(take_sample(rig, broker, started))
        check_final_states(rig, broker, checks)
        check_eod(rig, checks)
        checks.expect(rotations(rig.log_text()) >= 2 * int(args.minutes) - 2,
                      "fewer key rotations than one per minute per session")
        checks.expect(not broker.tally.unexpected and not broker.tally.verify_failures,
                      "unexpected answers or frames failing verification")
    finally:
        if rig.gw.poll() is None:
            stop_rig(rig, checks)
        if rig.bank.poll() is None:
            rig.bank.kill()
    rep = summary(args, rig, broker, hostile, samples, checks, seconds)
    (root / "soak-report.json").write_text(json.dumps(rep, indent=2, ensure_ascii=False))
    text = markdown(rep)
    (root / "soak-report.md").write_text(text)
    print(text)
    print(f"report: {root / 'soak-report.json'}, {root / 'soak-report.md'}")
    return 0 if rep["checks"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
