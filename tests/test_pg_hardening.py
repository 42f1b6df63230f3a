"""PROTOCOL §12 edges of a gateway on PostgreSQL, as a real ``gateway serve`` process on a
throwaway cluster (tests/pg.py): a stop whose last commit is fenced, a database that
hangs (a lock held) while the gateway stops, and the ops API on a gateway that is not
the active one."""
from __future__ import annotations

import subprocess
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from conftest import BANK, GatewayHome, RunningGateway  # noqa: E402


def _use_postgres(home: GatewayHome, url: str, failover: float = 30.0, **journal: Any) -> None:
    home.write_config(relay_timeout_seconds=2.0)
    extra = "".join(f"{k} = {v}\n" for k, v in journal.items())
    with (home.root / "gateway.toml").open("a", encoding="utf-8") as f:
        f.write(f'[journal]\nurl = "{url}"\nfailover_seconds = {failover}\n{extra}')


def _take_the_lease(url: str) -> None:
    """What a standby's takeover does to the row: another holder, the next epoch."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE lease SET holder = 'the-other-gateway', epoch = epoch + 1,"
                     " expires_at = clock_timestamp() + interval '1 hour'")


def test_a_fenced_commit_stands_by_and_a_later_stop_is_an_ordered_stop(
        pg_url: str, home: GatewayHome, start_gateway: Any) -> None:
    """The lease taken over behind the active's back (the row changed between two
    renewals of a long failover_seconds): its next commit is refused by the fence, it
    stands by and keeps running.  Its journal never failed, so SIGTERM then is an ordered
    stop: exit 0 — not 1 with "stopped because the journal could not be committed",
    which a supervisor would take for a broken database."""
    _use_postgres(home, pg_url)
    gw = start_gateway()
    gw.wait_for_log(r"active: lease epoch 1 taken")
    bank = gw.peer(BANK).open_session()
    _take_the_lease(pg_url)
    bank.send("SYS.ECHO.REQ", [("Text", "after the takeover")])
    gw.wait_for_log(r"standing by: 1 session\(s\) cut")
    code = gw.stop()
    log = gw.log_text()
    assert code == 0, log
    assert "a journal commit was fenced" in log and "could not be committed" not in log, log
    assert "Traceback" not in log and "gateway stopped" in log, log
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT holder, epoch FROM lease").fetchone() == (
            "the-other-gateway", 2)


def test_a_database_that_hangs_turns_into_errors_and_the_gateway_never_hangs(
        pg_url: str, home: GatewayHome) -> None:
    """A database that hangs rather than goes away — here the lease table locked by
    another session — makes every statement that touches it wait: the renewal, the
    fence of the next commit, the release at a stop.  With ``[journal]
    statement_timeout_seconds`` (PostgreSQL's statement_timeout and lock_timeout on the
    gateway's connections) each fails after it instead: the commit that cannot be made
    stops the gateway as any failed commit does (exit 1, the standby takes over), and
    the release it tries on the way out fails and is logged.  Without the bound the
    first commit held the reactor thread for as long as the lock was held, and SIGTERM
    could not stop it."""
    _use_postgres(home, pg_url, failover=5.0, statement_timeout_seconds=1)
    gw = RunningGateway(home)
    try:
        gw.wait_for_log(r"active: lease epoch 1 taken")
        with psycopg.connect(pg_url) as hog:  # a transaction holding the lock
            hog.execute("LOCK TABLE lease IN ACCESS EXCLUSIVE MODE")
            try:
                code = gw.proc.wait(15)  # a commit is due within a second (monitoring)
            except subprocess.TimeoutExpired:
                code = gw.stop(timeout=15)
        log = gw.log_text()
        assert code == 1, log
        assert "journal flush failed; stopping" in log, log
        assert "canceling statement due to statement timeout" in log, log
        assert "releasing the lease failed" in log and "gateway stopped" in log, log
    finally:
        gw.kill()
