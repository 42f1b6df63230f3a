"""End-of-day operations as a new operator runs them (issue 20): export refuses to
overwrite or to export the future and warns on an open day; `eod watch --once` tells
by its exit code what it found and logs its start and stop; a corrected file replaces
an accepted one only with `--replace`, the first kept in accepted/superseded/; one
watcher per folder."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_eod import BANK, BOTH_STORES, BROKER, JOURNAL, NAME, XFER_ROWS, Env, store_url

from gateway.eod import export_command, watch_command
from gateway.eod.export import CST
from gateway.exitcodes import EXIT_FAILED, EXIT_USAGE

EXPORTED = "XFER_GW01_GTJA_20261125.txt"
#: A week after the test journal's trade date (2026-11-25), in Asia/Shanghai.
LATER = dt.datetime(2026, 12, 2, 10, 0, tzinfo=CST)


@pytest.fixture()
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Env:
    return Env(tmp_path, url=store_url(request))


@pytest.fixture()
def final_env(tmp_path: Path) -> Env:
    """The test journal with its one PENDING record (X5) left out: a closed day."""
    root = tmp_path / "closed"
    root.mkdir()
    return Env(root, [r for r in JOURNAL if r.state not in ("PENDING", "REVERSING")])


def console(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=120)


def drop(env: Env, source: Path) -> None:
    """Copy a signed file into the drop folder, as a counterparty delivers it."""
    shutil.copy(source, env.drop / source.name)
    shutil.copy(source.with_name(source.name + ".sig"), env.drop / (source.name + ".sig"))


# --- export ---------------------------------------------------------------------------------
def test_export_refuses_to_overwrite_a_signed_file_unless_forced(
        final_env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env, out = final_env, tmp_path / "out"
    assert export_command(env.home, "2026-11-25", "XFER", BROKER, out, now=LATER) == 0
    path = out / EXPORTED
    first = path.read_bytes()
    path.write_bytes(first.replace(b"100.50", b"100.51"))  # e.g. a copy edited by hand
    capsys.readouterr()
    assert export_command(env.home, "2026-11-25", "XFER", BROKER, out, now=LATER) \
        == EXIT_FAILED
    err = capsys.readouterr().err
    assert f"{EXPORTED} and {EXPORTED}.sig already in {out}" in err and "--force" in err
    assert path.read_bytes() != first  # untouched
    assert export_command(env.home, "2026-11-25", "XFER", BROKER, out, force=True,
                          now=LATER) == 0
    assert path.read_bytes().split(b"\n")[1:] == first.split(b"\n")[1:]  # H: created
    assert capsys.readouterr().err == ""  # a closed day: no warning


def test_export_refuses_a_future_trade_date(final_env: Env, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    late_evening = dt.datetime(2026, 11, 24, 17, 0, tzinfo=dt.UTC)  # 11-25 01:00 CST
    assert export_command(final_env.home, "2026-11-25", "XFER", BROKER, tmp_path,
                          now=late_evening) == 0  # today in Shanghai, though not in UTC
    capsys.readouterr()
    assert export_command(final_env.home, "2026-11-26", "XFER", BROKER, tmp_path / "f",
                          now=late_evening) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "2026-11-26 is after today's trade date 2026-11-25 (Asia/Shanghai)" in err
    assert not (tmp_path / "f").exists()


def test_export_warns_of_an_open_day_and_exits_0(
        env: Env, final_env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # X5 is still PENDING: left out of the file, said on stderr
    assert export_command(env.home, "2026-11-25", "XFER", BROKER, tmp_path / "a",
                          now=LATER) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "a" / EXPORTED)
    assert "1 XFER record(s) with GTJA of 2026-11-25 are still PENDING or REVERSING" in err
    assert "left out" in err and "--force" in err and "today's" not in err
    # the day is today: business still to come is not in the file
    today = dt.datetime(2026, 11, 25, 16, 0, tzinfo=CST)
    assert export_command(final_env.home, "2026-11-25", "XFER", BROKER, tmp_path / "b",
                          now=today) == 0
    err = capsys.readouterr().err
    assert "2026-11-25 is today's trade date (Asia/Shanghai) and still open" in err
    assert "PENDING" not in err


def test_console_export_help_shows_defaults_and_force(env: Env) -> None:
    run = console(env.home, "eod", "export", "--help")
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    assert "--out DIR folder to write it into, created 0700 if missing (default: . , the " \
           "current directory)" in text
    assert "--force replace a file of that name (and its .sig) already in --out (default: " \
           "refuse, exit 1)" in text
    run = console(env.home, "eod", "watch", "--help")
    text = " ".join(run.stdout.split())
    assert "(default 1)" in text and "--replace" in text and "0 every file accepted" in text


def test_console_export_twice_needs_force(final_env: Env, tmp_path: Path) -> None:
    args = ("eod", "export", "--date", "2026-11-25", "--type", "XFER", "--to", BROKER,
            "--out", str(tmp_path))
    assert console(final_env.home, *args).returncode == 0
    again = console(final_env.home, *args)
    assert again.returncode == 1 and "--force" in again.stderr and again.stdout == ""
    assert console(final_env.home, *args, "--force").returncode == 0


def test_console_export_refuses_the_future_and_warns_of_today(final_env: Env,
                                                               tmp_path: Path) -> None:
    """The same by the real clock, as an operator meets it."""
    today = dt.datetime.now(CST).date()
    args = ("eod", "export", "--type", "XFER", "--to", BROKER, "--out")
    future = console(final_env.home, *args, str(tmp_path / "f"), "--date",
                     str(today + dt.timedelta(days=2)))
    assert future.returncode == EXIT_USAGE and "after today's trade date" in future.stderr
    assert not (tmp_path / "f").exists()
    now = console(final_env.home, *args, str(tmp_path / "t"), "--date", str(today))
    if dt.datetime.now(CST).date() != today:
        pytest.skip("ran across midnight in Asia/Shanghai")
    assert now.returncode == 0 and now.stdout.strip().endswith(f"{today:%Y%m%d}.txt")
    assert f"warning: {today} is today's trade date (Asia/Shanghai) and still open" \
        in now.stderr


# --- watch: exit codes, start and stop ----------------------------------------------------
@BOTH_STORES
def test_watch_once_exit_code_tells_what_it_found(env: Env, tmp_path: Path) -> None:
    assert watch_command(env.home, env.drop, once=True) == 0  # nothing there
    env.write(XFER_ROWS)
    assert watch_command(env.home, env.drop, once=True) == 0  # accepted, reconciled
    env.write([["P1", "O1", "0000111122223333", "98.00", "S", "L2",
                "2026-11-25T10:00:00+08:00"]], "PAY")  # the amount differs
    assert watch_command(env.home, env.drop, once=True) == 3  # accepted, discrepancies
    (env.drop / "junk.txt").write_text("H|nothing\n")
    (env.drop / "junk.txt.sig").write_bytes(b"x")
    env.write(XFER_ROWS[1:], "XFER", BANK, BROKER)  # the same name again: a duplicate
    assert watch_command(env.home, env.drop, once=True) == 2
    (env.drop / "rejected").rename(tmp_path / "away")
    (env.drop / "rejected").symlink_to(tmp_path / "away")
    env.write(XFER_ROWS, "XFER", BANK, "HTSC")
    assert watch_command(env.home, env.drop, once=True) == 1  # could not sort anything


def test_watch_logs_its_start_options_and_its_stop_with_counts(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.write(XFER_ROWS[1:])  # X1 missing: discrepancies
    (env.drop / "junk.txt").write_text("H|nothing\n")
    (env.drop / "junk.txt.sig").write_bytes(b"x")
    assert watch_command(env.home, env.drop, once=True, replace=True) == 2
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"eod watch: started on {env.drop.resolve()} (home "
                        f"{env.home.resolve()}, journal "
                        f"{(env.home / 'data' / 'journal.sqlite3').resolve()}; one pass "
                        "(--once), replace on: a valid file "
                        "replaces an accepted one of its name)")
    assert lines[-1] == (f"eod watch: stopped on {env.drop.resolve()} (one pass done "
                         "(--once)): 2 file(s): 0 accepted, 1 accepted with discrepancies, "
                         "1 rejected, 0 replaced an accepted file; exit 2")
    assert len(lines) == 4


def test_console_watch_logs_the_signal_that_stopped_it(env: Env) -> None:
    env.write(XFER_ROWS)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--home", str(env.home), "eod",
                             "watch", str(env.drop), "--poll", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("eod watch: started on") and "every 0.1 s until" in first
        assert "replace off: a second file for an accepted day is rejected" in first
        assert proc.stdout.readline().startswith(f"{NAME}: accepted (exit 0)")
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0
    assert rest.strip() == (f"eod watch: stopped on {env.drop.resolve()} (SIGTERM): 1 file(s): "
                            "1 accepted, 0 accepted with discrepancies, 0 rejected, 0 replaced "
                            "an accepted file")


def test_a_second_watcher_on_a_folder_is_refused(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.eod.watch import hold_folder

    env.write(XFER_ROWS)
    held = hold_folder(env.drop)  # as a running watcher holds it
    try:
        assert watch_command(env.home, env.drop, once=True) == EXIT_FAILED
        err = capsys.readouterr().err
        assert f"another `gateway eod watch` is running on {env.drop}" in err
        assert "stop it first" in err and (env.drop / NAME).exists()
    finally:
        os.close(held)
    assert watch_command(env.home, env.drop, once=True) == 0


# --- a corrected file for an accepted day ----------------------------------------------------
def test_a_corrected_file_replaces_the_accepted_one_only_with_replace(
        env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    accepted = env.drop / "accepted"
    wrong = env.write(XFER_ROWS[1:], out=tmp_path / "v1")  # X1 forgotten
    right = env.write(XFER_ROWS, out=tmp_path / "v2")
    drop(env, wrong)
    assert watch_command(env.home, env.drop, once=True) == 3
    # without --replace the correction is a duplicate; the reason says what to do
    drop(env, right)
    assert watch_command(env.home, env.drop, once=True) == 2
    reason = json.loads((env.drop / "rejected" / (NAME + ".report.json")).read_text())["reason"]
    assert reason.startswith(f"duplicate: {NAME} was already accepted (accepted/{NAME})")
    assert f"gateway eod watch {env.drop} --once --replace" in reason
    assert (accepted / NAME).read_bytes() == wrong.read_bytes()
    # with --replace: checked, accepted in its place, the first one kept
    drop(env, right)
    capsys.readouterr()
    assert watch_command(env.home, env.drop, once=True, replace=True) == 0
    out = capsys.readouterr().out
    assert (f"{NAME}: accepted (exit 0) -> accepted; replaces the file accepted before, kept "
            f"in accepted/superseded/{NAME} with its reports") in out
    assert "1 replaced an accepted file" in out
    assert (accepted / NAME).read_bytes() == right.read_bytes()
    assert json.loads((accepted / (NAME + ".report.json")).read_text())["matched"] == 4
    kept = accepted / "superseded"
    assert (kept / NAME).read_bytes() == wrong.read_bytes()
    assert json.loads((kept / (NAME + ".report.json")).read_text())["missing_in_file"] == ["X1"]
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        NAME + s for s in ("", ".sig", ".report.json", ".report.txt"))
    assert oct(kept.stat().st_mode & 0o777) == "0o700"
    # a third version: the second one goes to the next slot, nothing is overwritten
    drop(env, wrong)
    assert watch_command(env.home, env.drop, once=True, replace=True) == 3
    assert (kept / "1" / NAME).read_bytes() == right.read_bytes()
    assert (kept / NAME).read_bytes() == wrong.read_bytes()
    assert (accepted / NAME).read_bytes() == wrong.read_bytes()


def test_an_invalid_replacement_is_rejected_and_the_accepted_file_stays(
        env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = env.write(XFER_ROWS, out=tmp_path / "v1")
    drop(env, first)
    assert watch_command(env.home, env.drop, once=True) == 0
    drop(env, first)
    (env.drop / NAME).write_bytes(first.read_bytes().replace(b"100.50", b"100.51"))
    capsys.readouterr()
    assert watch_command(env.home, env.drop, once=True, replace=True) == 2
    out = capsys.readouterr().out
    assert f"accepted/{NAME} stays the accepted file" in out and "legitimacy" in out
    assert (env.drop / "accepted" / NAME).read_bytes() == first.read_bytes()
    assert not (env.drop / "accepted" / "superseded").exists()


def test_a_replacement_with_discrepancies_raises_its_alert(env: Env, tmp_path: Path) -> None:
    """What follows a replacement is what follows any accepted file: its report, and
    its §10 alerts (journaled in the gateway's journal)."""
    drop(env, env.write(XFER_ROWS, out=tmp_path / "v1"))
    assert watch_command(env.home, env.drop, once=True) == 0
    drop(env, env.write(XFER_ROWS[:3], out=tmp_path / "v2"))
    assert watch_command(env.home, env.drop, once=True, replace=True) == 3
    alerts = sqlite3.connect(env.home / "data" / "journal.sqlite3").execute(
        "SELECT kind, subject, text FROM alert ORDER BY id").fetchall()
    assert [(k, s) for k, s, _ in alerts] == [("eod_discrepancy", NAME)]
    assert "missing_in_file 1 (X4)" in alerts[0][2]


def test_superseded_reports_stay_counted_by_the_gateway(env: Env, tmp_path: Path) -> None:
    """sbdx_eod_files_total is a counter: a file moved to superseded/ is still counted."""
    from gateway.metrics import EodReports

    drop(env, env.write(XFER_ROWS[1:], out=tmp_path / "v1"))
    watch_command(env.home, env.drop, once=True)
    reports = EodReports((env.drop,))
    assert [r.verdict for r in reports.results()] == ["discrepancies"]
    drop(env, env.write(XFER_ROWS, out=tmp_path / "v2"))
    watch_command(env.home, env.drop, once=True, replace=True)
    assert sorted(r.verdict for r in reports.results()) == ["accepted", "discrepancies"]


def test_the_watchers_start_line_names_a_postgresql_journal_never_its_password() -> None:
    from gateway.eod.commands import _journal_text

    assert _journal_text("postgresql://sbdx:secret@db.internal:5432/sbdx_gateway") == \
        "PostgreSQL sbdx_gateway on db.internal"
    assert _journal_text("postgresql://postgres@/postgres?host=/tmp/pg") == \
        "PostgreSQL postgres on /tmp/pg"
