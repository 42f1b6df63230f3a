"""Issue 19, Logs and Help: what an operator reads (docs/operations.md "Logs").

One stream for the gateway's and Twisted's log, text or json, times with their offset;
a dial-out that fails is one line with the reason and the retry delay; a session's end
says why; a refusal names who sent what; a refused logon is answered with a LOGON.RSP
naming why; every option's help shows its default, the exit codes are in
``gateway --help``, and ``--home`` after the command is a usage error that says so.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway import exitcodes
from gateway.cli import build_parser

from conftest import BANK, BROKER, GatewayHome
from peer import TestPeer

SHANGHAI = dt.timedelta(hours=8)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args],
                          capture_output=True, text=True, timeout=60)


def closed_port() -> int:
    """A loopback port nobody listens on (a connect there is refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def register_dialled(home: GatewayHome, party: str, address: str) -> None:
    """Register ``party`` as a bank the gateway dials at ``address``."""
    from gateway.keystore import KeyStore

    key = ec.generate_private_key(ec.SECP256R1())
    home.keys[party] = key
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    KeyStore(home.root / "keys").add_peer(party, "BANK", pem, connect=address)


class Serve:
    """``gateway [GLOBAL…] serve --listen ADDRESS`` with its stderr collected."""

    def __init__(self, home: GatewayHome, *global_options: str,
                 listen: str = "127.0.0.1:0") -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--home", str(home.root), *global_options,
             "serve", "--listen", listen, "--ops-listen", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        threading.Thread(target=self._drain, daemon=True).start()
        self.port = int(re.search(r"serving on \S*:(\d+)", self.wait_for("serving on"))[1])  # type: ignore[index]

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None and not self.lines:
                break
            time.sleep(0.05)
        raise AssertionError(f"log never matched {pattern!r}:\n{''.join(self.lines)}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        time.sleep(0.1)  # the drain thread reads the last lines
        return "".join(self.lines)


@pytest.fixture
def serve(home: GatewayHome) -> Any:
    running: list[Serve] = []

    def start(*global_options: str, listen: str = "127.0.0.1:0") -> Serve:
        running.append(Serve(home, *global_options, listen=listen))
        return running[-1]

    yield start
    for s in running:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)
        assert "Traceback" not in "".join(s.lines), "".join(s.lines)


def peer_of(home: GatewayHome, party: str, port: int) -> TestPeer:
    return TestPeer(party, "BANK" if party == BANK else "BROKER", home.keys[party], port,
                    gateway_public_key=home.gateway_public_key)


# --- Twisted's log, dial-outs ----------------------------------------------------------
def test_an_unreachable_dial_out_is_one_line_per_attempt_with_its_retry_delay(
        home: GatewayHome, serve: Any) -> None:
    """A bank registered with --connect to a port nobody listens on: the gateway says it
    dials it, then, for each failed attempt, one warning with the reason and the delay
    before the next (Twisted's own "Scheduling retry" line, and no traceback)."""
    port = closed_port()
    register_dialled(home, "BOC", f"127.0.0.1:{port}")
    gw = serve()
    gw.wait_for(rf"INFO gateway\.server: dialling BOC at 127\.0\.0\.1:{port}$")
    second = gw.wait_for(r"\(attempt 2\)", timeout=20)
    text = gw.stop()
    failures = [line for line in text.splitlines() if "failed" in line and str(port) in line]
    assert len(failures) >= 2, text
    for n, line in enumerate(failures[:2], start=1):
        m = re.search(rf"WARNING gateway\.server: dialling BOC at 127\.0\.0\.1:{port} failed: "
                      rf"connection refused .*; dialling again in ([\d.]+) s \(attempt {n}\)$",
                      line)
        assert m and float(m[1]) > 0, line
    assert failures[1] == second.rstrip("\n")
    assert "Scheduling retry" not in text and "Starting factory" not in text


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_log_line_carries_its_time_with_the_offset(home: GatewayHome, serve: Any,
                                                         log_format: str) -> None:
    """--log-format json: one object a line with time (ISO-8601, +08:00), level, logger,
    message; text: the same time first.  Twisted's own events are among them."""
    gw = serve("--log-format", log_format)
    broker = peer_of(home, BROKER, gw.port).connect()
    broker.logon()
    broker.close()
    gw.wait_for("closed: the peer closed the connection")
    lines = gw.stop().splitlines()
    events = [json.loads(line) if log_format == "json" else _text_event(line) for line in lines]
    for event in events:
        assert {"time", "level", "logger", "message"} <= set(event), event
        assert dt.datetime.fromisoformat(event["time"]).utcoffset() == SHANGHAI, event
    loggers = {e["logger"] for e in events}
    assert {"gateway.server", "gateway.session"} <= loggers, loggers
    assert any(name.startswith("twisted") for name in loggers), loggers  # bridged
    assert any("GTJA logged on as BROKER" in e["message"] for e in events)


def _text_event(line: str) -> dict[str, str]:
    m = re.fullmatch(r"(\S+) (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): (.*)", line)
    assert m, line
    return {"time": m[1], "level": m[2], "logger": m[3], "message": m[4]}


def test_addresses_are_host_port_ipv6_in_brackets(home: GatewayHome, serve: Any) -> None:
    gw = serve(listen="[::1]:0")
    assert f"serving on [::1]:{gw.port}" in gw.wait_for("serving on")
    s = socket.create_connection(("::1", gw.port))
    local = s.getsockname()[1]
    gw.wait_for(rf"connection from \[::1\]:{local}$")
    s.close()
    gw.stop()


def test_a_dial_out_is_said_as_such_and_a_refused_logon_named(home: GatewayHome,
                                                               serve: Any) -> None:
    """The gateway dials a bank that refuses its logon (an unsigned SYS.ERROR, as a
    gateway answers a stranger): the log says it connected out, and why the bank
    refused, not an E207 of its own."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(15)
    port = listener.getsockname()[1]
    register_dialled(home, "BOC", f"127.0.0.1:{port}")
    gw = serve()
    conn, _ = listener.accept()
    bank = peer_of(home, "BOC", gw.port)
    bank.sock = conn
    logon = bank.recv("SYS.LOGON.REQ")
    _, xml = bank.build("SYS.ERROR", [("Code", "E203"), ("Text", "party GW01 is not "
                                      "registered here"), ("RefMsgId", logon.head("MsgId"))],
                        to="GW01")
    bank.send_raw(bank.frame(xml, sign=False, mac=False))
    gw.wait_for(rf"session \w+: connected to BOC at 127\.0\.0\.1:{port} \(dialled out\)")
    line = gw.wait_for("BOC refused our logon")
    assert re.search(r"WARNING gateway\.session: session \w+ \(BOC\) closed: BOC refused our "
                     r"logon: E203 party GW01 is not registered here$", line), line
    conn.close()
    listener.close()
    text = gw.stop()
    assert "E207" not in text, text


# --- sessions: why they close, refusals ---------------------------------------------------
def test_session_close_reasons_are_logged(home: GatewayHome, serve: Any) -> None:
    home.write_config(logon_timeout_seconds=1)
    gw = serve()
    broker = peer_of(home, BROKER, gw.port).open_session()  # logs off
    sid = _session_of(gw, BROKER)
    broker.request("SYS.LOGOFF.REQ", [])
    gw.wait_for(rf"session {sid} \(GTJA\) closed: GTJA logged off")
    bank = peer_of(home, BANK, gw.port).open_session()  # hangs up
    sid = _session_of(gw, BANK)
    bank.close()
    gw.wait_for(rf"session {sid} \(CCB\) closed: the peer closed the connection")
    mute = socket.create_connection(("127.0.0.1", gw.port))  # never logs on
    gw.wait_for(r"\(not logged on\) closed: no verified logon within 1 s")
    mute.close()
    junk = peer_of(home, BROKER, gw.port).open_session()  # a bad length header
    sid = _session_of(gw, BROKER, nth=1)
    junk.send_raw(b"99999999")
    gw.wait_for(rf"WARNING gateway\.session: session {sid} \(GTJA\) closed: refused a message "
                r"from GTJA: E101")
    last = peer_of(home, BROKER, gw.port).open_session()
    sid = _session_of(gw, BROKER, nth=2)
    text = gw.stop()
    assert re.search(rf"session {sid} \(GTJA\) closed: the gateway is stopping", text), text
    last.close()


def _session_of(gw: Serve, party: str, nth: int = 0) -> str:
    """The id of the ``nth`` session ``party`` logged on with."""
    gw.wait_for(rf"{party} logged on as")
    ids = [m[1] for line in list(gw.lines)
           if (m := re.search(rf"session (\w+): {party} logged on as", line))]
    deadline = time.monotonic() + 10
    while len(ids) <= nth and time.monotonic() < deadline:
        time.sleep(0.05)
        ids = [m[1] for line in list(gw.lines)
               if (m := re.search(rf"session (\w+): {party} logged on as", line))]
    return ids[nth]


def test_a_refused_message_names_whom_it_came_from(home: GatewayHome, serve: Any) -> None:
    """'refused TYPE MSGID from PARTY: CODE text' — the gateway refused, the party sent."""
    gw = serve()
    broker = peer_of(home, BROKER, gw.port).open_session()
    msg_id, xml = broker.build("SYS.ECHO.REQ", [("Text", "x")])
    frame = broker.frame(xml)
    at = frame.index(b"HS256:") + 6  # a MAC with one character changed
    broker.send_raw(frame[:at] + (b"A" if frame[at:at + 1] != b"A" else b"B") + frame[at + 1:])
    assert broker.recv("SYS.ERROR").body["Code"] == "E200"
    line = gw.wait_for(r"refused SYS\.ECHO\.REQ")
    assert f"refused SYS.ECHO.REQ {msg_id} from GTJA: E200 " in line, line
    assert "GTJA refused" not in gw.stop()


def test_a_logon_refused_for_an_unknown_party_gets_a_logon_rsp_naming_why(
        home: GatewayHome, serve: Any) -> None:
    gw = serve()
    stranger = TestPeer("ABC", "BROKER", ec.generate_private_key(ec.SECP256R1()), gw.port,
                        gateway_public_key=home.gateway_public_key).connect()
    msg_id, xml = stranger.build("SYS.LOGON.REQ", [
        ("PartyId", "ABC"), ("Role", "BROKER"), ("Nonce", "00" * 16), ("HeartbeatSec", 30)])
    stranger.send_raw(stranger.frame(xml, mac=False))
    rsp = stranger.recv_frame()
    assert rsp.type == "SYS.LOGON.RSP", rsp.body
    assert rsp.body["Result"] == "E203" and rsp.head("RefId") == msg_id, rsp.body
    assert "party ABC is not registered" in rsp.body["ResultText"], rsp.body
    stranger.verify_from_gateway(rsp)  # §3: a SYS.LOGON.* is signed
    assert stranger.closed_by_gateway()
    line = gw.wait_for("refused SYS.LOGON.REQ")
    assert re.search(rf"WARNING gateway\.session: session \w+ \(not logged on\) closed: "
                     rf"refused SYS\.LOGON\.REQ {msg_id} from ABC: E203 party ABC is not "
                     "registered", line), line
    gw.stop()


# --- help -------------------------------------------------------------------------------
def _parsers(parser: argparse.ArgumentParser, path: str) -> Any:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_has_help_that_shows_its_default() -> None:
    missing = []
    for path, parser in _parsers(build_parser(), "gateway"):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                                   argparse._SubParsersAction)):
                continue
            shown = formatter._expand_help(action) if action.help else ""
            if not shown or (action.option_strings and not action.required
                             and "default" not in shown):
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
            elif "(default: None)" in shown or "(default: [])" in shown:
                missing.append(f"{path} {action.option_strings}: {shown}")
    assert not missing, "options without help or without their default:\n" + "\n".join(missing)


def test_serve_help_shows_the_defaults() -> None:
    out = run("serve", "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert re.search(r"--listen HOST:PORT .*\(default: \[gateway\] listen of gateway\.toml, "
                     r"else 127\.0\.0\.1:7700\)", text), text
    assert re.search(r"--tls .*\(default: \[gateway\] tls of gateway\.toml, else off", text)
    top = " ".join(run("--help").stdout.split())
    assert "--log-format {text,json}" in top and "(default: text)" in top


def test_gateway_help_lists_the_exit_codes() -> None:
    out = run("--help")
    assert out.returncode == 0, out.stderr
    codes = {int(m[1]) for m in re.finditer(r"^  (\d+) +\S", out.stdout, re.M)}
    expected = {value for name, value in vars(exitcodes).items() if name.startswith("EXIT_")}
    assert expected == {0, 1, 2, 3, 64, 130}
    assert codes == expected, out.stdout


@pytest.mark.parametrize(("args", "option"), [
    (("serve", "--home", "HOME"), "--home"),
    (("serve", "--listen", "127.0.0.1:0", "--home=HOME"), "--home"),
    (("journal", "show", "GTJA1", "--home", "HOME"), "--home"),
    (("serve", "--log-format", "json"), "--log-format"),
])
def test_a_global_option_after_the_command_is_a_usage_error_that_says_where_it_goes(
        args: tuple[str, ...], option: str, tmp_path: Path) -> None:
    out = run(*(str(tmp_path) if a == "HOME" else a.replace("HOME", str(tmp_path))
                for a in args))
    assert out.returncode == exitcodes.EXIT_USAGE, out.stderr
    assert f"error: {option} goes before the command: gateway {option} " in out.stderr
    assert f" {args[0]} …" in out.stderr and out.stdout == ""
    assert not (tmp_path / "data").exists()  # nothing ran


# --- the pieces, unit ------------------------------------------------------------------
def test_formats_and_addresses() -> None:
    import logging

    from twisted.internet import address, error

    from gateway.logsetup import (
        JsonFormatter,
        TextFormatter,
        connection_end,
        host_port,
        iso_time,
    )

    record = logging.LogRecord("gateway.x", logging.WARNING, __file__, 1, "a %s b", ("中",),
                               None)
    record.created = 1796170530.5  # 2026-12-02T00:15:30.5Z
    assert iso_time(record.created) == "2026-12-02T08:15:30.500+08:00"
    assert TextFormatter().format(record) == \
        "2026-12-02T08:15:30.500+08:00 WARNING gateway.x: a 中 b"
    line = JsonFormatter().format(record)
    assert line.isascii() and "\n" not in line
    assert json.loads(line) == {"time": "2026-12-02T08:15:30.500+08:00", "level": "WARNING",
                                "logger": "gateway.x", "message": "a 中 b"}
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exception"]
    assert host_port(address.IPv4Address("TCP", "10.1.2.3", 7801)) == "10.1.2.3:7801"
    assert host_port(address.IPv6Address("TCP", "::1", 7700)) == "[::1]:7700"
    assert connection_end(error.ConnectionDone()) == "the peer closed the connection"
    assert connection_end(error.ConnectionLost()).startswith("the connection was lost")


def test_dial_out_policy_says_why_and_how_long() -> None:
    import logging

    from twisted.internet import defer, error
    from twisted.python.failure import Failure

    from gateway.logsetup import DialOut

    lines: list[tuple[int, str]] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append((record.levelno, record.getMessage()))

    logger = logging.getLogger("test.dialout")
    logger.addHandler(Catch())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    dial = DialOut("CCB", "10.1.2.3:7801", logger, policy=lambda n: 1.5 * n)

    class Refusing:
        def connect(self, factory: Any) -> defer.Deferred[Any]:
            return defer.fail(error.ConnectionRefusedError())

    failures: list[Failure] = []
    dial.wrap(Refusing()).connect(None).addErrback(failures.append)
    assert dial(1) == 1.5
    dial.wrap(Refusing()).connect(None).addErrback(failures.append)
    assert dial(2) == 3.0
    dial.failed("TLS handshake: bad certificate")
    assert dial(1) == 1.5
    assert dial(1) == 1.5  # a connection that ended
    assert len(failures) == 2  # the failure goes on to ClientService
    assert lines == [
        (logging.INFO, "dialling CCB at 10.1.2.3:7801"),
        (logging.WARNING, "dialling CCB at 10.1.2.3:7801 failed: connection refused (nothing "
                          "listens there?); dialling again in 1.5 s (attempt 1)"),
        (logging.WARNING, "dialling CCB at 10.1.2.3:7801 failed: connection refused (nothing "
                          "listens there?); dialling again in 3.0 s (attempt 2)"),
        (logging.WARNING, "TLS handshake: bad certificate; dialling again in 1.5 s"),
        (logging.INFO, "connection to CCB at 10.1.2.3:7801 ended; dialling again in 1.5 s"),
    ]


def test_misplaced_global_options_are_found_after_the_command_only() -> None:
    from gateway.cli import misplaced_global_option

    assert misplaced_global_option(["--home", "d", "serve"]) is None
    assert misplaced_global_option(["--home=d", "--log-format", "json", "serve"]) is None
    assert misplaced_global_option(["serve", "--home", "d"]) == ("--home", "serve")
    assert misplaced_global_option(["--home", "serve", "sim", "--log-format=json"]) == (
        "--log-format", "sim")
    assert misplaced_global_option(["eod", "check", "--", "--home"]) is None
