"""The turn's commit off the reactor thread (gateway/store_pg/committer.py): a real
reactor in a subprocess (tests/pgturns.py) against a real throwaway PostgreSQL."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("psycopg")

HERE = Path(__file__).parent


def test_commits_run_in_order_off_the_reactor_and_a_stale_holder_is_fenced(
        pg_store_url: str) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    proc = subprocess.run([sys.executable, str(HERE / "pgturns.py"), pg_store_url],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "error" not in out, out["error"]
    # while a commit waited for the database, the reactor kept turning and nothing of
    # the waiting turns was reported committed
    assert out["ticks_while_blocked"] >= 10
    assert out["done_while_blocked"] == [False, False, False]
    # the turns that queued behind it were committed together, in order
    assert out["events"] == ["t1 committed", "t2 committed", "t3 committed", "t4 committed",
                             "dup failed UniqueViolation", "t6 committed", "t7 failed Fenced"]
    # a merged transaction that failed was split: only the bad turn failed
    assert out["split"] == 1
    assert out["transactions"] == 4 and out["units"] == 6  # t1, t2-t4, t5, t6
    # the fenced turn wrote nothing
    assert out["takeover_epoch"] == 2
    assert out["alerts"] == ["t1", "t2", "t3", "t4", "t5", "t6"]


def test_the_commit_bench_runs(pg_url: str, tmp_path: Path) -> None:
    """bench/pg_commit.py keeps working (a tiny run; nothing here times anything)."""
    report = tmp_path / "pg.json"
    proc = subprocess.run([sys.executable, str(HERE.parent / "bench" / "pg_commit.py"),
                           "--url", pg_url, "--seconds", "0.2", "--window", "4",
                           "--json", str(report)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(report.read_text())["runs"]
    assert set(runs) == {"sequential sync=on", "sequential sync=off", "pipelined sync=on",
                         "pipelined sync=off", "committer"}
    assert runs["committer"]["turns_per_s"] > 0 and runs["pipelined sync=on"]["commits_per_s"] > 0


@pytest.mark.parametrize("pipelined", [True, False])
def test_work_that_leaves_a_transaction_open_does_not_swallow_the_next_commit(
        pg_store_url: str, pipelined: bool) -> None:
    """A read run through ``call`` opens a transaction and leaves it; the next unit
    must still be its own transaction, durable when reported (not a savepoint inside
    the read's transaction, rolled back or never committed)."""
    import threading

    import psycopg

    from gateway.store_pg.committer import Statement, TurnCommitter
    from gateway.store_pg.leasedb import Fenced, acquire

    with psycopg.connect(pg_store_url, autocommit=True) as watch:
        grant = acquire(watch, "A", 60.0)
        results: list[object] = []
        done = threading.Event()
        committer = TurnCommitter(lambda: psycopg.connect(pg_store_url),
                                  lambda f, *a: f(*a),  # no reactor: fire in the thread
                                  pipelined=pipelined)
        read = committer.call(lambda conn: conn.execute("SELECT count(*) FROM alert")
                              .fetchone())
        read.addCallback(results.append)
        unit = (Statement("INSERT INTO alert (at, kind, severity, subject, text)"
                          " VALUES (1, 'k', 'warning', 'after the read', 't')"),)
        committed = committer.submit(grant, unit)
        committed.addCallback(lambda _: results.append(
            watch.execute("SELECT subject FROM alert").fetchall()))
        committed.addBoth(lambda _: done.set())
        assert done.wait(60)
        assert results == [(0,), [("after the read",)]]
        fenced: list[object] = []
        watch.execute("UPDATE lease SET epoch = epoch + 1")  # taken over
        done.clear()
        stale = committer.submit(grant, unit)
        stale.addErrback(lambda f: fenced.append(f.type))
        stale.addBoth(lambda _: done.set())
        assert done.wait(60)
        assert fenced == [Fenced]
        assert watch.execute("SELECT count(*) FROM alert").fetchone() == (1,)
        stopped = threading.Event()
        committer.close().addCallback(lambda _: stopped.set())
        assert stopped.wait(60)
