"""The broker side of bench/relay.py: a `gateway sim broker` node (real keys, its own
journal) holding N sessions to the gateway, driving XFER.OUT round trips
(broker → gateway → bank → gateway → broker).

Run by bench/relay.py as a separate process; writes one JSON result file.

closed loop: ``--window`` requests outstanding per connection, a new one sent as each
             answer arrives (maximum throughput).
open loop:   ``--rate`` requests/s sent on a fixed schedule whatever the answers do;
             latency is measured from the *scheduled* send time, so a stall shows up
             in the percentiles instead of silently slowing the sender.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.message import Message  # noqa: E402
from gateway.sim.runtime import Sim, start_sim  # noqa: E402

BANK = "CCB"
BROKER = "GTJA"  # every BizSn this driver sends begins with it (PROTOCOL §4)
FUND, WALLET = "100020003000", "0071130812093028"
CUST_NAME, ID_NO = "张三", "110101199003071234"  # sent encrypted (§4)
AMOUNT_FEN = 100  # 1.00 CNY per transfer


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def tree_cpu_split(root: int) -> tuple[float, float]:
    """(utime, stime) of a process and its children now alive, in seconds: the
    PostgreSQL server (the postmaster and its backends, WAL writer, checkpointer, …).
    A child that exits between two marks takes its CPU with it; the gateway's
    connections live for the whole run."""
    user, system = cpu_split(root)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == root:
                u, s = cpu_split(int(stat.parent.name))
                user, system = user + u, system + s
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return user, system


@dataclass
class Sample:
    biz_sn: str
    due: float  # scheduled send time (open loop) or actual send time (closed loop)
    answered: float | None = None
    result: str | None = None


@dataclass
class Driver:
    sim: Sim
    reactor: Any
    args: argparse.Namespace
    samples: dict[str, Sample] = field(default_factory=dict)
    answers_seen: int = 0
    outstanding: int = 0
    sent: int = 0
    start: float = 0.0
    measure_from: float = 0.0
    measure_to: float = 0.0
    cpu_marks: dict[str, dict[str, float]] = field(default_factory=dict)
    done: bool = False  # the results (or the error) are written
    _flush_call: Any = None

    # --- plumbing ----------------------------------------------------------------
    def now(self) -> float:
        return time.perf_counter()

    def flush_soon(self) -> None:
        """Group commit of the broker's journal: once per reactor turn."""
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.reactor.callLater(0, self.sim.node.flush)

    def mark_cpu(self, label: str) -> None:
        marks = {"wall": time.perf_counter(), "driver": sum(os.times()[:2])}
        for name, pid in (("gateway", self.args.gateway_pid), ("bank", self.args.bank_pid)):
            if pid:
                user, system = cpu_split(pid)
                marks[name], marks[name + "_sys"] = user + system, system
        if self.args.postgres_pid:
            user, system = tree_cpu_split(self.args.postgres_pid)
            marks["postgres"], marks["postgres_sys"] = user + system, system
        self.cpu_marks[label] = marks

    # --- phases ------------------------------------------------------------------
    def wait_ready(self) -> None:
        ready = sum(1 for s in self.sim.node.sessions if s.ready)
        if ready >= self.args.connections:
            self.sign()
        else:
            self.reactor.callLater(0.05, self.wait_ready)

    def sign(self) -> None:
        body = {"BizSn": f"{BROKER}S{self.args.tag}", "FundAcct": FUND, "WalletId": WALLET,
                "WalletLevel": "1", "WalletKind": "PERSONAL", "CustName": "", "IdType": "01",
                "IdNo": "", "Phone": None, "Channel": "APP"}

        def signed(answer: Message) -> None:
            result = str(answer.body.get("Result") or answer.body.get("Code"))
            if result not in ("0000", "B301"):
                self.fail(f"CTS.SIGN answered {result}")
                return
            self.begin()

        self.sim.node.request("CTS.SIGN.REQ", body, BANK, signed,
                              {"CustName": CUST_NAME, "IdNo": ID_NO})
        self.flush_soon()

    def begin(self) -> None:
        self.start = self.now()
        self.measure_from = self.start + self.args.warmup
        self.measure_to = self.measure_from + self.args.seconds
        self.reactor.callLater(self.args.warmup, self.mark_cpu, "from")
        self.reactor.callLater(self.args.warmup + self.args.seconds, self.mark_cpu, "to")
        self.reactor.callLater(self.args.warmup + self.args.seconds + 30, self.deadline)
        if self.args.rate:
            self.open_loop_tick()
        else:
            for _ in range(self.args.window * self.args.connections):
                self.send(self.now())
            self.flush_soon()

    def sending(self) -> bool:
        return self.now() < self.measure_to

    def send(self, due: float) -> None:
        biz_sn = f"{BROKER}B{self.args.tag}{self.sent:08d}"
        self.sent += 1
        self.outstanding += 1
        sample = Sample(biz_sn, due)
        self.samples[biz_sn] = sample
        body = {"BizSn": biz_sn, "FundAcct": FUND, "WalletId": WALLET,
                "Amount": f"{AMOUNT_FEN // 100}.{AMOUNT_FEN % 100:02d}", "Ccy": "CNY"}
        self.sim.node.request("XFER.OUT.REQ", body, BANK,
                              lambda answer: self.answered(sample, answer))

    def answered(self, sample: Sample, answer: Message) -> None:
        self.answers_seen += 1
        self.outstanding -= 1
        if sample.answered is None:
            sample.answered = self.now()
            sample.result = str(answer.body.get("Result") or answer.body.get("Code"))
        if not self.args.rate and self.sending():
            self.send(self.now())
            self.flush_soon()
        elif not self.sending() and self.outstanding == 0:
            self.finish()

    def open_loop_tick(self) -> None:
        now = self.now()
        if now >= self.measure_to:
            if self.outstanding == 0:
                self.finish()
            return
        # request k is due at start + k/rate: by now, requests 0 .. floor(elapsed*rate)
        due_count = int((now - self.start) * self.args.rate) + 1
        if self.sent < due_count:
            while self.sent < due_count:
                self.send(self.start + self.sent / self.args.rate)
            self.flush_soon()
        # wake up when the next one is due (the reactor rounds to whole ms: at most 1 ms)
        self.reactor.callLater(max(0.0, self.start + self.sent / self.args.rate - self.now()),
                               self.open_loop_tick)

    def deadline(self) -> None:
        """Answers still missing long after the end are errors, not waited for forever."""
        if self.outstanding:
            self.finish()
        else:
            self.reactor.callLater(1.0, self.deadline)

    def fail(self, why: str) -> None:
        if self.done:
            return
        self.done = True
        print(f"driver: {why}", file=sys.stderr)
        self.write({"error": why})
        self.reactor.stop()

    def finish(self) -> None:
        # once only: the sim's stop (a shutdown trigger) still acts on answers read,
        # and the last one must not write the results again or stop a stopping reactor
        if self.done or not self.reactor.running:
            return
        self.done = True
        if "to" not in self.cpu_marks:  # the last request's tick ran before the mark's timer
            self.mark_cpu("to")
        self.sim.node.flush()
        self.write(self.summary())
        self.reactor.stop()

    # --- results -----------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        window = [s for s in self.samples.values() if self.measure_from <= s.due < self.measure_to]
        done_in_window = [s for s in self.samples.values() if s.answered is not None
                          and self.measure_from <= s.answered < self.measure_to]
        latencies = sorted((s.answered - s.due) * 1000 for s in window if s.answered)
        results: dict[str, int] = {}
        for s in self.samples.values():
            key = s.result or "unanswered"
            results[key] = results.get(key, 0) + 1
        return {
            "mode": "open" if self.args.rate else "closed",
            "rate": self.args.rate, "connections": self.args.connections,
            "window": self.args.window, "seconds": self.args.seconds,
            "sent": self.sent, "answers_seen": self.answers_seen, "results": results,
            "throughput": len(done_in_window) / self.args.seconds,
            "latency_ms": percentiles(latencies),
            "measured": len(window),
            "cpu": self.cpu_marks,
            "biz_sns": {s.biz_sn: s.result for s in self.samples.values()},
        }

    def write(self, data: dict[str, Any]) -> None:
        Path(self.args.out).write_text(json.dumps(data))


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(values[-1], 3),
            "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--home", type=Path, required=True)
    p.add_argument("--connect", required=True)
    p.add_argument("--gateway-cert", type=Path, required=True)
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--window", type=int, default=8, help="closed loop: outstanding per link")
    p.add_argument("--rate", type=float, default=0.0, help="open loop: requests/s (0: closed)")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--tag", default="R")
    p.add_argument("--gateway-pid", type=int, default=0)
    p.add_argument("--bank-pid", type=int, default=0)
    p.add_argument("--postgres-pid", type=int, default=0,
                   help="the PostgreSQL postmaster: its CPU and its children's is marked too"
                        " (default: 0, none)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s driver %(message)s")

    from twisted.internet import reactor

    sim = start_sim(reactor, args.home, "BROKER", BROKER, args.connect,
                    args.gateway_cert.read_bytes(), connections=args.connections)
    sim.book.seed()
    driver = Driver(sim, reactor, args)
    reactor.callWhenRunning(driver.wait_ready)  # type: ignore[attr-defined]
    # the broker's journal is closed (committed, checkpointed) before the process exits
    reactor.addSystemEventTrigger("before", "shutdown", sim.stop)  # type: ignore[attr-defined]
    reactor.callLater(args.warmup + args.seconds + 300, driver.fail,  # type: ignore[attr-defined]
                      "no logon or answers in time")
    reactor.run()  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
