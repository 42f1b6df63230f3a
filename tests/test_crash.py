"""Crash consistency under load (issue 9): the gateway is SIGKILLed at random moments
while transfers flow through it to a real bank simulator; after restarts and
reversals every BizSn is in exactly one final state and both sides agree — the books,
and the bank's end-of-day files (§8: XFER, SIGN, PAY, OTC), which reconcile with 0
discrepancies."""
from __future__ import annotations

import datetime as dt
import json
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.eod import check_command
from gateway.keystore import KeyStore, load_signer
from gateway.sim.bank import BankBook
from gateway.sim.eod import write_bank_files
from gateway.sim.ledger import Ledger
from gateway.sim.runtime import ensure_key, key_file

from conftest import BROKER
from flows import WALLET, call, sign_fields, xfer
from peer import CN, TestPeer

FINAL = {"SUCCEEDED", "FAILED", "REVERSED"}
KILLS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drive(broker: TestPeer, sent: dict[str, str], answers: dict[str, str], seconds: float,
          rng: random.Random) -> None:
    """Keep ~10 transfers in flight until the gateway dies or time runs out."""
    inflight: dict[str, str] = {}
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            while len(inflight) < 10:
                sn = f"GTJAT{len(sent):05d}"
                kind = "XFER.OUT.REQ" if rng.random() < 0.3 and len(answers) > 20 else "XFER.IN.REQ"
                sent[sn] = kind
                inflight[broker.send(kind, xfer(sn, amount="1.00"), to="CCB")] = sn
            frame = broker.recv("XFER.IN.RSP", "XFER.OUT.RSP", timeout=5)
            sn = inflight.pop(frame.head("RefId") or "", frame.body.get("BizSn", ""))
            answers[sn] = frame.body["Result"]
    except (ConnectionError, TimeoutError, OSError):
        pass  # the gateway was killed under us


def settle(broker: TestPeer, sent: dict[str, str], answers: dict[str, str]) -> None:
    """Ask again (same content) for every BizSn without an answer: never relayed twice."""
    for sn, kind in sent.items():
        if sn not in answers or answers[sn] not in ("0000", "B310", "B330"):
            rsp = call(broker, kind, xfer(sn, amount="1.00"))
            answers[sn] = rsp.body.get("Result", rsp.body.get("Code"))


def bank_files(sim_home: Path, out: Path, day: dt.date) -> list[Path]:
    """The bank's four signed §8 files of ``day`` with the broker (XFER, SIGN, PAY, OTC),
    from the sim's ledger, by the code `gateway sim bank --eod-dir` writes them with."""
    ledger = Ledger(sim_home / "data" / "CCB-ledger.sqlite3")
    try:
        book = BankBook(ledger, "CCB", day.isoformat, lambda: dt.datetime.now(CN).isoformat())
        return write_bank_files(book, out, day, BROKER, "GW01",
                                load_signer(key_file(sim_home, "CCB")), dt.datetime.now(CN))
    finally:
        ledger.db.close()


def eod_check(gateway_home: Path, path: Path, capsys: pytest.CaptureFixture[str]
              ) -> tuple[int, dict[str, Any]]:
    """``gateway eod check FILE --json`` against the gateway's journal."""
    capsys.readouterr()
    code = check_command(gateway_home, path, True)
    return code, json.loads(capsys.readouterr().out)


def test_sigkill_under_load_loses_nothing_and_moves_nothing_twice(home, start_gateway, tmp_path,
                                                                   capsys) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(20261125)
    sim_home = tmp_path / "ccb"
    KeyStore(home.root / "keys").add_peer("CCB", "BANK", ensure_key(sim_home, "CCB").read_bytes(),
                                          replace=True)
    port = free_port()
    settings: dict[str, Any] = dict(relay_timeout_seconds=1.0, reversal_retry_initial_seconds=0.3,
                                    reversal_retry_max_seconds=1.0)
    gw = start_gateway(listen=f"127.0.0.1:{port}", **settings)
    bank = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--home", str(sim_home), "sim", "bank", "--connect",
         f"127.0.0.1:{port}", "--gateway-cert", str(home.root / "keys" / "gateway.crt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        gw.wait_for_log(r"CCB logged on as BANK", timeout=15)
        gw.wait_for_log(r"session key G\w+ installed")
        broker = gw.peer(BROKER).open_session()
        fields = [(k, v) for k, v in sign_fields("GTJAS1") if k != "Phone"]
        assert call(broker, "CTS.SIGN.REQ", fields, encrypt=("CustName", "IdNo")).body["Result"] == "0000"
        ledger = sqlite3.connect(sim_home / "data" / "CCB-ledger.sqlite3")
        opening = ledger.execute("SELECT balance_fen FROM account WHERE id=?",
                                 (WALLET,)).fetchone()[0]
        sent: dict[str, str] = {}
        answers: dict[str, str] = {}
        for _ in range(KILLS):
            drive(broker, sent, answers, rng.uniform(0.5, 1.5), rng)
            gw.kill()  # SIGKILL at a random moment of the load
            gw = start_gateway(listen=f"127.0.0.1:{port}")
            gw.wait_for_log(r"CCB logged on as BANK", timeout=30)
            broker = gw.peer(BROKER).open_session()
        drive(broker, sent, answers, 0.5, rng)
        settle(broker, sent, answers)
        journal = sqlite3.connect(home.root / "data" / "journal.sqlite3")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            open_ = journal.execute("SELECT count(*) FROM record WHERE state IN"
                                    " ('PENDING','REVERSING')").fetchone()[0]
            if not open_:
                break
            time.sleep(0.2)
        states = {sn: st for sn, st in journal.execute(
            "SELECT biz_sn, state FROM record WHERE origin='GTJA' AND biz_type LIKE 'XFER.%'")}
        # every BizSn the broker sent is in exactly one final state
        assert set(states) == set(sent)
        assert set(states.values()) <= FINAL, states
        # the broker's answers agree with the journal
        for sn, state in states.items():
            want = {"SUCCEEDED": {"0000"}, "REVERSED": {"B330"}, "FAILED": {"B310", "B399"}}
            assert answers[sn] in want[state] or (state == "FAILED" and answers[sn] != "0000"), \
                (sn, state, answers[sn])
        # the bank's books agree with those states: money moved once, or not at all
        booked = {sn: (res, rev) for sn, res, rev in ledger.execute(
            "SELECT biz_sn, result, reversed FROM op WHERE origin='GTJA' AND biz_type LIKE"
            " 'XFER.%'")}
        net = 0
        for sn, state in states.items():
            res, rev = booked.get(sn, (None, 0))
            moved = res == "0000" and not rev
            assert moved == (state == "SUCCEEDED"), (sn, state, res, rev)
            if moved:
                net += -100 if sent[sn] == "XFER.IN.REQ" else 100
        balance = ledger.execute("SELECT balance_fen FROM account WHERE id=?",
                                 (WALLET,)).fetchone()[0]
        assert balance == opening + net
        assert len(sent) > 50 and sum(s == "SUCCEEDED" for s in states.values()) > 20
        relayed = journal.execute(
            "SELECT msg_id, count(*) FROM message WHERE direction='OUT' AND msg_type LIKE"
            " 'XFER.%.REQ' AND msg_id NOT LIKE 'GW01%' GROUP BY msg_id HAVING count(*) > 1"
        ).fetchall()
        assert relayed == []  # no request relayed twice

        # end of day: the bank's XFER file(s) reconcile with the journal, 0 discrepancies
        days = [dt.date.fromisoformat(d) for d, in journal.execute(
            "SELECT DISTINCT trade_date FROM record WHERE origin='GTJA' AND biz_type LIKE"
            " 'XFER.%'")]
        listed = 0
        for day in days:
            for path in bank_files(sim_home, tmp_path / "eod", day):  # XFER, SIGN, PAY, OTC
                code, report = eod_check(home.root, path, capsys)
                assert report["valid"] is True, report["reason"]
                problems = {k: report[k] for k in ("missing_in_file", "extra_in_file",
                                                   "mismatched")}
                assert problems == {"missing_in_file": [], "extra_in_file": [],
                                    "mismatched": []}, (path.name, problems)
                assert report["matched"] == report["records"] and code == 0
                if path.name.startswith("XFER_"):
                    listed += report["records"]
        # a request lost in the killed gateway's send buffer never reached the bank, so
        # the bank's file does not list it; the gateway reversed it (docs/eod.md)
        unseen = set(sent) - set(booked)
        assert {states[sn] for sn in unseen} <= {"REVERSED"}, unseen
        assert listed == len(sent) - len(unseen)

    finally:
        bank.send_signal(signal.SIGTERM)
        bank.wait(20)
