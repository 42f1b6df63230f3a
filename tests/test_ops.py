"""PROTOCOL §10 ops endpoint: a real gateway process, its HTTP port on loopback."""
from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import BANK, BROKER, GatewayHome, RunningGateway
from flows import call, signed, xfer
from peer import TestPeer

CHINA = dt.timezone(dt.timedelta(hours=8))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS = Path(__file__).resolve().parent.parent / "docs"


# --- helpers --------------------------------------------------------------------------
def write_toml(home: GatewayHome, gateway: dict[str, Any] | None = None,
               ops: dict[str, Any] | None = None, alerts: dict[str, Any] | None = None) -> None:
    text = ""
    for name, table in (("gateway", gateway), ("ops", ops), ("alerts", alerts)):
        if table:
            text += f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n"
                                             for k, v in table.items())
    (home.root / "gateway.toml").write_text(text, encoding="utf-8")


def token_of(home: GatewayHome) -> str:
    return (home.root / "keys" / "ops.token").read_text("ascii").strip()


def http_get(port: int, path: str, token: str | None = None, method: str = "GET",
             ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token
                     else {})
        rsp = conn.getresponse()
        return rsp.status, {k.lower(): v for k, v in rsp.getheaders()}, rsp.read()
    finally:
        conn.close()


def status_of(gw: RunningGateway) -> dict[str, Any]:
    code, _, body = http_get(gw.ops_port, "/api/status", token_of(gw.home))
    assert code == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


def metrics_of(gw: RunningGateway) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name → {sorted labels: value}."""
    code, headers, body = http_get(gw.ops_port, "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def wait_until(what: Callable[[], bool], timeout: float = 10, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(step)
    raise AssertionError("condition never held")


def journal(gw: RunningGateway) -> sqlite3.Connection:
    return sqlite3.connect(gw.home.root / "data" / "journal.sqlite3")


def gateway_cmd(home: GatewayHome, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--home", str(home.root), *args],
                          capture_output=True, text=True, timeout=60)


def traffic(gw: RunningGateway) -> tuple[TestPeer, TestPeer]:
    """A business morning: a signed agreement, transfers both ways, one the bank refuses
    (B310) and one the gateway refuses (B300, journaled with the gateway as receiver)."""
    bank = gw.peer(BANK).open_session()
    broker = gw.peer(BROKER).open_session()
    signed(bank, broker)
    for sn, amount in (("GTJAI1", "100.00"), ("GTJAI2", "250.50")):
        assert call(broker, "XFER.IN.REQ", xfer(sn, amount), bank=bank).body["Result"] == "0000"
    assert call(broker, "XFER.OUT.REQ", xfer("GTJAO1", "75.25"), bank=bank).body["Result"] \
        == "0000"
    assert call(broker, "XFER.OUT.REQ", xfer("GTJAO2", "9999.99"), bank=bank,
                result="B310").body["Result"] == "B310"
    assert call(broker, "XFER.IN.REQ", xfer("GTJAX1", fund="999988887777")).body["Result"] \
        == "B300"
    return bank, broker


# --- the public checks and the token ------------------------------------------------------
def test_health_ready_and_metrics_are_public_everything_else_needs_the_token(
        start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway()
    token = token_of(gw.home)
    assert http_get(gw.ops_port, "/healthz")[0] == 200
    assert http_get(gw.ops_port, "/readyz")[:3:2] == (200, b"ready\n")
    assert b"sbdx_sessions_ready" in http_get(gw.ops_port, "/metrics")[2]
    refusals = [http_get(gw.ops_port, "/api/status"),
                http_get(gw.ops_port, "/api/status", token="x" * 64),
                http_get(gw.ops_port, "/api/status", token=token[:-1]),
                http_get(gw.ops_port, "/no/such/path"),  # whether a path exists: not told
                http_get(gw.ops_port, "/api/suspend", method="POST"),
                http_get(gw.ops_port, f"/api/status?token={token}")]  # the page's way only
    for code, headers, body in refusals:
        assert code == 401 and body == b"unauthorized\n", (code, body)
        assert headers["www-authenticate"].startswith("Bearer")
    page_refused = http_get(gw.ops_port, "/?token=wrong")
    assert page_refused[0] == 401 and http_get(gw.ops_port, "/")[0] == 401
    for body in (page_refused[2], refusals[0][2]):  # nothing of the gateway in a 401
        assert b"GW01" not in body and token.encode() not in body and b"sbdx_" not in body
    assert b"keys/ops.token" in page_refused[2]  # the form says where the token is
    assert http_get(gw.ops_port, "/no/such/path", token)[0] == 404
    assert http_get(gw.ops_port, "/api/status", token, method="POST")[0] == 405
    code, headers, page = http_get(gw.ops_port, f"/?token={token}")
    assert code == 200 and b"<script>" in page
    assert not re.search(rb"://|\ssrc=|href=|url\(|@import", page)  # no external resource
    assert "script-src 'sha256-" in headers["content-security-policy"]
    assert http_get(gw.ops_port, "/", token)[0] == 200  # the header works for the page too
    assert status_of(gw)["gateway"]["party"] == "GW01"


def test_init_makes_the_ops_token_0600_and_serve_makes_a_missing_one(
        tmp_path: Path) -> None:
    home = tmp_path / "gw"
    out = subprocess.run([sys.executable, "-m", "gateway", "--home", str(home), "init"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    token_file = home / "keys" / "ops.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}\n", token_file.read_text())
    first = token_file.read_text()
    token_file.unlink()
    gw = RunningGateway(GatewayHome(home, {}, None))
    try:
        assert "made the ops token" in gw.log_text()
        assert token_file.stat().st_mode & 0o777 == 0o600 and token_file.read_text() != first
        assert http_get(gw.ops_port, "/api/status", token_file.read_text().strip())[0] == 200
    finally:
        gw.kill()


def test_an_ops_address_it_cannot_bind_makes_serve_exit_1_with_one_line(
        home: GatewayHome) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write_toml(home, ops={"listen": f"127.0.0.1:{port}"})
        out = gateway_cmd(home, "serve", "--listen", "127.0.0.1:0")
    assert out.returncode == 1, out.stderr
    line = f"[ops] listen: Couldn't listen on 127.0.0.1:{port}"
    assert out.stderr.count(line) == 1 and "Traceback" not in out.stderr, out.stderr


def test_an_empty_ops_listen_serves_no_endpoint(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway(ops_listen="")
    assert gw.ops_port == 0 and "ops HTTP" not in gw.log_text()
    assert gw.peer(BROKER).open_session().request("SYS.ECHO.REQ", [("Text", "x")])


# --- readiness and peer_down ------------------------------------------------------------
def test_readyz_flips_when_the_bank_disconnects_and_back(home: GatewayHome) -> None:
    write_toml(home, ops={"required_peers": [BANK, BROKER]})
    gw = RunningGateway(home)
    try:
        code, _, body = http_get(gw.ops_port, "/readyz")
        assert code == 503 and b"CCB has no ready session" in body \
            and b"GTJA has no ready session" in body
        bank, broker = gw.peer(BANK).open_session(), gw.peer(BROKER).open_session()
        assert http_get(gw.ops_port, "/readyz")[:3:2] == (200, b"ready\n")
        bank.close()
        wait_until(lambda: http_get(gw.ops_port, "/readyz")[0] == 503)
        body = http_get(gw.ops_port, "/readyz")[2]
        assert body == b"not ready: CCB has no ready session\n", body
        assert status_of(gw)["ready"] == {"ok": False, "missing": ["CCB has no ready session"],
                                          "required_peers": [BANK, BROKER]}
        bank = gw.peer(BANK).open_session()
        assert http_get(gw.ops_port, "/readyz")[0] == 200
        assert http_get(gw.ops_port, "/healthz")[0] == 200  # a bank away is not ill health
        bank.close()
        broker.close()
    finally:
        gw.kill()


def recorder(tmp_path: Path) -> tuple[list[str], Path]:
    """An ``[alerts] command`` that appends its stdin to a file."""
    script, out = tmp_path / "record.sh", tmp_path / "alerts.jsonl"
    script.write_text('#!/bin/sh\ncat >> "$1"\n')
    script.chmod(0o700)
    return [str(script), str(out)], out


def test_peer_down_is_raised_once_journaled_handed_to_the_command_and_cleared(
        home: GatewayHome, tmp_path: Path) -> None:
    command, out = recorder(tmp_path)
    write_toml(home, ops={"required_peers": [BANK]},
               alerts={"peer_down_seconds": 1, "command": command})
    gw = RunningGateway(home)
    try:
        gw.wait_for_log(r"ALERT .*peer_down.*CCB", timeout=10)
        raised = time.monotonic()
        wait_until(lambda: out.exists() and out.read_text() != "", timeout=5)
        assert time.monotonic() - raised < 5  # §10: the command has it within 5 s
        sent = json.loads(out.read_text().splitlines()[0])
        assert {k: sent[k] for k in ("kind", "severity", "subject")} == \
            {"kind": "peer_down", "severity": "critical", "subject": BANK}
        assert sent["time"].endswith("+08:00") and "no ready session" in sent["text"]
        time.sleep(2.5)  # still down: a state alert is not raised again
        with journal(gw) as db:
            rows = db.execute("SELECT kind, severity, subject FROM alert").fetchall()
        assert rows == [("peer_down", "critical", BANK)]
        status = status_of(gw)
        assert [(a["kind"], a["subject"]) for a in status["alerts"]["open"]] == \
            [("peer_down", BANK)]
        assert "no ready session" in status["alerts"]["recent"][0]["text"]
        assert metrics_of(gw)["sbdx_alerts_total"] == {(("kind", "peer_down"),): 1.0}
        bank = gw.peer(BANK).open_session()
        wait_until(lambda: not status_of(gw)["alerts"]["open"])
        gw.wait_for_log(r"alert peer_down CCB cleared")
        bank.close()  # down again: after peer_down_seconds, a second alert
        wait_until(lambda: metrics_of(gw)["sbdx_alerts_total"]
                   == {(("kind", "peer_down"),): 2.0})
        with journal(gw) as db:
            assert db.execute("SELECT count(*) FROM alert").fetchone()[0] == 2
    finally:
        gw.kill()


# --- metrics against the journal -----------------------------------------------------------
def test_metrics_equal_the_journal_after_real_traffic(start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway()
    bank, broker = traffic(gw)
    m = metrics_of(gw)
    today = dt.datetime.now(CHINA).date().isoformat()
    with journal(gw) as db:
        business = db.execute(
            "SELECT biz_type, state, origin, receiver, count(*), sum(amount_fen) FROM record"
            " WHERE trade_date=? AND receiver != 'GW01' GROUP BY 1, 2, 3, 4",
            (today,)).fetchall()
        messages = db.execute("SELECT lower(direction), msg_type, count(*) FROM message"
                              " GROUP BY 1, 2").fetchall()
        out_xml = db.execute("SELECT msg_type, xml FROM message WHERE direction='OUT'"
                             " AND (msg_type LIKE '%.RSP' OR msg_type='SYS.ERROR')").fetchall()
        answered = db.execute("SELECT count(*) FROM message WHERE direction='IN' AND party=?"
                              " AND msg_type LIKE '%.RSP' AND msg_type NOT LIKE 'SYS.%'",
                              (BANK,)).fetchone()[0]
    expected_count = {(t, t[5:] if t.startswith("XFER.") else "-", s, o, r): n
                      for t, s, o, r, n, _ in business}
    expected_yuan = {(t, t[5:] if t.startswith("XFER.") else "-", s, o, r): (fen or 0) / 100
                     for t, s, o, r, _, fen in business}
    names = ("type", "direction", "status", "party", "counterparty")
    got_count = {tuple(dict(k)[n] for n in names): v
                 for k, v in m["sbdx_business_today"].items()}
    got_yuan = {tuple(dict(k)[n] for n in names): v
                for k, v in m["sbdx_business_amount_today_cny"].items()}
    assert got_count == expected_count and got_yuan == expected_yuan, (got_count, business)
    assert got_yuan[("XFER.IN", "IN", "SUCCEEDED", BROKER, BANK)] == 350.50
    assert got_count[("XFER.OUT", "OUT", "FAILED", BROKER, BANK)] == 1  # the bank's B310
    assert not any(k[:3] == ("XFER.IN", "IN", "FAILED") for k in got_count)  # the gateway's B300
    summed: dict[tuple[str, str], float] = {}
    for labels, n in m["sbdx_messages_total"].items():
        d = dict(labels)
        summed[(d["direction"], d["type"])] = summed.get((d["direction"], d["type"]), 0) + n
    assert summed == {(d, t): n for d, t, n in messages}
    results: dict[tuple[str, str], int] = {}
    for msg_type, xml in out_xml:
        code = re.search(rb"<(?:Result|Code)>(\w+)<", xml).group(1).decode()  # type: ignore[union-attr]
        results[(msg_type, code)] = results.get((msg_type, code), 0) + 1
    got_results = {(dict(k)["type"], dict(k)["result"]): n
                   for k, n in m["sbdx_messages_total"].items()
                   if dict(k)["direction"] == "out" and dict(k)["result"] != "-"}
    assert got_results == results
    assert results[("XFER.OUT.RSP", "B310")] == 1 and results[("XFER.IN.RSP", "B300")] == 1
    assert m["sbdx_relay_seconds_count"][()] == answered == 5
    assert m["sbdx_sessions_ready"] == {(("party", BANK),): 1.0, (("party", BROKER),): 1.0}
    assert len(m["sbdx_session_key_age_seconds"]) == 2
    assert m["sbdx_inflight"][()] == 0 and m["sbdx_reversal_queue"][()] == 0
    assert m["sbdx_commit_seconds_count"][()] > 0 and m["sbdx_commit_frames_count"][()] > 0
    status = status_of(gw)
    refusals = {r["code"]: (r["sent"], r["received"]) for r in status["refusals"]}
    assert refusals == {"B300": (1, 0), "B310": (1, 1)}
    sessions = {s["party"]: s for s in status["sessions"]}
    assert sessions[BANK]["role"] == "BANK" and sessions[BANK]["ready"]
    assert sessions[BANK]["key_id"] and sessions[BROKER]["messages_in"] >= 7
    bank.close()
    broker.close()


def test_gateway_status_reads_the_running_gateway(home: GatewayHome) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_toml(home, ops={"listen": f"127.0.0.1:{port}"})
    gw = RunningGateway(home, ops_listen=None)
    try:
        assert gw.ops_port == port
        peers = traffic(gw)
        out = gateway_cmd(home, "status", "--json")
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert {s["party"] for s in data["sessions"]} == {BANK, BROKER}
        rows = {(b["type"], b["status"]): b["amount"] for b in data["business"]["rows"]}
        assert rows[("XFER.IN", "SUCCEEDED")] == "350.50"
        text = gateway_cmd(home, "status")
        assert text.returncode == 0 and "CCB" in text.stdout and "350.50" in text.stdout
        for peer in peers:
            peer.close()
    finally:
        gw.stop()
    out = gateway_cmd(home, "status")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and f"no gateway answers on 127.0.0.1:{port}" \
        in out.stderr, out.stderr


# --- the page in a real browser ---------------------------------------------------------------
def chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--no-first-run", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp}", *args],
        capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs "
                    "Debian's chromium; `apt-get install -y chromium`)")
def test_the_page_in_chromium_shows_sessions_business_refusals_and_alerts(
        home: GatewayHome, tmp_path: Path) -> None:
    write_toml(home, ops={"required_peers": [BANK, BROKER, "ICBC"], "page_refresh_seconds": 2},
               alerts={"peer_down_seconds": 1})
    gw = RunningGateway(home)
    try:
        bank, broker = traffic(gw)
        gw.wait_for_log(r"ALERT .*peer_down.*ICBC")  # a required party never connected
        url = f"http://127.0.0.1:{gw.ops_port}/?token={token_of(home)}"
        dom = chromium("--virtual-time-budget=5000", "--dump-dom", url,
                       tmp=tmp_path / "profile").stdout
        assert 'id="updated">20' in dom, dom[-3000:]  # the status arrived and was drawn
        assert token_of(home) not in dom.split("<body", 1)[1]  # out of the page it drew
        assert "SBDX gateway GW01" in dom and "not ready" in dom
        assert "ICBC has no ready session" in dom
        row = re.search(r'data-key="XFER\.IN\|IN\|SUCCEEDED\|GTJA\|CCB">(.*?)</tr>',
                        dom).group(1)  # type: ignore[union-attr]
        assert re.findall(r"<td[^>]*>([^<]*)</td>", row) == [
            "XFER.IN", "GTJA → CCB", "IN", "SUCCEEDED", "2", "350.50"]
        gross = re.search(r'data-key="transfers\|gross">(.*?)</tr>', dom).group(1)  # type: ignore[union-attr]
        assert re.findall(r"<td[^>]*>([^<]*)</td>", gross)[4:] == ["3", "425.75"]
        for party in (BANK, BROKER):
            cells = re.findall(r"<td[^>]*>([^<]*)</td>", re.search(  # type: ignore[union-attr]
                rf'data-key="{party}">(.*?)</tr>', dom).group(1))
            assert cells[1:3] == ["BANK" if party == BANK else "BROKER", "READY"]
        assert re.search(r'data-key="B310"><td>B310</td><td>insufficient funds</td>'
                         r'<td class="n">1</td><td class="n">1</td>', dom)
        assert re.search(r'data-key="peer_down\|ICBC"', dom)  # open and recent alerts
        shot = tmp_path / "ops-page.png"
        chromium("--virtual-time-budget=5000", "--window-size=1280,1000", "--hide-scrollbars",
                 f"--screenshot={shot}", url, tmp=tmp_path / "profile2")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("OPS_PAGE_SCREENSHOT"):  # docs/ops-page.png is made this way
            shutil.copy(shot, os.environ["OPS_PAGE_SCREENSHOT"])
        bank.close()
        broker.close()
    finally:
        gw.kill()


# --- end-of-day files judged by `gateway eod watch` (a process of its own) ----------------
def test_eod_files_judged_by_the_watcher_are_counted_and_shown(home: GatewayHome) -> None:
    write_toml(home, ops={"eod_dirs": ["drop"]})
    gw = RunningGateway(home)
    drop = home.root / "drop"
    try:
        peers = traffic(gw)
        assert metrics_of(gw)["sbdx_eod_files_total"] == {
            (("verdict", v),): 0.0 for v in ("accepted", "discrepancies", "rejected")}
        today = dt.datetime.now(CHINA).date().isoformat()
        out = gateway_cmd(home, "eod", "export", "--date", today, "--type", "XFER", "--to",
                          BANK, "--out", str(drop))
        assert out.returncode == 0, out.stderr
        (drop / "junk.txt").write_text("H|nothing\n")
        (drop / "junk.txt.sig").write_text("not a signature\n")
        out = gateway_cmd(home, "eod", "watch", str(drop), "--once")
        assert out.returncode == 2, out.stderr  # junk.txt rejected
        counted = {dict(k)["verdict"]: v for k, v in metrics_of(gw)["sbdx_eod_files_total"]
                   .items()}
        assert counted == {"accepted": 1, "discrepancies": 0, "rejected": 1}
        eod = {f["file"]: f for f in status_of(gw)["eod"]}
        assert eod["junk.txt"]["verdict"] == "rejected" and eod["junk.txt"]["reason"]
        exported = next(f for name, f in eod.items() if name != "junk.txt")
        assert exported["verdict"] == "accepted" and exported["records"] == 4 \
            == exported["matched"]
        for peer in peers:
            peer.close()
    finally:
        gw.kill()


# --- the sans-IO parts ----------------------------------------------------------------------
def test_message_labels_are_bounded_whatever_a_peer_sends() -> None:
    from gateway.metrics import MessageCounts

    counts = MessageCounts()
    for n in range(50):
        counts.count("in", f"X{n}.REQ", f"Z{n:03d}")  # a refused frame's Type, a bad Result
    counts.count("out", "XFER.OUT.RSP", "B310")
    counts.count("in", "XFER.OUT.RSP", "B310")
    counts.count("out", "SYS.ERROR", "E202")
    assert counts.counts[("in", "other", "other")] == 50 and len(counts.counts) == 4
    assert counts.refusals() == [("B310", 1, 1), ("E202", 1, 0), ("other", 0, 50)]


def test_the_result_of_a_sealed_message_is_read_with_or_without_a_prefix() -> None:
    from gateway.session import _sent_result

    assert _sent_result("XFER.OUT.RSP", b"<Msg><Body><R><Result>B310</Result>") == "B310"
    assert _sent_result("XFER.OUT.RSP", b"<s:Body><s:Result> 0000 </s:Result>") == "0000"
    assert _sent_result("SYS.ERROR", b"<Body><Code>E200</Code><Result>0000</Result>") == "E200"
    assert _sent_result("XFER.OUT.REQ", b"<Result>0000</Result>") == "-"
    assert _sent_result("XFER.OUT.RSP", b"<Result>not a code</Result>") == "-"


@pytest.mark.parametrize(("ops", "alerts", "error"), [
    ({"listen": 7780}, {}, "listen must be a string"),
    ({"listen": "nowhere"}, {}, "is not HOST:PORT"),
    ({"required_peers": "CCB"}, {}, "list of PartyIds"),
    ({"required_peers": ["ccb"]}, {}, "list of PartyIds"),
    ({"page_refresh_seconds": 0}, {}, "positive number"),
    ({"listn": "127.0.0.1:1"}, {}, "unknown setting [ops].listn"),
    ({}, {"peer_down_seconds": -1}, "[alerts] peer_down_seconds"),
])
def test_ops_settings_are_checked(ops: dict[str, Any], alerts: dict[str, Any],
                                  error: str, tmp_path: Path) -> None:
    from gateway.config import ConfigError
    from gateway.opsconfig import from_tables

    with pytest.raises(ConfigError, match=re.escape(error)):
        from_tables(ops, alerts, tmp_path)


def test_ops_settings_defaults_and_values(tmp_path: Path) -> None:
    from gateway.opsconfig import OpsConfig, from_tables

    assert from_tables({}, {}, tmp_path) == OpsConfig()
    assert OpsConfig().listen == "127.0.0.1:7780" and OpsConfig().peer_down_seconds == 60
    cfg = from_tables({"listen": "", "required_peers": ["CCB", "CCB"], "eod_dirs": ["d"]},
                      {"peer_down_seconds": 5, "xfer_single_max": "5000.00"}, tmp_path)
    assert not cfg.enabled and cfg.required_peers == ("CCB",)
    assert cfg.peer_down_seconds == 5.0 and cfg.eod_dirs == (tmp_path / "d",)


def test_the_days_business_is_read_again_after_its_ttl_or_a_new_trade_date() -> None:
    from gateway.metrics import BusinessToday

    class Fake:
        def __init__(self) -> None:
            self.t, self.day, self.asked = 100.0, "2026-12-02", []
            self.config = type("C", (), {"party": "GW01"})()
            self.journal = self

        def now(self) -> float:
            return self.t

        def trade_date(self) -> str:
            return self.day

        def business_totals_by_pair(self, day: str, party: str) -> list[Any]:
            self.asked.append((day, self.t))
            return [("XFER.IN", "IN", "SUCCEEDED", "GTJA", "CCB", len(self.asked), 100)]

    gw = Fake()
    business = BusinessToday(gw, ttl=5)
    assert business.rows()[0][5] == 1
    gw.t += 4.9
    assert business.rows()[0][5] == 1  # within the TTL: the same reading
    gw.t += 0.1
    assert business.rows()[0][5] == 2
    gw.day = "2026-12-03"  # midnight: the new day at once
    assert business.rows()[0][5] == 3 and gw.asked[-1] == ("2026-12-03", 105.0)


def test_sighup_applies_a_new_peer_down_seconds(home: GatewayHome) -> None:
    write_toml(home, ops={"required_peers": [BANK]}, alerts={"peer_down_seconds": 3600})
    gw = RunningGateway(home)
    try:
        time.sleep(1.5)
        assert "ALERT" not in gw.log_text()
        write_toml(home, ops={"required_peers": [BANK]}, alerts={"peer_down_seconds": 1})
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_for_log(r"ALERT .*peer_down.*CCB", timeout=10)
    finally:
        gw.kill()
