"""The issue-8 benchmark tools run end to end (tiny runs; nothing here times anything).

The figures themselves are measured by hand and written to docs/BENCHMARKS.md; these
tests only keep the tools working: the rig of three processes with its exactly-once
and ledger checks, the journal join of bench/hops.py, the in-process harness."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench(*args: str, tmp: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run a bench tool with its temporary folders under ``tmp``; on a hang, kill it
    and every process it started (the gateway and the sims), not the tool alone."""
    proc = subprocess.Popen([sys.executable, str(BENCH / args[0]), *args[1:]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmp)}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_relay_rig_runs_and_its_checks_pass_then_hops_reads_its_journals(
        tmp_path: Path) -> None:
    out = _bench("relay.py", "--closed-only", "--seconds", "1", "--warmup", "0.5", "--keep",
                 "--json", str(tmp_path / "relay.json"), tmp=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    kept = Path(re.search(r"kept (\S+)", out.stderr).group(1))  # type: ignore[union-attr]
    assert kept.parent == tmp_path  # the run folder, like the floor's, is under tmp_path
    report = json.loads((tmp_path / "relay.json").read_text())
    run, = report["runs"]
    checks = run["checks"]
    assert checks["ok"] and checks["sent"] > 0, checks
    assert checks["sent"] == checks["answered_0000"] == checks["journal_succeeded"]
    assert checks["relayed_twice"] == 0 and checks["answered_twice_by_gateway"] == 0
    assert checks["wallet_moved_fen"] == checks["wallet_expected_fen"] > 0
    assert set(run["results"]) == {"0000"} and run["errors_in_logs"] == 0
    assert run["gateway_cpu_us_per_rt"] > 0 and report["floors"]["FULL"]["round_trip_us"] > 0
    for who in ("gateway", "bank"):  # both journals closed and logged their totals
        assert run["commits"][who]["commits"] > 0, run["commits"]
    hops = _bench("hops.py", str(kept), "--skip", "0", tmp=tmp_path)
    assert hops.returncode == 0, hops.stdout + hops.stderr
    assert re.match(r"\d+ round trips: p50 ", hops.stdout), hops.stdout
    for segment in ("broker → gateway", "gateway → bank", "bank → gateway",
                    "gateway → broker"):
        assert segment in hops.stdout
    leftovers = {p.name.split("-")[1] for p in tmp_path.iterdir() if p.name.startswith("sbdx-")}
    assert leftovers == {"bench"}, leftovers  # only the kept run: the floor cleaned up


def test_hops_says_what_is_missing_in_a_folder_that_is_no_kept_run(tmp_path: Path) -> None:
    out = _bench("hops.py", str(tmp_path), tmp=tmp_path)
    assert out.returncode == 2
    assert "no journal at" in out.stderr and "Traceback" not in out.stderr


def test_the_in_process_harness_relays_round_trips(tmp_path: Path) -> None:
    out = _bench("relay_inproc.py", "--round-trips", "40", "--batch", "4", tmp=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["round_trips"] == 40 and result["gateway_cpu_us_per_rt"] > 0
    assert not any(tmp_path.iterdir())  # its journal folder removed


def test_wal_pages_names_the_btrees_a_commit_writes(tmp_path: Path) -> None:
    out = _bench("wal_pages.py", "--round-trips", "20", tmp=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "frames per commit" in out.stdout and " message" in out.stdout, out.stdout
    assert not any(tmp_path.iterdir())  # its journal folder removed


def test_the_relay_rig_journals_to_a_throwaway_postgresql_and_stops_it(
        tmp_path: Path) -> None:
    """``--store postgresql`` (issue 21): the gateway's journal is a fresh PostgreSQL
    database on a cluster the bench starts and removes; the exactly-once checks read it."""
    import pytest

    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    import pgcluster

    if pgcluster.find_bindir() is None:
        pytest.skip("no PostgreSQL server binaries: install Debian's `postgresql` package")
    out = _bench("relay.py", "--store", "postgresql", "--closed-only", "--seconds", "1",
                 "--warmup", "0.5", "--keep", "--json", str(tmp_path / "relay.json"),
                 tmp=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / "relay.json").read_text())
    run, = report["runs"]
    assert run["store"] == "postgresql" and run["checks"]["ok"], run["checks"]
    assert run["checks"]["sent"] == run["checks"]["journal_succeeded"] > 0
    assert run["postgres_cpu_us_per_rt"] > 0 and run["commits"]["gateway"]["commits"] > 0
    assert "synchronous_commit on" in report["journal_server"]
    kept = Path(re.search(r"kept (\S+)", out.stderr).group(1))  # type: ignore[union-attr]
    assert not (kept / "gw" / "data" / "journal.sqlite3").exists()  # no SQLite journal
    cluster = Path(re.search(r"PostgreSQL cluster in (\S+)", out.stderr).group(1))  # type: ignore[union-attr]
    assert not cluster.exists()  # stopped and removed


def test_the_relay_rig_refuses_sqlite_only_options_with_postgresql(tmp_path: Path) -> None:
    out = _bench("relay.py", "--store", "postgresql", "--durability", tmp=tmp_path)
    assert out.returncode == 2 and "use them with --store sqlite" in out.stderr
    assert "Traceback" not in out.stderr
