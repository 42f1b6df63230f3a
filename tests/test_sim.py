"""`gateway sim bank` as a real process against a real gateway (issue 6)."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.keystore import KeyStore
from gateway.sim.runtime import ensure_key

from conftest import BROKER
from flows import call, sign_fields, xfer

WALLET, FUND = "0071130812093028", "100020003000"


@pytest.fixture
def sim_bank(home, start_gateway, tmp_path):  # type: ignore[no-untyped-def]
    sim_home = tmp_path / "ccb"
    pub = ensure_key(sim_home, "CCB")  # the key the sim will use, registered first
    KeyStore(home.root / "keys").add_peer("CCB", "BANK", pub.read_bytes())
    gw = start_gateway(relay_timeout_seconds=1.5, reversal_retry_initial_seconds=0.5)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--home", str(sim_home), "sim", "bank",
         "--connect", f"127.0.0.1:{gw.port}", "--gateway-cert",
         str(home.root / "keys" / "gateway.crt"), "--withhold", "SLOW1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    gw.wait_for_log(r"CCB logged on as BANK")
    gw.wait_for_log(r"session key G\w+ installed")
    yield gw, sim_home
    proc.send_signal(signal.SIGTERM)
    proc.wait(20)


def ledger(sim_home: Path) -> sqlite3.Connection:
    return sqlite3.connect(sim_home / "data" / "CCB-ledger.sqlite3")


def balance(sim_home: Path, acct: str) -> int:
    return int(ledger(sim_home).execute("SELECT balance_fen FROM account WHERE id=?",
                                        (acct,)).fetchone()[0])


def test_sim_bank_checks_identity_funds_sweeps_and_reverses(sim_bank) -> None:  # type: ignore[no-untyped-def]
    gw, sim_home = sim_bank
    broker = gw.peer(BROKER).open_session()
    wrong: list[tuple[str, Any]] = [(k, "李四" if k == "CustName" else v)
                                    for k, v in sign_fields("S0")]
    assert call(broker, "CTS.SIGN.REQ", wrong, encrypt=("IdNo", "Phone")).body["Result"] == "B303"
    fields = [(k, v) for k, v in sign_fields("S1") if k != "Phone"]
    signed = call(broker, "CTS.SIGN.REQ", fields, encrypt=("IdNo",))
    assert signed.body["Result"] == "0000" and signed.body["AgreementNo"].startswith("AG")
    before = balance(sim_home, WALLET)
    rsp = call(broker, "XFER.IN.REQ", xfer("T1", amount="1000.00"))
    assert rsp.body["Result"] == "0000" and rsp.body["SweepRef"] and rsp.body["BankSn"]
    assert balance(sim_home, WALLET) == before - 100_000
    assert balance(sim_home, "DEDICATED") == 0 and balance(sim_home, "AGGREGATE") == 100_000
    assert call(broker, "XFER.IN.REQ", xfer("T2", amount="999999.00")).body["Result"] == "B310"
    assert call(broker, "XFER.IN.REQ", xfer("SLOW1", amount="500.00")).body["Result"] == "B330"
    gw.wait_for_log("REVERSED")
    deadline = time.monotonic() + 5
    while balance(sim_home, WALLET) != before - 100_000 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert balance(sim_home, WALLET) == before - 100_000  # the silent one undone
    assert balance(sim_home, "AGGREGATE") == 100_000
