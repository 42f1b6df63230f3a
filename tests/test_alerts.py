"""PROTOCOL §10 alerts: the ``[alerts]`` thresholds, each kind raised (events once per
event, states once until cleared), journaled, logged, and handed to ``[alerts] command``
as one JSON line on stdin within 5 s — without ever holding up the relay.

The money and queue kinds run through a real gateway process on loopback with a command
that appends its stdin to a file; eod_* and overdraft through ``gateway eod check`` and
``gateway eod watch``; the core (thresholds, totals, restarts, the command runner) is also
driven directly."""
from __future__ import annotations

import json
import logging
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.alertrules import AlertSettings, AlertSettingsError, Monitor, parse_settings
from gateway.alerts import Alert, AlertCommand, Alerts
from gateway.journal import Journal, Record, Reversal

from conftest import BANK, BROKER, GatewayHome
from flows import FAST_REVERSALS, FUND, call, signed, xfer

#: §10: the command has the alert within this many seconds of the event.
WITHIN = 5.0
DAY = "2026-12-02"


# --- helpers --------------------------------------------------------------------------------
def recorder(tmp_path: Path, name: str = "alerts.jsonl", body: str = 'cat >> "$1"') -> list[str]:
    """An alert command (as argv) that appends its stdin to a file; argv[-1] is the file."""
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script), str(tmp_path / name)]


def received(path: Path | str) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def wait_for(path: Path | str, match: Callable[[dict[str, Any]], bool], count: int = 1,
             within: float = WITHIN) -> list[dict[str, Any]]:
    """Alerts the command wrote that ``match``, once there are ``count`` (else fail)."""
    deadline = time.monotonic() + within
    while True:
        found = [a for a in received(path) if match(a)]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{count} alert(s) expected, got {received(path)}"
            return found
        time.sleep(0.05)


def kind(name: str, subject: str | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda a: a["kind"] == name and (subject is None or a["subject"] == subject)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str | list):
        return json.dumps(value)
    return str(value)


def write_config(home: GatewayHome, gateway: dict[str, Any], alerts: dict[str, Any]) -> None:
    lines = ["[gateway]", *(f"{k} = {toml_value(v)}" for k, v in gateway.items()),
             "", "[alerts]", *(f"{k} = {toml_value(v)}" for k, v in alerts.items())]
    (home.root / "gateway.toml").write_text("\n".join(lines) + "\n")


def journaled(home: Path, kind_: str) -> list[tuple[str, str]]:
    db = sqlite3.connect(home / "data" / "journal.sqlite3")
    try:
        return db.execute("SELECT severity, subject FROM alert WHERE kind=? ORDER BY id",
                          (kind_,)).fetchall()
    finally:
        db.close()


def transfer(broker: Any, bank: Any, biz_sn: str, amount: str, msg_type: str = "XFER.IN.REQ",
             result: str = "0000") -> float:
    """One relayed transfer answered by the bank; when the broker had its answer."""
    rsp = call(broker, msg_type, xfer(biz_sn, amount=amount), bank=bank, result=result)
    assert rsp.body["Result"] == result, rsp.body
    return time.monotonic()


# --- [alerts] table ----------------------------------------------------------------------------
def test_alerts_table_values_are_checked_and_money_kept_in_fen() -> None:
    s = parse_settings({"xfer_single_max": "5000.00", "xfer_daily_max": "12345.6",
                        "pair_daily_max": "7", "commit_slow_seconds": 0.5,
                        "reversal_age_max_seconds": 60, "command": "/opt/notify --to 'ops desk'"})
    assert (s.xfer_single_max, s.xfer_daily_max, s.pair_daily_max) == (500000, 1234560, 700)
    assert s.commit_slow_seconds == 0.5 and s.reversal_age_max_seconds == 60.0
    assert s.command == ("/opt/notify", "--to", "ops desk")
    assert parse_settings({"command": ["/opt/notify", "a b"]}).command == ("/opt/notify", "a b")
    defaults = parse_settings({})
    assert defaults.xfer_single_max is None and defaults.command == ()
    assert defaults.reversal_age_max_seconds == 300 and defaults.commit_slow_seconds == 1
    assert defaults.peer_down_seconds == 60 and defaults.command_timeout_seconds == 10
    bad: list[tuple[dict[str, Any], str]] = [
        ({"xfer_single_max": 5000}, "xfer_single_max must be an amount in yuan"),
        ({"xfer_daily_max": "5000.001"}, "xfer_daily_max"),
        ({"pair_daily_max": "-1.00"}, "pair_daily_max"),
        ({"xfer_single_max": "1e6"}, "xfer_single_max"),
        ({"commit_slow_seconds": 0}, "commit_slow_seconds must be a positive number"),
        ({"reversal_age_max_seconds": "300"}, "reversal_age_max_seconds"),
        ({"peer_down_seconds": True}, "peer_down_seconds"),
        ({"command": 7}, "command must be a string"),
        ({"command": "'unclosed"}, "command"),
        ({"xfer_singel_max": "1.00"}, "xfer_singel_max: unknown setting"),
    ]
    for table, said in bad:
        with pytest.raises(AlertSettingsError, match=said):
            parse_settings(table)


def test_serve_with_a_bad_alerts_value_exits_1_with_one_line(home: GatewayHome) -> None:
    write_config(home, {}, {"xfer_single_max": 5000})
    run = subprocess.run([sys.executable, "-m", "gateway", "--home", str(home.root), "serve",
                          "--listen", "127.0.0.1:0"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 1, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "[alerts] xfer_single_max must be an amount" in lines[0], lines
    assert "Traceback" not in run.stderr


# --- the core, driven directly -----------------------------------------------------------------
class Core:
    """A journal, its Alerts and a Monitor with a clock and trade date the test sets."""

    def __init__(self, path: Path, settings: AlertSettings, day: str = DAY) -> None:
        self.now, self.day = 1_796_000_000.0, day
        self.journal = Journal(path)
        self.alerts = Alerts(self.journal, lambda: self.now)
        self.heard: list[Alert] = []
        self.alerts.listeners.append(self.heard.append)
        self.monitor = Monitor(self.alerts, self.journal, lambda: self.day, settings)
        self.journal.flush()

    def settle(self, biz_sn: str, fen: int, state: str = "SUCCEEDED", biz_type: str = "XFER.IN",
               fund: str = FUND, origin: str = BROKER, receiver: str = BANK) -> Record:
        rec = Record(origin=origin, biz_type=biz_type, biz_sn=biz_sn, receiver=receiver,
                     msg_id="M" + biz_sn, content_hash="h", state="PENDING",
                     trade_date=self.day, amount_fen=fen, fund_acct=fund, wallet_id="W")
        self.journal.insert_record(rec, self.now)
        self.journal.update_record(rec.key, self.now, state=state,
                                   result="0000" if state == "SUCCEEDED" else "B399")
        self.monitor.transfer_settled(rec, state)
        self.journal.flush()
        return rec

    def kinds(self) -> list[tuple[str, str]]:
        return [(a.kind, a.subject) for a in self.heard]


def money(**kw: str) -> AlertSettings:
    return parse_settings(kw)


def test_xfer_amount_fires_for_each_succeeded_transfer_above_the_maximum(tmp_path: Path) -> None:
    core = Core(tmp_path / "j.sqlite3", money(xfer_single_max="1000.00"))
    core.settle("GTJA1", 100000)  # equal: not above
    core.settle("GTJA2", 100001)
    core.settle("GTJA3", 900000, state="FAILED")  # moved nothing
    core.settle("GTJA4", 200000, biz_type="XFER.OUT")
    core.settle("GTJA5", 200000, biz_type="PAY.ORDER")  # not a transfer
    assert core.kinds() == [("xfer_amount", "GTJA/GTJA2"), ("xfer_amount", "GTJA/GTJA4")]
    assert "1000.01 CNY, above xfer_single_max 1000.00" in core.heard[0].text
    assert [row[1] for row in core.journal.alerts()] == ["xfer_amount"] * 2
    unset = Core(tmp_path / "k.sqlite3", AlertSettings())  # unset: no check
    unset.settle("GTJA9", 10**12)
    assert unset.heard == []


def test_daily_totals_are_gross_raised_once_per_trade_date_and_clear_with_it(
        tmp_path: Path) -> None:
    core = Core(tmp_path / "j.sqlite3", money(xfer_daily_max="1000.00",
                                              pair_daily_max="1500.00"))
    core.settle("GTJA1", 60000)
    core.settle("CCB2", 50000, biz_type="XFER.OUT", origin=BANK, receiver=BROKER)  # 1100: over
    core.settle("GTJA3", 10000)  # already crossed: not again
    core.settle("GTJA4", 40000, fund="999")  # the pair: 1600 > 1500
    core.settle("GTJA5", 90000, state="FAILED")  # not SUCCEEDED: not counted
    fund, pair = f"FundAcct {FUND} {DAY}", f"pair CCB/GTJA {DAY}"
    assert core.kinds() == [("xfer_daily_total", fund), ("xfer_daily_total", pair)]
    assert "total 1100.00 CNY (IN plus OUT), above xfer_daily_max 1000.00" in core.heard[0].text
    assert set(core.alerts.open) == {("xfer_daily_total", fund), ("xfer_daily_total", pair)}
    core.day = "2026-12-03"  # a new trade date: both clear, and count from zero
    core.monitor.tick(core.now)
    assert core.alerts.open == {}
    core.settle("GTJA6", 90000)
    assert len(core.heard) == 2
    core.settle("GTJA7", 20000)
    assert core.kinds()[-1] == ("xfer_daily_total", f"FundAcct {FUND} 2026-12-03")


def test_a_reversed_transfer_no_longer_counts(tmp_path: Path) -> None:
    core = Core(tmp_path / "j.sqlite3", money(xfer_daily_max="1000.00"))
    first = core.settle("GTJA1", 80000)
    core.journal.update_record(first.key, core.now, state="REVERSED")
    core.monitor.transfer_reversed(first.key)
    core.monitor.transfer_reversed(first.key)  # told twice: taken off once
    core.settle("GTJA2", 80000)
    assert core.heard == []
    assert core.monitor.day_totals()["fund"] == {FUND: 80000}
    core.settle("GTJA3", 30000)
    assert core.kinds() == [("xfer_daily_total", f"FundAcct {FUND} {DAY}")]


def test_a_restart_keeps_the_totals_and_does_not_raise_a_crossed_total_again(
        tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    core = Core(path, money(xfer_daily_max="1000.00"))
    core.settle("GTJA1", 120000)
    assert len(core.heard) == 1
    core.journal.close()
    again = Core(path, money(xfer_daily_max="1000.00"))  # the restart
    assert again.monitor.day_totals()["fund"] == {FUND: 120000}
    assert again.heard == [] and ("xfer_daily_total", f"FundAcct {FUND} {DAY}") in again.alerts.open
    again.settle("GTJA2", 100)
    assert again.heard == [] and len(again.journal.alerts()) == 1
    again.journal.close()
    # a threshold lowered while it was down: the total above it is news, raised at start
    lower = Core(path, money(xfer_daily_max="1000.00", pair_daily_max="500.00"))
    assert lower.kinds() == [("xfer_daily_total", f"pair CCB/GTJA {DAY}")]


def test_lowering_a_threshold_on_reload_raises_totals_already_above_it(tmp_path: Path) -> None:
    core = Core(tmp_path / "j.sqlite3", AlertSettings())
    core.settle("GTJA1", 70000)
    core.monitor.reload({"xfer_daily_max": "600.00"})
    core.journal.flush()
    assert core.kinds() == [("xfer_daily_total", f"FundAcct {FUND} {DAY}")]
    core.monitor.reload({"xfer_daily_max": 600})  # bad: the settings in use are kept
    assert core.monitor.settings.xfer_daily_max == 60000


def test_journal_slow_is_raised_once_and_cleared_by_a_normal_commit(tmp_path: Path) -> None:
    core = Core(tmp_path / "j.sqlite3", parse_settings({"commit_slow_seconds": 0.5}))
    core.journal.commit_listeners.clear()  # only the times below: this journal is fast
    for spent in (0.6, 0.9, 2.0):
        core.monitor.commit_timed(spent)
        core.journal.flush()
    assert core.kinds() == [("journal_slow", "journal")]
    core.monitor.commit_timed(0.01)
    assert core.alerts.open == {}
    core.monitor.commit_timed(0.7)
    core.journal.flush()
    assert core.kinds() == [("journal_slow", "journal")] * 2
    assert "took 0.70 s (commit_slow_seconds 0.5)" in core.heard[1].text


def test_the_journal_tells_the_monitor_each_commit_time(tmp_path: Path) -> None:
    """commit_slow_seconds tiny: every real commit is over it (Journal.flush times them)."""
    core = Core(tmp_path / "j.sqlite3", parse_settings({"commit_slow_seconds": 1e-9}))
    core.journal.log_message(core.now, "IN", "S1", BANK, "SYS.ECHO.REQ", "M1", None, b"e", b"x")
    core.journal.flush()  # a real commit: slow, raised (journaled in the next)
    core.journal.flush()
    assert core.kinds() == [("journal_slow", "journal")]


def queue_reversal(journal: Journal, biz_sn: str, queued_at: float) -> tuple[str, str, str]:
    journal.queue_reversal(Reversal(origin=BROKER, biz_type="XFER.IN", biz_sn=biz_sn,
                                    receiver=BANK, reversal_sn="GW01R" + biz_sn,
                                    amount_fen=100, state="QUEUED", attempts=1,
                                    next_at=queued_at, last_msg_id=None, result=None,
                                    queued_at=queued_at))
    return (BROKER, "XFER.IN", biz_sn)


def test_reversal_backlog_raised_once_cleared_when_acknowledged_not_again_after_restart(
        tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    core = Core(path, parse_settings({"reversal_age_max_seconds": 60}))
    key = queue_reversal(core.journal, "GTJA1", core.now)
    for step in (30, 31, 5, 5, 5):  # older than 60 s from 61 s on
        core.now += step
        core.monitor.tick(core.now)
        core.journal.flush()
    assert core.kinds() == [("reversal_backlog", "reversal queue")]
    assert "1 reversal(s) queued and unacknowledged, the oldest for 61 s" in core.heard[0].text
    core.journal.close()
    again = Core(path, parse_settings({"reversal_age_max_seconds": 60}))  # a restart
    again.now = core.now + 10
    again.monitor.tick(again.now)
    again.journal.flush()
    assert again.heard == [] and ("reversal_backlog", "reversal queue") in again.alerts.open
    again.journal.update_reversal(key, state="DONE", result="0000")
    again.now += 1
    again.monitor.tick(again.now)
    assert again.alerts.open == {}
    queue_reversal(again.journal, "GTJA2", again.now)
    again.now += 61
    again.monitor.tick(again.now)
    again.journal.flush()
    assert again.kinds() == [("reversal_backlog", "reversal queue")]


def test_an_alert_rolled_back_with_its_message_is_never_announced(tmp_path: Path) -> None:
    core = Core(tmp_path / "j.sqlite3", AlertSettings())
    with pytest.raises(RuntimeError), core.journal.savepoint():
        core.alerts.raise_state("reversal_backlog", "critical", "reversal queue", "x")
        raise RuntimeError("the message failed half-way")
    core.journal.flush()
    assert core.heard == [] and core.journal.alerts() == [] and core.alerts.open == {}


# --- the command runner --------------------------------------------------------------------------
def alert(n: int) -> Alert:
    return Alert("xfer_amount", "warning", f"GTJA/GTJA{n}", f"张三 {n}", 1_796_000_000.0 + n)


def test_every_alert_of_a_burst_reaches_the_command_as_one_json_line(tmp_path: Path) -> None:
    argv = recorder(tmp_path)
    command = AlertCommand(argv, timeout=10)
    started = time.monotonic()
    for n in range(30):
        command(alert(n))
    got = wait_for(argv[-1], kind("xfer_amount"), 30)
    assert time.monotonic() - started < WITHIN
    assert sorted(a["subject"] for a in got) == sorted(f"GTJA/GTJA{n}" for n in range(30))
    assert set(got[0]) >= {"kind", "severity", "subject", "time", "text"}
    assert got[0]["time"].endswith("+08:00") and "张三" in next(
        a["text"] for a in got if a["subject"] == "GTJA/GTJA0")
    assert command.close(5)


def test_a_hanging_command_is_killed_and_a_failing_one_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "gateway.alerts")
    hang = AlertCommand(recorder(tmp_path, "hang", "sleep 60"), timeout=0.5)
    started = time.monotonic()
    hang(alert(1))
    assert time.monotonic() - started < 0.1  # the caller never waits
    assert hang.close(5) and time.monotonic() - started < 3
    assert "killed after 0.5 s (alert xfer_amount GTJA/GTJA1)" in caplog.text
    fail = AlertCommand(recorder(tmp_path, "fail", "echo 'no route to pager' >&2; exit 3"))
    fail(alert(2))
    assert fail.close(5)
    assert "exited 3: no route to pager (alert xfer_amount GTJA/GTJA2)" in caplog.text
    missing = AlertCommand([str(tmp_path / "nowhere")])
    missing(alert(3))
    assert missing.close(5)
    assert "cannot run" in caplog.text


# --- through a real gateway ------------------------------------------------------------------------
def test_transfer_alerts_reach_the_command_within_5s_once_and_not_again_after_restart(
        start_gateway: Any, home: GatewayHome, tmp_path: Path) -> None:
    argv = recorder(tmp_path)
    out = argv[-1]
    write_config(home, {}, {"command": argv, "xfer_single_max": "1000.00",
                            "xfer_daily_max": "1500.00", "pair_daily_max": "2500.00"})
    gw = start_gateway()
    bank, broker = gw.peer(BANK).open_session(), gw.peer(BROKER).open_session()
    signed(bank, broker)
    transfer(broker, bank, "GTJAT1", "800.00")
    answered = transfer(broker, bank, "GTJAT2", "1200.00", "XFER.OUT.REQ")
    [big] = wait_for(out, kind("xfer_amount"))
    [fund] = wait_for(out, kind("xfer_daily_total"))
    assert time.monotonic() - answered < WITHIN
    assert big["subject"] == "GTJA/GTJAT2" and big["severity"] == "warning"
    assert fund["subject"].startswith(f"FundAcct {FUND} ") and "2000.00 CNY" in fund["text"]
    transfer(broker, bank, "GTJAT3", "600.00")  # fund again over: not raised again
    transfer(broker, bank, "GTJAT4", "9000.00", result="B399")  # failed: nothing
    [pair] = wait_for(out, kind("xfer_daily_total"), 2)[1:]
    assert pair["subject"].startswith("pair CCB/GTJA ") and "2600.00 CNY" in pair["text"]
    gw.wait_for_log(r"ALERT \{\"kind\": \"xfer_daily_total\"")
    time.sleep(0.5)
    # the command runs on a pool of workers: alerts reach it in any order
    assert sorted(a["kind"] for a in received(out)) == ["xfer_amount", "xfer_daily_total",
                                                        "xfer_daily_total"]
    assert len(journaled(home.root, "xfer_daily_total")) == 2
    bank.close(), broker.close()
    assert gw.stop() == 0
    again = start_gateway()  # a restart: the totals are the journal's, nothing re-raised
    bank, broker = again.peer(BANK).open_session(), again.peer(BROKER).open_session()
    transfer(broker, bank, "GTJAT5", "100.00")
    time.sleep(1.0)
    assert len(received(out)) == 3 and len(journaled(home.root, "xfer_daily_total")) == 2
    bank.close(), broker.close()


def test_a_transfer_reversed_by_the_broker_leaves_the_daily_total(
        start_gateway: Any, home: GatewayHome, tmp_path: Path) -> None:
    argv = recorder(tmp_path)
    write_config(home, {}, {"command": argv, "xfer_daily_max": "1000.00"})
    gw = start_gateway()
    bank, broker = gw.peer(BANK).open_session(), gw.peer(BROKER).open_session()
    signed(bank, broker)
    transfer(broker, bank, "GTJAT1", "800.00")
    rev = [("BizSn", "GTJAV1"), ("OrigType", "XFER.IN"), ("OrigFrom", BROKER),
           ("OrigBizSn", "GTJAT1"), ("Amount", "800.00")]
    assert call(broker, "XFER.REVERSE.REQ", rev, bank=bank, BankSn="RV1").body["Result"] == "0000"
    transfer(broker, bank, "GTJAT2", "800.00")  # 800.00 counts, not 1600.00
    time.sleep(0.5)
    assert received(argv[-1]) == []
    transfer(broker, bank, "GTJAT3", "300.00")
    [raised] = wait_for(argv[-1], kind("xfer_daily_total"))
    assert "1100.00 CNY" in raised["text"]
    bank.close(), broker.close()


def test_sighup_changes_a_threshold_keeps_sessions_and_a_bad_value_keeps_the_old(
        start_gateway: Any, home: GatewayHome, tmp_path: Path) -> None:
    """journal_slow through reloads: raised (every commit over 1 ns), cleared after a
    normal commit once the threshold is 60 s, not raised while a bad table is refused,
    raised again at 1 ns — all on the same two sessions."""
    argv = recorder(tmp_path)
    out = argv[-1]
    write_config(home, {}, {"command": argv, "commit_slow_seconds": 1e-9})
    gw = start_gateway()
    bank, broker = gw.peer(BANK).open_session(), gw.peer(BROKER).open_session()
    signed(bank, broker)
    [first] = wait_for(out, kind("journal_slow", "journal"))
    assert first["severity"] == "warning" and "commit_slow_seconds 1e-09" in first["text"]

    def reload(alerts: dict[str, Any], logged: str) -> None:
        write_config(home, {}, alerts)
        gw.log.clear()
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_for_log(logged)

    reload({"command": argv, "commit_slow_seconds": 60}, r"2 session\(s\) kept")
    transfer(broker, bank, "GTJAT1", "10.00")
    gw.wait_for_log("alert journal_slow journal cleared")
    reload({"command": argv, "commit_slow_seconds": "fast"},
           r"SIGHUP: \[alerts\] commit_slow_seconds must be a positive number .*kept")
    transfer(broker, bank, "GTJAT2", "10.00")
    time.sleep(0.5)
    assert len(received(out)) == 1  # 60 s still in force
    reload({"command": argv, "commit_slow_seconds": 1e-9}, "SIGHUP")
    transfer(broker, bank, "GTJAT3", "10.00")
    wait_for(out, kind("journal_slow"), 2)
    transfer(broker, bank, "GTJAT4", "10.00")  # the same sessions throughout
    assert "closed" not in "".join(line for line in gw.log if "session" in line)
    bank.close(), broker.close()


def test_reversal_backlog_raised_once_and_cleared_when_the_bank_acknowledges(
        start_gateway: Any, home: GatewayHome, tmp_path: Path) -> None:
    argv = recorder(tmp_path)
    out = argv[-1]
    write_config(home, FAST_REVERSALS, {"command": argv, "reversal_age_max_seconds": 1.5})
    gw = start_gateway()
    bank, broker = gw.peer(BANK).open_session(), gw.peer(BROKER).open_session()
    signed(bank, broker)
    msg_id = broker.send("XFER.IN.REQ", xfer("GTJAT1", amount="250.00"), to=BANK)
    bank.recv("XFER.IN.REQ")  # never answered: B330, a queued reversal
    assert broker._answer_to(msg_id, "XFER.IN.REQ").body["Result"] == "B330"
    rev = bank.recv("XFER.REVERSE.REQ", timeout=5)  # not acknowledged for a while
    [raised] = wait_for(out, kind("reversal_backlog"), within=WITHIN + 1.5)
    assert raised["severity"] == "critical" and raised["subject"] == "reversal queue"
    time.sleep(1.5)  # still queued: not raised again
    assert len([a for a in received(out) if a["kind"] == "reversal_backlog"]) == 1
    bank.send("XFER.REVERSE.RSP", [("Result", "0000"), ("ResultText", "reversed"),
                                   ("BizSn", rev.body["BizSn"])], to="GW01",
              ref=rev.head("MsgId"))
    gw.wait_for_log("alert reversal_backlog reversal queue cleared")
    bank.close(), broker.close()


def test_a_hanging_or_failing_command_does_not_delay_relayed_transfers(
        start_gateway: Any, home: GatewayHome, tmp_path: Path) -> None:
    hang = recorder(tmp_path, "hang", "sleep 60")
    write_config(home, {}, {"command": hang, "command_timeout_seconds": 2,
                            "xfer_single_max": "0.00"})  # every transfer is an alert
    gw = start_gateway()
    bank, broker = gw.peer(BANK).open_session(), gw.peer(BROKER).open_session()
    signed(bank, broker)
    times = []
    for n in range(12):  # 3 times the command's workers, all of them stuck
        started = time.monotonic()
        transfer(broker, bank, f"GTJAH{n}", "1.00")
        times.append(time.monotonic() - started)
    assert max(times) < 1.0, times
    gw.wait_for_log(r"alert command .*hang\.sh killed after 2 s \(alert xfer_amount GTJA/GTJAH0\)")
    fail = recorder(tmp_path, "fail", "echo 'pager down' >&2; exit 5")
    write_config(home, {}, {"command": fail, "xfer_single_max": "0.00"})
    gw.proc.send_signal(signal.SIGHUP)
    gw.wait_for_log("SIGHUP")
    started = time.monotonic()
    transfer(broker, bank, "GTJAF1", "1.00")
    assert time.monotonic() - started < 1.0
    gw.wait_for_log(r"fail\.sh exited 5: pager down \(alert xfer_amount GTJA/GTJAF1\)",
                    timeout=30)
    bank.close(), broker.close()


# --- eod_rejected, eod_discrepancy, overdraft: the eod commands' own process ---------------------
@pytest.fixture()
def eod(tmp_path: Path) -> Any:
    import test_eod

    env = test_eod.Env(tmp_path)
    argv = recorder(tmp_path)
    (env.home / "gateway.toml").write_text(f"[alerts]\ncommand = {json.dumps(argv)}\n")
    env.out = argv[-1]  # type: ignore[attr-defined]
    return env


def console(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=120)


def test_eod_check_raises_rejected_discrepancy_and_overdraft(eod: Any) -> None:
    import test_eod

    clean = eod.write(test_eod.XFER_ROWS)
    assert console(eod.home, "eod", "check", str(clean), "--json").returncode == 0
    assert received(eod.out) == []  # a clean file is no alert
    discrepant = eod.write(test_eod.XFER_ROWS[1:])
    run = console(eod.home, "eod", "check", str(discrepant), "--json")
    assert run.returncode == 3 and json.loads(run.stdout)["missing_in_file"] == ["X1"]
    [found] = received(eod.out)  # there before the command exited
    assert found["kind"] == "eod_discrepancy" and found["subject"] == discrepant.name
    assert "missing_in_file 1 (X1)" in found["text"] and found["severity"] == "critical"
    assert 'ALERT {"kind": "eod_discrepancy"' in run.stderr
    discrepant.with_name(discrepant.name + ".sig").write_bytes(b"\x00" * 70)
    run = console(eod.home, "eod", "check", str(discrepant))
    assert run.returncode == 2
    rejected = received(eod.out)[-1]
    assert rejected["kind"] == "eod_rejected" and "legitimacy" in rejected["text"]
    rows = [[test_eod.FUND, test_eod.WALLET, "500.00"], ["2234567890", "0000111122224444", "-12.00"]]
    bal = eod.write(rows, "BAL", BROKER, BANK, eod.broker)
    assert console(eod.home, "eod", "check", str(bal)).returncode == 0  # the file is valid
    overdraft = received(eod.out)[-1]
    assert overdraft["kind"] == "overdraft" and overdraft["subject"] == "2234567890/0000111122224444"
    assert "line 3" in overdraft["text"] and "balance -12.00" in overdraft["text"]
    assert [k for k, in sqlite3.connect(eod.home / "data" / "journal.sqlite3").execute(
        "SELECT kind FROM alert ORDER BY id")] == ["eod_discrepancy", "eod_rejected", "overdraft"]


def test_eod_watch_raises_each_sorted_files_alerts(eod: Any) -> None:
    import test_eod

    eod.write(test_eod.XFER_ROWS[1:])  # valid, X1 missing
    bad = eod.write(test_eod.XFER_ROWS, "XFER", BANK, "HTSC")
    bad.write_bytes(bad.read_bytes().replace(b"100.50", b"100.51"))  # its signature fails
    rows = [[f"{1000000 + i}", test_eod.WALLET, "-1.00"] for i in range(55)]
    eod.write(rows, "BAL", BROKER, BANK, eod.broker)
    run = console(eod.home, "eod", "watch", str(eod.drop), "--once")
    assert run.returncode == 2, run.stderr  # one file rejected
    got = received(eod.out)
    assert {(a["kind"], a["subject"]) for a in got if a["kind"] != "overdraft"} == {
        ("eod_discrepancy", test_eod.NAME), ("eod_rejected", bad.name)}
    overdrafts = [a for a in got if a["kind"] == "overdraft"]
    assert len(overdrafts) == 51  # 50 one by one, then one for the rest
    # the pool of workers runs them in any order: one of them counts the rest
    assert sum("5 more negative balances" in a["text"] for a in overdrafts) == 1


def test_eod_alerts_are_journaled_and_logged_even_when_the_command_table_is_bad(
        eod: Any) -> None:
    import test_eod

    (eod.home / "gateway.toml").write_text("[alerts]\ncommand = 7\n")
    run = console(eod.home, "eod", "check", str(eod.write(test_eod.XFER_ROWS[1:])))
    assert run.returncode == 3  # the verdict is the file's, whatever the alerts did
    assert "[alerts] command must be a string" in run.stderr and "ALERT" in run.stderr
    assert journaled(eod.home, "eod_discrepancy") == [("critical", test_eod.NAME)]
