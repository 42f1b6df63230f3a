"""Round-trip cost of the PostgreSQL store's commit (issue 21; docs/BENCHMARKS.md).

    python bench/pg_commit.py [--url postgresql://…] [--seconds 5] [--json out.json]

Without ``--url`` it starts a throwaway cluster (tests/pgcluster.py: unix socket only,
fsync on, synchronous_commit on) and stops it at the end.  Each transaction is one
relayed hop's writes (message IN with a 1.2 KB body, its MsgId, the record, message
OUT: four INSERTs into the migrated schema), fenced by the lease (gateway/store_pg).
Measured, each for ``--seconds``:

- ``sequential``: one hop per transaction, each statement its own round trip
  (BEGIN, fence, 4 INSERTs, COMMIT: 7 round trips), on the calling thread;
- ``pipelined``: the same transaction in pipeline mode (one round trip);
- both again with ``synchronous_commit=off`` (no wait for the WAL flush: its price);
- ``committer``: gateway.store_pg.committer.TurnCommitter under a real Twisted reactor,
  ``--window`` turns in flight (each callback submits the next turn), merged by the
  committer when they queue: turns committed per second, submit-to-durable latency,
  turns per transaction, the reactor thread's time inside ``submit``, and how late a
  1 ms timer fired (what the reactor's other work saw: the committer thread shares the
  GIL), under that load and in the second before it (the machine's own noise).

``PSYCOPG_IMPL=python|binary`` picks psycopg's implementation (the binary one must be
installed: ``pip install psycopg-binary``); the report names the one used.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from gateway.store_pg.committer import Statement, TurnCommitter, Unit  # noqa: E402
from gateway.store_pg.leasedb import acquire, fence, fenced, release  # noqa: E402
from gateway.store_pg.schema import migrate  # noqa: E402

import pgcluster  # noqa: E402

BODY = os.urandom(1200)
ENVELOPE = os.urandom(200)


def hop(n: int, tag: str) -> Unit:
    msg_id = f"{tag}{n:012d}"
    return (
        Statement("INSERT INTO message (at, direction, session, party, msg_type, msg_id,"
                  " ref_id, envelope, xml) VALUES (%s, 'IN', 's1', 'GTJA', 'XFER.OUT', %s,"
                  " NULL, %s, %s)", (time.time(), msg_id, ENVELOPE, BODY)),
        Statement("INSERT INTO seen_msg_id (sender, msg_id, seen_at) VALUES ('GTJA', %s, %s)",
                  (msg_id, time.time())),
        Statement("INSERT INTO record (origin, biz_type, biz_sn, receiver, msg_id,"
                  " content_hash, state, trade_date, amount_fen, fund_acct, wallet_id,"
                  " created_at, updated_at) VALUES ('GTJA', 'XFER.OUT', %s, 'CCB', %s,"
                  " 'h', 'PENDING', '20261202', 12345, 'F1', 'W1', %s, %s)",
                  (msg_id, msg_id, time.time(), time.time())),
        Statement("INSERT INTO message (at, direction, session, party, msg_type, msg_id,"
                  " ref_id, envelope, xml) VALUES (%s, 'OUT', 's2', 'CCB', 'XFER.OUT', %s,"
                  " NULL, %s, %s)", (time.time(), msg_id, ENVELOPE, BODY)),
    )


def _percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    q = statistics.quantiles(samples, n=100) if len(samples) > 1 else samples * 99
    return {"p50_ms": round(q[49] * 1e3, 3), "p99_ms": round(q[98] * 1e3, 3),
            "max_ms": round(samples[-1] * 1e3, 3)}


def direct(url: str, seconds: float, pipelined: bool, sync: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        conn.execute(f"SET synchronous_commit = {sync}")
        conn.commit()
        grant = acquire(conn, "bench", 3600, name=f"bench-{pipelined}-{sync}")
        assert grant is not None, "the lease is held: is another bench running on this database?"
        try:
            tag = f"{'p' if pipelined else 's'}{sync[:2]}{time.time_ns() % 10**12}-"
            times: list[float] = []
            cpu0, end, n = time.process_time(), time.perf_counter() + seconds, 0
            while time.perf_counter() < end:
                unit = hop(n, tag)
                started = time.perf_counter()
                if pipelined:
                    with conn.pipeline(), conn.transaction():
                        fence(conn, grant)
                        for s in unit:
                            conn.execute(s.sql, s.params)
                else:
                    with fenced(conn, grant):
                        for s in unit:
                            conn.execute(s.sql, s.params)
                times.append(time.perf_counter() - started)
                n += 1
            cpu = time.process_time() - cpu0
        finally:
            release(conn, grant)
    return {"commits_per_s": round(n / seconds), **_percentiles(times),
            "client_cpu_us_per_commit": round(cpu / n * 1e6)}


def committer(url: str, seconds: float, window: int) -> dict[str, Any]:
    from twisted.internet import reactor as _reactor
    from twisted.internet.task import LoopingCall

    reactor: Any = _reactor
    with psycopg.connect(url, autocommit=True) as conn:
        grant = acquire(conn, "bench-committer", 3600, name="gateway")
    assert grant is not None
    tc = TurnCommitter(lambda: psycopg.connect(url), reactor.callFromThread)
    latencies: list[float] = []
    run_tag = f"c{time.time_ns() % 10**12}-"
    submit_cost = [0.0]
    lateness: list[float] = []
    state: dict[str, Any] = {"n": 0, "done": 0, "stop": False, "idle_lateness": []}
    last_tick = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        lateness.append(max(0.0, now - last_tick[0] - 0.001))
        last_tick[0] = now

    def turn() -> None:
        if state["stop"]:
            return
        n = state["n"]
        state["n"] += 1
        unit = hop(n, run_tag)
        started = time.perf_counter()
        d = tc.submit(grant, unit)
        submit_cost[0] += time.perf_counter() - started

        def committed(_: object) -> None:
            latencies.append(time.perf_counter() - started)
            state["done"] += 1
            turn()
        d.addCallback(committed)
        d.addErrback(lambda f: (print(f.getTraceback(), file=sys.stderr), reactor.stop()))

    def start() -> None:
        loop = LoopingCall(tick)
        loop_ref.append(loop)
        loop.start(0.001)
        reactor.callLater(1.0, load)  # first a second of the timer alone: the baseline

    def load() -> None:
        state["idle_lateness"] = lateness[:]
        state["cpu0"] = time.process_time()
        lateness.clear()
        for _ in range(window):
            turn()
        reactor.callLater(seconds, finish, loop_ref[0])

    loop_ref: list[LoopingCall] = []

    def finish(loop: LoopingCall) -> None:
        state["stop"] = True
        loop.stop()
        tc.close().addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    cpu = time.process_time() - state["cpu0"]
    done = state["done"]
    stats = tc.stats
    return {"window": window, "turns_per_s": round(done / seconds),
            **_percentiles(latencies),
            "turns_per_transaction": round(stats.units / max(stats.transactions, 1), 2),
            "transactions_per_s": round(stats.transactions / seconds),
            "submit_us_per_turn": round(submit_cost[0] / max(state["n"], 1) * 1e6, 1),
            "process_cpu_us_per_turn": round(cpu / max(done, 1) * 1e6),
            "timer_lateness": _percentiles(lateness),
            "timer_lateness_idle": _percentiles(state["idle_lateness"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an empty PostgreSQL database (default: start a "
                        "throwaway cluster and stop it at the end)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="measured seconds per mode (default: 5)")
    parser.add_argument("--window", type=int, default=16,
                        help="turns in flight for the committer run (default: 16)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    folder = None
    url = args.url
    if url is None:
        folder = Path(tempfile.mkdtemp(prefix="sbdx-pgbench-"))
        url = pgcluster.start(folder)
    try:
        with psycopg.connect(url) as conn:
            migrate(conn)
            server = conn.execute("SHOW server_version").fetchone()
        report: dict[str, Any] = {"psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
                                  "server": server[0] if server else "?", "runs": {}}
        for pipelined in (False, True):
            for sync in ("on", "off"):
                name = f"{'pipelined' if pipelined else 'sequential'} sync={sync}"
                report["runs"][name] = direct(url, args.seconds, pipelined, sync)
                print(name, report["runs"][name], flush=True)
        report["runs"]["committer"] = committer(url, args.seconds, args.window)
        print("committer", report["runs"]["committer"], flush=True)
    finally:
        if folder is not None:
            pgcluster.stop(folder)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
