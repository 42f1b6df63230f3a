"""End-of-day clearing files (PROTOCOL §8/§9): check, reconcile, export, watch.

Real keys (a key store, peer keys registered by PEM) and a real journal built with
gateway.journal; the code under test reads the journal read-only.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from gateway.eod import check_command, export_command, fingerprint, watch_command, write_file
from gateway.eod.check import _header, check_file, signer_key
from gateway.eod.export import export_file
from gateway.eod.fileformat import fen, fen_text, parse_name
from gateway.eod.report import as_dict
from gateway.eod.signing import sign_file
from gateway.exitcodes import EXIT_FAILED, EXIT_USAGE
from gateway.journal import Journal, Record
from gateway.keystore import KeyStore, generate_key_file
from gateway.message import Head, Message
from gateway.signature import Signer
from gateway.sim.bank import BankBook
from gateway.sim.ledger import Ledger
from gateway.sim.runtime import ensure_key

import flows

DAY = dt.date(2026, 11, 25)
CREATED = dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
T = "2026-11-25T10:00:00+08:00"
BANK, BROKER, GW = "CCB", "GTJA", "GW01"
FUND, WALLET, CORP = "1234567890", "0000111122223333", "9999000011112222"
NAME = "XFER_CCB_GTJA_20261125.txt"


def pem(signer: Signer) -> bytes:
    return signer.public_key.public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def rec(origin: str, biz_type: str, biz_sn: str, state: str = "SUCCEEDED", *,
        receiver: str | None = None, day: str = "2026-11-25", **kw: object) -> Record:
    receiver = receiver or (BANK if origin == BROKER else BROKER)
    return Record(origin=origin, biz_type=biz_type, biz_sn=biz_sn, receiver=receiver,
                  msg_id="M" + biz_sn, content_hash="h" + biz_sn, state=state, trade_date=day,
                  **kw)  # type: ignore[arg-type]


JOURNAL = [
    rec(BROKER, "XFER.IN", "X1", amount_fen=10050, fund_acct=FUND, wallet_id=WALLET,
        bank_sn="B1", sweep_ref="S1"),
    rec(BANK, "XFER.OUT", "X2", "FAILED", amount_fen=2000, fund_acct=FUND, wallet_id=WALLET),
    rec(BROKER, "XFER.IN", "X3", "REVERSED", amount_fen=700, fund_acct=FUND, wallet_id=WALLET),
    rec(BANK, "XFER.REVERSE", "X4", amount_fen=700, fund_acct=FUND, wallet_id=WALLET,
        orig_type="XFER.IN", orig_from=BROKER, orig_biz_sn="X3"),
    rec(BROKER, "XFER.OUT", "X5", "PENDING", amount_fen=100, fund_acct=FUND, wallet_id=WALLET),
    rec(BROKER, "XFER.IN", "X6", "FAILED", receiver=GW, amount_fen=1, fund_acct=FUND,
        wallet_id=WALLET, result="B300"),
    rec(BROKER, "XFER.IN", "X7", day="2026-11-24", amount_fen=5, fund_acct=FUND,
        wallet_id=WALLET),
    rec(BROKER, "CTS.SIGN", "C1", fund_acct=FUND, wallet_id=WALLET, agreement_no="AG1"),
    rec(BROKER, "PAY.ORDER", "P1", amount_fen=9900, wallet_id=WALLET, order_no="O1",
        product_code="L2", bank_sn="PB1"),
    rec(BROKER, "PAY.REFUND", "P2", amount_fen=9900, wallet_id=WALLET, order_no="O1"),
    rec(BROKER, "OTC.SUBSCRIBE", "O1", amount_fen=100000000, wallet_id=CORP, order_no="OR1",
        product_code="IC1", book_date="2026-11-26"),
]

XFER_ROWS = [
    ["X1", "IN", FUND, WALLET, "100.50", "S", "B1", "S1", T],
    ["X2", "OUT", FUND, WALLET, "20.00", "F", "", "", T],
    ["X3", "IN", FUND, WALLET, "7.00", "R", "", "", T],
    ["X4", "REV", FUND, WALLET, "7.00", "S", "BR4", "", T],
]


class Env:
    """A gateway home (keys, peers CCB and GTJA) and its journal holding ``records``:
    the SQLite file ``data/journal.sqlite3``, or with ``url`` the PostgreSQL journal
    gateway.toml's ``[journal] url`` names."""

    def __init__(self, root: Path, records: Sequence[Record] = JOURNAL,
                 url: str | None = None) -> None:
        self.home = root / "home"
        self.keys = KeyStore.create(self.home / "keys", party=GW)
        self.bank = generate_key_file(root / "ccb.key", "ES256")
        self.broker = generate_key_file(root / "gtja.key", "ED25519")
        self.keys.add_peer(BANK, "BANK", pem(self.bank))
        self.keys.add_peer(BROKER, "BROKER", pem(self.broker))
        self.journal: Path | str = self.home / "data" / "journal.sqlite3"
        if url is None:
            journal = Journal(self.journal)
        else:
            (self.home / "gateway.toml").write_text(f'[journal]\nurl = "{url}"\n')
            self.journal = url
            journal = Journal(url, home=self.home)
        for i, r in enumerate(records):
            journal.insert_record(r, 1_790_000_000.0 + i)
        journal.flush()
        journal.close()
        self.drop = root / "drop"
        self.drop.mkdir()

    def write(self, rows: Sequence[Sequence[str]], file_type: str = "XFER",
              frm: str = BANK, to: str = BROKER, signer: Signer | None = None,
              out: Path | None = None) -> Path:
        return write_file(out or self.drop, file_type, frm, to, DAY, rows,
                          signer or self.bank, CREATED)

    def raw(self, name: str, lines: list[str], *, trailer: str | None = None,
            signer: Signer | None = None) -> Path:
        """A file from raw lines; trailer computed correctly unless given."""
        body = "".join(line + "\n" for line in lines).encode()
        if trailer is None:
            amounts = [fen(line.split("|")[5]) for line in lines[1:]]
            trailer = (f"T|{len(lines) - 1}|{fen_text(sum(amounts))}|"
                       f"{hashlib.sha256(body).hexdigest()}")
        data = body + (trailer + "\n").encode()
        path = self.drop / name
        path.write_bytes(data)
        sig = sign_file(signer or self.bank, path, hashlib.sha256(data).digest())
        path.with_name(name + ".sig").write_bytes(sig)
        return path

    def alert_kinds(self) -> dict[str, int]:
        """Alerts journaled so far (kind → how many), whichever store keeps them."""
        journal = (Journal(self.journal) if isinstance(self.journal, Path)
                   else Journal(self.journal, home=self.home))
        try:
            return dict(journal.store.alerts.counts())
        finally:
            journal.close()

    def check(self, path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
        code = check_command(self.home, path, True)
        return code, json.loads(capsys.readouterr().out)


def store_url(request: pytest.FixtureRequest) -> str | None:
    """None for SQLite (the default), or a fresh migrated PostgreSQL journal's url when
    the test is parametrized with ``env`` = "postgresql" (:data:`BOTH_STORES`)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return None
    return str(request.getfixturevalue("pg_store_url"))


#: Runs a test on each store (PROTOCOL §12): its ``env`` journal is SQLite, then PostgreSQL.
BOTH_STORES = pytest.mark.parametrize("env", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture()
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Env:
    return Env(tmp_path, url=store_url(request))


def header(name: str = NAME) -> str:
    t, frm, to, day = name[:-4].split("_")
    return f"H|SBDX1|{t}|{day}|{frm}|{to}|2026-11-25T18:00:00+08:00"


# --- valid files ------------------------------------------------------------------------
@BOTH_STORES
def test_valid_bank_file_reconciles_fully(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.write(XFER_ROWS)
    before = path.read_bytes()
    code, out = env.check(path, capsys)
    assert code == 0, out
    assert set(out) == {"file", "valid", "reason", "records", "matched", "missing_in_file",
                        "extra_in_file", "mismatched"}
    assert out["valid"] is True and out["reason"] is None
    assert out["records"] == 4 and out["matched"] == 4
    assert out["missing_in_file"] == out["extra_in_file"] == out["mismatched"] == []
    assert path.read_bytes() == before and path.with_name(NAME + ".sig").exists()


def test_text_report_without_json(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code = check_command(env.home, env.write(XFER_ROWS), False)
    text = capsys.readouterr().out
    assert code == 0 and "VALID, 4 records" in text and "matched 4" in text


def test_trailer_written_by_write_file(env: Env) -> None:
    lines = env.write(XFER_ROWS).read_text().splitlines()
    assert lines[0] == header()
    body = "".join(line + "\n" for line in lines[:-1]).encode()
    assert lines[-1] == f"T|4|134.50|{hashlib.sha256(body).hexdigest()}"


def test_ed25519_signed_file_verifies(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.write([["C1", "SIGN", FUND, WALLET, "AG1", "S", T]], "SIGN", BROKER, BANK,
                     env.broker)
    assert len(path.with_name(path.name + ".sig").read_bytes()) == 64
    code, out = env.check(path, capsys)
    assert code == 0 and out["matched"] == 1, out


def test_rsa_pkcs1_and_pss_signatures_verify(tmp_path: Path, env: Env,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for kind in ("RS256", "PS256"):
        signer = generate_key_file(tmp_path / f"{kind}.key", kind)
        env.keys.add_peer(BANK, "BANK", pem(signer), replace=True)
        code, out = env.check(env.write(XFER_ROWS, signer=signer), capsys)
        assert code == 0, (kind, out)


@BOTH_STORES
def test_pay_and_otc_files_reconcile(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    pay = env.write([["P1", "O1", WALLET, "99.00", "S", "L2", T]], "PAY")
    otc = env.write([["O1", "OR1", CORP, "1000000.00", "S", "2026-11-26", T]], "OTC")
    for path in (pay, otc):
        code, out = env.check(path, capsys)
        assert (code, out["matched"]) == (0, 1), out


# --- rejections, one per §8 failure kind -------------------------------------------------
def assert_rejected(env: Env, path: Path, capsys: pytest.CaptureFixture[str],
                    *needles: str) -> dict:
    code, out = env.check(path, capsys)
    assert code == 2 and out["valid"] is False, out
    for needle in needles:
        assert needle in out["reason"], out["reason"]
    return out


def test_bad_name_rejected(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.write(XFER_ROWS)
    bad = path.with_name("XFER_CCB_GTJA_2026112.txt")
    shutil.copy(path, bad)
    shutil.copy(path.with_name(NAME + ".sig"), bad.with_name(bad.name + ".sig"))
    assert_rejected(env, bad, capsys, "name:", "does not match")


def test_unknown_signer_rejected(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.write(XFER_ROWS, frm="ICBC")
    assert_rejected(env, path, capsys, "legitimacy", "unknown signer", "ICBC")


def test_bad_signature_rejected(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.write(XFER_ROWS, signer=env.broker)  # signed by GTJA's key, named CCB
    assert_rejected(env, path, capsys, "legitimacy", "does not verify", "CCB")


def test_tampered_content_fails_signature(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.write(XFER_ROWS)
    path.write_bytes(path.read_bytes().replace(b"100.50", b"900.50"))
    assert_rejected(env, path, capsys, "legitimacy")


def test_header_mismatch_rejected(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [header().replace("|GTJA|", "|HTSC|")] + ["D|" + "|".join(r) for r in XFER_ROWS]
    path = env.raw(NAME, lines)
    assert_rejected(env, path, capsys, "header", "To", "HTSC")


def test_trailer_digest_rejected(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [header()] + ["D|" + "|".join(r) for r in XFER_ROWS]
    path = env.raw(NAME, lines, trailer="T|4|134.50|" + "0" * 64)
    assert_rejected(env, path, capsys, "integrity", "digest")


def _trailer(lines: list[str], count: int, total: str) -> str:
    body = "".join(line + "\n" for line in lines).encode()
    return f"T|{count}|{total}|{hashlib.sha256(body).hexdigest()}"


def test_trailer_count_rejected(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [header()] + ["D|" + "|".join(r) for r in XFER_ROWS]
    path = env.raw(NAME, lines, trailer=_trailer(lines, 5, "134.50"))
    assert_rejected(env, path, capsys, "integrity", "count 5", "4 records")


def test_trailer_sum_rejected(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [header()] + ["D|" + "|".join(r) for r in XFER_ROWS]
    path = env.raw(NAME, lines, trailer=_trailer(lines, 4, "134.51"))
    assert_rejected(env, path, capsys, "integrity", "sum 134.51", "134.50")


@pytest.mark.parametrize(("index", "value", "field"), [
    (4, "100.5", "Amount"), (3, "00001111", "WalletId"), (1, "SIDEWAYS", "Direction"),
    (5, "X", "Status"), (8, "2026-11-25 10:00:00", "Time"), (8, "2026-02-30T10:00:00Z", "Time"),
    (2, "12AB", "FundAcct"), (0, "X-1", "BizSn")])
def test_bad_record_field_rejected_with_line_and_field(
        env: Env, capsys: pytest.CaptureFixture[str], index: int, value: str,
        field: str) -> None:
    rows = [list(r) for r in XFER_ROWS]
    rows[2][index] = value
    lines = [header()] + ["D|" + "|".join(r) for r in rows]
    amounts = sum(fen(r[4]) if r[4] != "100.5" else 10050 for r in rows)
    path = env.raw(NAME, lines, trailer=_trailer(lines, 4, fen_text(amounts)))
    assert_rejected(env, path, capsys, "record", "line 4", f"field {field}")


def test_wrong_field_count_rejected(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [header()] + ["D|" + "|".join(r) for r in XFER_ROWS]
    lines[3] += "|extra"
    path = env.raw(NAME, lines, trailer=_trailer(lines, 4, "134.50"))
    assert_rejected(env, path, capsys, "record", "line 4", "expected 9 fields")


def test_duplicate_bizsn_rejected(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    rows = XFER_ROWS + [XFER_ROWS[1]]
    path = env.write(rows)
    assert_rejected(env, path, capsys, "record", "line 6", "duplicate BizSn X2", "line 3")


def test_missing_signature_file_rejected(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    path = env.write(XFER_ROWS)
    path.with_name(NAME + ".sig").unlink()
    assert_rejected(env, path, capsys, "signature file", "missing")


# --- discrepancies ----------------------------------------------------------------------------
@BOTH_STORES
def test_missing_extra_and_mismatched_reported_by_bizsn(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [list(r) for r in XFER_ROWS[1:]]             # X1 missing
    rows[0][4] = "21.00"                                 # X2 amount differs
    rows[1][5] = "S"                                     # X3 status differs
    rows.append(["Z9", "IN", FUND, WALLET, "1.00", "S", "", "", T])  # extra
    rows.append(["X5", "OUT", FUND, WALLET, "1.00", "S", "", "", T])  # journal PENDING
    code, out = env.check(env.write(rows), capsys)
    assert code == 3 and out["valid"] is True and out["reason"] is None
    assert out["missing_in_file"] == ["X1"]
    assert out["extra_in_file"] == ["Z9"]
    assert out["mismatched"] == [
        {"BizSn": "X2", "fields": {"Amount": {"file": "21.00", "journal": "20.00"}}},
        {"BizSn": "X3", "fields": {"Status": {"file": "S", "journal": "R"}}},
        {"BizSn": "X5", "fields": {"Status": {"file": "S", "journal": "PENDING"}}},
    ]
    assert out["matched"] == 1  # X4 only


@BOTH_STORES
def test_reversed_record_its_receiver_never_saw_may_be_absent(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """X3 (GTJA → CCB) timed out and was reversed: the request may never have reached
    CCB (§6: a reversal of an unknown original is success), so CCB's file may omit it;
    the originator's file may not."""
    code, out = env.check(env.write([r for r in XFER_ROWS if r[0] != "X3"]), capsys)
    assert code == 0 and out["missing_in_file"] == [] and out["matched"] == 3, out
    broker_file = env.write([r for r in XFER_ROWS if r[0] != "X3"], frm=BROKER, to=BANK,
                            signer=env.broker)
    code, out = env.check(broker_file, capsys)
    assert code == 3 and out["missing_in_file"] == ["X3"], out


@BOTH_STORES
def test_bank_refs_compared_only_where_both_hold_one(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [list(r) for r in XFER_ROWS]
    rows[0][6] = "OTHER"        # BankSn differs, both hold one
    rows[0][7] = ""             # SweepRef absent in the file: not compared
    rows[0][8] = "2026-11-25T23:59:59Z"  # Time is never compared
    code, out = env.check(env.write(rows), capsys)
    assert code == 3
    assert out["mismatched"] == [{"BizSn": "X1",
                                  "fields": {"BankSn": {"file": "OTHER", "journal": "B1"}}}]


# --- BAL ------------------------------------------------------------------------------------
def test_bal_overdraft_is_alerted_file_stays_valid(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [[FUND, WALLET, "500.00"], ["2234567890", "0000111122224444", "-12.00"]]
    path = env.write(rows, "BAL", BROKER, BANK, env.broker)
    assert path.read_text().splitlines()[-1].startswith("T|2|488.00|")
    code, out = env.check(path, capsys)
    assert code == 0 and out["valid"] is True and out["matched"] == 0, out
    check_command(env.home, path, False)
    text = capsys.readouterr().out
    assert "ALERT overdraft" in text and "-12.00" in text and "2234567890" in text


def test_bal_trailer_sum_must_equal_total(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    name = "BAL_GTJA_CCB_20261125.txt"
    lines = [header(name), f"D|{FUND}|{WALLET}|500.00", f"D|{FUND}1|{WALLET}|-12.00"]
    path = env.raw(name, lines, trailer=_trailer(lines, 2, "500.00"), signer=env.broker)
    assert_rejected(env, path, capsys, "integrity", "sum 500.00", "488.00")


# --- export ------------------------------------------------------------------------------------
@BOTH_STORES
@pytest.mark.parametrize("file_type", ["XFER", "SIGN", "PAY", "OTC"])
def test_export_rechecks_valid_and_reconciled(
        env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str], file_type: str) -> None:
    out_dir = tmp_path / "out"
    assert export_command(env.home, "2026-11-25", file_type, BROKER, out_dir) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.name == f"{file_type}_GW01_GTJA_20261125.txt"
    code, out = env.check(path, capsys)
    assert code == 0 and out["missing_in_file"] == [] and out["mismatched"] == [], out
    assert out["records"] == {"XFER": 4, "SIGN": 1, "PAY": 1, "OTC": 1}[file_type]


def test_export_verifies_with_stock_openssl(env: Env, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    assert export_command(env.home, "2026-11-25", "XFER", BROKER, tmp_path) == 0
    path = Path(capsys.readouterr().out.strip())
    pub = tmp_path / "gw_pub.pem"
    pub.write_bytes(pem(env.keys.signer()))
    run = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(pub), "-signature",
                          str(path) + ".sig", str(path)], capture_output=True, text=True)
    assert run.returncode == 0 and "Verified OK" in run.stdout, run.stderr


def test_openssl_signed_file_is_accepted(env: Env, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    path = env.write(XFER_ROWS)
    sig = path.with_name(NAME + ".sig")
    sig.unlink()
    subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(tmp_path / "ccb.key"), "-out",
                    str(sig), str(path)], check=True)
    assert env.check(path, capsys)[0] == 0


def test_the_export_from_postgresql_is_the_export_from_sqlite(
        tmp_path: Path, pg_store_url: str) -> None:
    """The same business journaled in either store: every file the gateway exports is
    the same bytes (the signature aside: another key), and checks clean against the
    journal it came from (PROTOCOL §8, §12)."""
    (tmp_path / "lite").mkdir()
    (tmp_path / "pg").mkdir()
    lite, pg = Env(tmp_path / "lite"), Env(tmp_path / "pg", url=pg_store_url)
    for file_type in ("XFER", "SIGN", "PAY", "OTC"):
        for peer in (BANK, BROKER):
            made = [export_file(e.home, DAY, file_type, peer, e.home / "out", CREATED)
                    for e in (lite, pg)]
            assert made[0].name == made[1].name
            assert made[0].read_bytes() == made[1].read_bytes(), made[0].name
            assert made[1].read_text().count("\nD|") >= 1, made[1].name
            report = check_file(pg.home, made[1])
            assert report.exit_code == 0 and report.reconciliation is not None, report
            assert report.reconciliation.clean and report.reconciliation.matched == \
                report.records, report


def test_an_unreachable_postgresql_journal_judges_nothing_and_exports_nothing(
        tmp_path: Path, pg_store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The server down (or the url wrong) is no empty journal: check and export exit 1
    saying so, write and judge nothing; the watcher leaves the file in .checking/ and
    judges it at the first pass that can read the journal."""
    env = Env(tmp_path, url=pg_store_url)
    good = env.write(XFER_ROWS)
    own = export_file(env.home, DAY, "XFER", BROKER, tmp_path / "own", CREATED)
    config = env.home / "gateway.toml"
    dead = f"postgresql://postgres@/nope?host={tmp_path / 'no-server'}&connect_timeout=2"
    config.write_text(f'[journal]\nurl = "{dead}"\n')
    assert check_command(env.home, good, True) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert out == "" and "PostgreSQL" in err and "[journal] url" in err  # what to fix
    assert "nothing was judged" in err and "Traceback" not in err
    assert check_command(env.home, own, True) == EXIT_FAILED  # its signer is the gateway:
    err = capsys.readouterr().err  # no registry read, the journal itself is unreachable
    assert "cannot connect to the PostgreSQL journal" in err and "nothing was judged" in err
    assert export_command(env.home, "2026-11-25", "XFER", BROKER, tmp_path / "out") == \
        EXIT_FAILED
    assert "no file was written" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert watch_command(env.home, env.drop, once=True) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "cannot check files against the journal" in out and "judged nothing" in out
    assert (env.drop / ".checking" / NAME).exists() and not (env.drop / "rejected").exists()
    config.write_text(f'[journal]\nurl = "{pg_store_url}"\n')  # the server is back
    assert watch_command(env.home, env.drop, once=True) == 0
    assert (env.drop / "accepted" / NAME).exists() and not (env.drop / ".checking").exists()


def test_export_refuses_bal_and_bad_date(env: Env, tmp_path: Path) -> None:
    assert export_command(env.home, "2026-11-25", "BAL", BROKER, tmp_path) == EXIT_USAGE
    assert export_command(env.home, "25/11/2026", "XFER", BROKER, tmp_path) == EXIT_USAGE
    assert list(tmp_path.glob("*.txt")) == []


# --- watch --------------------------------------------------------------------------------------
def test_watch_ignores_file_until_sig_then_accepts(env: Env, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    staged = env.write(XFER_ROWS, out=tmp_path / "stage")
    data = staged.read_bytes()
    target = env.drop / NAME
    with open(target, "wb") as f:  # first write
        f.write(data[:100])
    assert watch_command(env.home, env.drop, once=True) == 0
    assert target.read_bytes() == data[:100]
    with open(target, "ab") as f:  # second write, still no .sig
        f.write(data[100:])
    assert watch_command(env.home, env.drop, once=True) == 0
    assert target.exists() and not (env.drop / "accepted").exists()
    shutil.copy(staged.with_name(NAME + ".sig"), env.drop / (NAME + ".sig"))  # late .sig
    assert watch_command(env.home, env.drop, once=True) == 0
    done = env.drop / "accepted"
    assert (done / NAME).read_bytes() == data and (done / (NAME + ".sig")).exists()
    report = json.loads((done / (NAME + ".report.json")).read_text())
    assert report["valid"] is True and report["matched"] == 4
    assert "VALID" in (done / (NAME + ".report.txt")).read_text()
    assert not target.exists()


@BOTH_STORES
def test_watch_rejects_and_accepts_with_discrepancies(env: Env) -> None:
    env.write(XFER_ROWS[1:])  # X1 missing: valid with discrepancies -> accepted
    bad = env.write(XFER_ROWS, "XFER", BANK, "HTSC")
    bad.write_bytes(bad.read_bytes().replace(b"100.50", b"100.51"))
    assert watch_command(env.home, env.drop, once=True) == 2  # one rejected
    assert (env.drop / "accepted" / NAME).exists()
    assert json.loads((env.drop / "accepted" / (NAME + ".report.json")).read_text())[
        "missing_in_file"] == ["X1"]
    rejected = env.drop / "rejected" / bad.name
    assert rejected.exists() and (env.drop / "rejected" / (bad.name + ".sig")).exists()
    assert "legitimacy" in json.loads(
        (env.drop / "rejected" / (bad.name + ".report.json")).read_text())["reason"]
    # §10: both verdicts journaled as alerts in the journal [journal] url names
    assert env.alert_kinds() == {"eod_discrepancy": 1, "eod_rejected": 1}


def test_watch_restart_mid_folder_processes_each_file_once(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    first = env.write(XFER_ROWS)
    second = env.write([["P1", "O1", WALLET, "99.00", "S", "L2", T]], "PAY")
    # a first run that crashed between moving the file and moving its .sig
    accepted = env.drop / "accepted"
    accepted.mkdir()
    shutil.move(first, accepted / first.name)
    assert watch_command(env.home, env.drop, once=True) == 0  # "restart"
    assert (accepted / (first.name + ".sig")).exists()
    assert (accepted / second.name).exists() and (accepted / (second.name + ".sig")).exists()
    assert sorted(p.name for p in env.drop.iterdir()) == ["accepted"]
    capsys.readouterr()
    assert watch_command(env.home, env.drop, once=True) == 0  # second restart: nothing to do
    started, stopped = capsys.readouterr().out.splitlines()  # no file line
    assert started.startswith("eod watch: started on") and "0 file(s)" in stopped


def test_watch_duplicate_drop_rejected_earlier_copy_kept(env: Env, tmp_path: Path) -> None:
    staged = env.write(XFER_ROWS, out=tmp_path / "stage")
    for code in (0, 2):  # accepted, then rejected as a duplicate
        shutil.copy(staged, env.drop / NAME)
        shutil.copy(staged.with_name(NAME + ".sig"), env.drop / (NAME + ".sig"))
        assert watch_command(env.home, env.drop, once=True) == code
    assert (env.drop / "accepted" / NAME).read_bytes() == staged.read_bytes()
    report = json.loads((env.drop / "rejected" / (NAME + ".report.json")).read_text())
    assert report["valid"] is False and report["reason"].startswith("duplicate")
    assert f"gateway eod watch {env.drop} --once --replace" in report["reason"]
    assert (env.drop / "rejected" / NAME).read_bytes() == staged.read_bytes()


def test_watch_resend_after_rejection_is_checked_again(env: Env, tmp_path: Path) -> None:
    staged = env.write(XFER_ROWS, out=tmp_path / "stage")
    (env.drop / NAME).write_bytes(staged.read_bytes() + b"junk\n")
    shutil.copy(staged.with_name(NAME + ".sig"), env.drop / (NAME + ".sig"))
    watch_command(env.home, env.drop, once=True)
    shutil.copy(staged, env.drop / NAME)
    shutil.copy(staged.with_name(NAME + ".sig"), env.drop / (NAME + ".sig"))
    watch_command(env.home, env.drop, once=True)
    assert (env.drop / "rejected" / NAME).read_bytes().endswith(b"junk\n")
    assert (env.drop / "accepted" / NAME).read_bytes() == staged.read_bytes()


# --- more format edges ------------------------------------------------------------------------
def test_ed25519_sig_verifies_with_openssl_pkeyutl(env: Env, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl")
    path = env.write([["C1", "SIGN", FUND, WALLET, "AG1", "S", T]], "SIGN", BROKER, BANK,
                     env.broker)
    pub = tmp_path / "gtja.pem"
    pub.write_bytes(pem(env.broker))
    run = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub),
                          "-rawin", "-in", str(path), "-sigfile", str(path) + ".sig"],
                         capture_output=True, text=True)
    if "rawin" in run.stderr and run.returncode != 0:
        pytest.skip("this openssl has no -rawin")
    assert run.returncode == 0, run.stderr


def test_bal_overdraft_alert_names_its_line(
        env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [[f"{1000000 + i}", WALLET, "-1.00" if i == 3 else "2.00"] for i in range(5)]
    path = env.write(rows, "BAL", BROKER, BANK, env.broker)
    check_command(env.home, path, False)
    assert "line 5 FundAcct 1000003" in capsys.readouterr().out


def test_empty_and_trailerless_files_rejected(env: Env,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    empty = env.drop / NAME
    empty.write_bytes(b"")
    empty.with_name(NAME + ".sig").write_bytes(sign_file(env.bank, empty,
                                                         hashlib.sha256(b"").digest()))
    assert_rejected(env, empty, capsys, "header", "empty")
    name = "XFER_CCB_GTJA_20261124.txt"
    data = (header(name) + "\n" + "D|" + "|".join(XFER_ROWS[0]) + "\n").encode()
    path = env.drop / name
    path.write_bytes(data)
    path.with_name(name + ".sig").write_bytes(sign_file(env.bank, path,
                                                        hashlib.sha256(data).digest()))
    assert_rejected(env, path, capsys, "integrity", "not a trailer")


def test_crlf_file_rejected(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    lines = [header() + "\r"] + ["D|" + "|".join(r) + "\r" for r in XFER_ROWS]
    path = env.raw(NAME, lines, trailer=_trailer(lines, 4, "134.50"))
    assert_rejected(env, path, capsys, "header", "CRLF")


def test_large_file_spanning_many_blocks(env: Env, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rows = [[f"B{i:07d}", "IN", FUND, WALLET, "1.00", "S", "", "", T] for i in range(30000)]
    rows[25000][4] = "1.0"  # a bad field far beyond the first 1 MiB block
    lines = [header()] + ["D|" + "|".join(r) for r in rows]
    path = env.raw(NAME, lines, trailer=_trailer(lines, 30000, "30000.00"))
    assert_rejected(env, path, capsys, "line 25002", "field Amount")
    code, out = env.check(env.write(rows[:25000] + rows[25001:]), capsys)
    # X3 (reversed, CCB its receiver) may be absent from CCB's file: not missing
    assert code == 3 and len(out["extra_in_file"]) == 29999 and out["missing_in_file"] == [
        "X1", "X2", "X4"]


def test_watch_without_key_store_is_an_operator_error(tmp_path: Path) -> None:
    assert watch_command(tmp_path, tmp_path, once=True) == 1


def test_a_path_with_no_file_is_not_judged(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped FILE (or one not delivered yet) is not a rejected file: exit 1, no
    report; check_file itself (the folder watcher's) still rejects it with `file:`."""
    assert check_command(env.home, env.drop / NAME, as_json=True) == EXIT_FAILED
    out, err = capsys.readouterr()
    assert out == "" and "does not exist" in err and "nothing was judged" in err
    assert check_command(env.home, env.drop, as_json=True) == EXIT_FAILED  # a folder
    report = check_file(env.home, env.drop / NAME)
    assert not report.valid and report.reason.startswith("file:")


# --- the console command, run as an operator would ------------------------------------------

def _console(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=120)


JSON_KEYS = {"file", "valid", "reason", "records", "matched", "missing_in_file",
             "extra_in_file", "mismatched"}


@BOTH_STORES
def test_console_eod_check_exit_codes_and_json_keys(env: Env) -> None:
    good = env.write(XFER_ROWS)
    out = _console(env.home, "eod", "check", str(good), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report) == JSON_KEYS
    assert report["valid"] is True and report["records"] == 4

    discrepant = env.write(XFER_ROWS[:3])
    out = _console(env.home, "eod", "check", str(discrepant), "--json")
    assert out.returncode == 3, out.stderr
    report = json.loads(out.stdout)
    assert set(report) == JSON_KEYS and report["missing_in_file"]

    discrepant.with_name(discrepant.name + ".sig").write_bytes(b"\x00" * 70)
    out = _console(env.home, "eod", "check", str(discrepant), "--json")
    assert out.returncode == 2
    report = json.loads(out.stdout)
    assert set(report) == JSON_KEYS and report["valid"] is False
    assert "signature" in report["reason"]
    assert discrepant.exists()  # check never moves or deletes input


@BOTH_STORES
def test_console_eod_export_writes_a_file_that_checks(env: Env, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = _console(env.home, "eod", "export", "--date", "2026-11-25", "--type", "XFER",
                   "--to", BROKER, "--out", str(out_dir))
    assert out.returncode == 0, out.stderr
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["XFER_GW01_GTJA_20261125.txt", "XFER_GW01_GTJA_20261125.txt.sig"]
    out = _console(env.home, "eod", "check", str(out_dir / files[0]), "--json")
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["valid"] is True and report["matched"] == 4, report


# --- a reversal of a payment or a subscription is no transfer (§8, issue 17 case 9) ---------
def _journaled(origin: str, biz_type: str, biz_sn: str, **kw: object) -> Record:
    """A request as the relay journals it: PENDING, answered later (see _answered)."""
    return rec(origin, biz_type, biz_sn, "PENDING", **kw)


#: GTJA's day with CCB: a transfer; a transfer GTJA reverses itself (its REV is listed);
#: an order GTJA reverses (XFER.REVERSE of a PAY.ORDER: no FundAcct, listed nowhere); a
#: subscription CCB never answered, reversed by the gateway (no reversal record).
REVERSAL_DAY = [
    _journaled(BROKER, "XFER.IN", "GTJAT1", amount_fen=10000, fund_acct=FUND, wallet_id=WALLET),
    _journaled(BROKER, "XFER.IN", "GTJAT2", amount_fen=500, fund_acct=FUND, wallet_id=WALLET),
    _journaled(BROKER, "XFER.REVERSE", "GTJAR2", amount_fen=500, fund_acct=FUND,
               wallet_id=WALLET, orig_type="XFER.IN", orig_from=BROKER, orig_biz_sn="GTJAT2"),
    _journaled(BROKER, "PAY.ORDER", "GTJAP1", amount_fen=9900, wallet_id=WALLET,
               order_no="OGTJAP1", product_code="L2DATA"),
    _journaled(BROKER, "XFER.REVERSE", "GTJAR1", amount_fen=9900, wallet_id=WALLET,
               orig_type="PAY.ORDER", orig_from=BROKER, orig_biz_sn="GTJAP1"),
    _journaled(BROKER, "OTC.SUBSCRIBE", "GTJAO1", amount_fen=50_000_000, wallet_id=CORP,
               order_no="OTCGTJAO1", product_code="SY001"),
]
#: How each was settled, in order, through Journal.update_record as the gateway does it.
REVERSAL_ANSWERS: list[tuple[str, str, dict[str, str]]] = [
    ("XFER.IN", "GTJAT1", {"state": "SUCCEEDED", "bank_sn": "BKT1", "sweep_ref": "SWT1"}),
    ("XFER.IN", "GTJAT2", {"state": "SUCCEEDED", "bank_sn": "BKT2", "sweep_ref": "SWT2"}),
    ("XFER.REVERSE", "GTJAR2", {"state": "SUCCEEDED", "bank_sn": "RVR2"}),
    ("XFER.IN", "GTJAT2", {"state": "REVERSED"}),
    ("PAY.ORDER", "GTJAP1", {"state": "SUCCEEDED", "bank_sn": "PYP1"}),
    ("XFER.REVERSE", "GTJAR1", {"state": "SUCCEEDED", "bank_sn": "RVR1"}),
    ("PAY.ORDER", "GTJAP1", {"state": "REVERSED"}),
    ("OTC.SUBSCRIBE", "GTJAO1", {"state": "REVERSING"}),
    ("OTC.SUBSCRIBE", "GTJAO1", {"state": "REVERSED"}),
]
#: CCB's own files of that day, as a bank following §8 writes them.
CCB_FILES = {
    "XFER": [["GTJAT1", "IN", FUND, WALLET, "100.00", "S", "BKT1", "SWT1", T],
             ["GTJAT2", "IN", FUND, WALLET, "5.00", "R", "BKT2", "SWT2", T],
             ["GTJAR2", "REV", FUND, WALLET, "5.00", "S", "RVR2", "", T]],
    "PAY": [["GTJAP1", "OGTJAP1", WALLET, "99.00", "R", "L2DATA", T]],
    "OTC": [["GTJAO1", "OTCGTJAO1", CORP, "500000.00", "R", "", T]],
}


def reversal_day(root: Path) -> Env:
    env = Env(root, REVERSAL_DAY)
    journal = Journal(env.home / "data" / "journal.sqlite3")
    for i, (biz_type, biz_sn, changes) in enumerate(REVERSAL_ANSWERS):
        journal.update_record((BROKER, biz_type, biz_sn), 1_790_000_100.0 + i, **changes)
    journal.flush()
    journal.close()
    return env


def _d_lines(path: Path) -> list[list[str]]:
    return [line.split("|")[1:] for line in path.read_text().splitlines() if line[:2] == "D|"]


@pytest.mark.parametrize("to", [BANK, BROKER])
def test_export_of_a_day_with_a_reversed_order_and_subscription_checks_clean(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], to: str) -> None:
    """`eod export --type XFER` lists the transfer's REV, not the order's reversal (no
    FundAcct): the file checks valid and clean (it was rejected, exit 2); the PAY and
    OTC exports show the reversed originals with Status R and check clean."""
    env = reversal_day(tmp_path)
    listed: dict[str, list[list[str]]] = {}
    for file_type in ("XFER", "PAY", "OTC"):
        assert export_command(env.home, "2026-11-25", file_type, to, tmp_path / "out") == 0
        path = Path(capsys.readouterr().out.strip())
        code, out = env.check(path, capsys)
        assert code == 0 and out["valid"], out
        assert out["missing_in_file"] == out["extra_in_file"] == out["mismatched"] == []
        listed[file_type] = _d_lines(path)
        assert out["matched"] == len(listed[file_type])
    assert [(r[0], r[1], r[5]) for r in listed["XFER"]] == [
        ("GTJAT1", "IN", "S"), ("GTJAT2", "IN", "R"), ("GTJAR2", "REV", "S")]
    assert [(r[0], r[4]) for r in listed["PAY"]] == [("GTJAP1", "R")]
    assert [(r[0], r[4]) for r in listed["OTC"]] == [("GTJAO1", "R")]


def test_a_banks_files_of_that_day_reconcile_clean_and_the_order_reversal_is_extra(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = reversal_day(tmp_path)
    for file_type, rows in CCB_FILES.items():
        code, out = env.check(env.write(rows, file_type), capsys)
        assert code == 0 and out["matched"] == len(rows), out
    # a bank listing the order's reversal as a transfer lists a record no XFER file has
    rev = ["GTJAR1", "REV", FUND, WALLET, "99.00", "S", "RVR1", "", T]
    code, out = env.check(env.write([*CCB_FILES["XFER"], rev]), capsys)
    assert code == 3 and out["extra_in_file"] == ["GTJAR1"] and out["matched"] == 3, out


def test_book_date_of_a_reversed_subscription_is_compared_where_both_hold_one(
        tmp_path: Path, env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """The gateway reversed GTJAO1 after a timeout and never learned its BookDate; CCB
    booked it before the reversal came: matched.  A subscription that succeeded keeps
    its BookDate compared, present or not."""
    day = reversal_day(tmp_path / "reversed")
    booked = [[*CCB_FILES["OTC"][0][:5], "2026-11-26", T]]
    code, out = day.check(day.write(booked, "OTC"), capsys)
    assert code == 0 and out["matched"] == 1, out
    for book_date in ("", "2026-11-27"):
        row = ["O1", "OR1", CORP, "1000000.00", "S", book_date, T]
        code, out = env.check(env.write([row], "OTC"), capsys)
        assert code == 3 and out["mismatched"] == [{"BizSn": "O1", "fields": {"BookDate": {
            "file": book_date, "journal": "2026-11-26"}}}], out


def test_records_of_day_leaves_out_the_reversal_of_an_order(tmp_path: Path) -> None:
    env = reversal_day(tmp_path)
    journal = Journal(env.home / "data" / "journal.sqlite3")
    try:
        got = journal.records_of_day("2026-11-25", (BROKER, BANK),
                                     ("XFER.IN", "XFER.OUT", "XFER.REVERSE"))
        assert [r.biz_sn for r in got] == ["GTJAT1", "GTJAT2", "GTJAR2"]
        assert journal.record(BROKER, "XFER.REVERSE", "GTJAR1") is not None  # kept, unlisted
    finally:
        journal.close()


def test_sim_banks_transfer_file_lists_reversals_of_transfers_only(tmp_path: Path) -> None:
    """The reference bank's XFER lines: GTJA's reversal of its transfer is a REV, its
    reversal of an order is not (the order's PAY line says R) — also in books kept
    before a reversal recorded what it reversed (only a transfer's has a FundAcct)."""
    book = BankBook(Ledger(tmp_path / "CCB-ledger.sqlite3"), BANK, lambda: "2026-11-25",
                    lambda: "2026-11-25T10:00:00.000+08:00")
    book.seed(BROKER)

    def request(kind: str, sender: str = BROKER, **body: str) -> None:
        head = Head(kind + ".REQ", f"{sender}{body['BizSn']}", sender, BANK,
                    "2026-11-25T10:00:00.000+08:00", trade_date="2026-11-25")
        answer = book.handle(Message(head, body, b""), {})
        assert answer is not None and answer["Result"] == "0000", answer

    wallet, fund = flows.WALLET, flows.FUND
    book.ledger.set_link(wallet, fund)
    request("XFER.IN", BizSn="GTJAT1", FundAcct=fund, WalletId=wallet, Amount="5.00", Ccy="CNY")
    request("XFER.REVERSE", BizSn="GTJAR2", OrigType="XFER.IN", OrigFrom=BROKER,
            OrigBizSn="GTJAT1", Amount="5.00")
    request("PAY.ORDER", BizSn="GTJAP1", OrderNo="OGTJAP1", WalletId=wallet, Amount="99.00",
            Ccy="CNY", ProductCode="L2DATA", ProductKind="LEVEL2", ServiceEnd="2099-12-31")
    request("XFER.REVERSE", BizSn="GTJAR1", OrigType="PAY.ORDER", OrigFrom=BROKER,
            OrigBizSn="GTJAP1", Amount="99.00")
    for _ in ("kept", "books of before"):
        files = book.eod_records("2026-11-25", BROKER, GW)
        assert [(r[0], r[1], r[5]) for r in files["XFER"]] == [("GTJAT1", "IN", "R"),
                                                               ("GTJAR2", "REV", "S")]
        assert [(r[0], r[4]) for r in files["PAY"]] == [("GTJAP1", "R")]
        book.ledger.db.execute("UPDATE op SET orig_type = NULL")


def _sim_bank_day(home: Any, gw: Any, sim_home: Path, eod_dir: Path) -> None:
    """GTJA's day with `gateway sim bank` CCB (which books GTJAO1 and never answers it);
    the sim writes its four end-of-day files into ``eod_dir`` as it stops."""
    bank = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--home", str(sim_home), "sim", "bank", "--connect",
         f"127.0.0.1:{gw.port}", "--gateway-cert", str(home.root / "keys" / "gateway.crt"),
         "--eod-dir", str(eod_dir), "--withhold", "GTJAO1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        gw.wait_for_log(r"CCB logged on as BANK", timeout=15)
        gw.wait_for_log(r"session key G\w+ installed")
        broker = gw.peer(BROKER).open_session()

        def ask(msg_type: str, fields: list[tuple[str, Any]], encrypt: tuple[str, ...] = ()
                ) -> str:
            return str(flows.call(broker, msg_type, fields, encrypt=encrypt).body["Result"])

        def reverse(sn: str, orig_type: str, orig_sn: str, amount: str) -> str:
            return ask("XFER.REVERSE.REQ", [("BizSn", sn), ("OrigType", orig_type),
                                            ("OrigFrom", BROKER), ("OrigBizSn", orig_sn),
                                            ("Amount", amount)])

        sign = [(k, v) for k, v in flows.sign_fields("GTJAS1") if k != "Phone"]
        assert ask("CTS.SIGN.REQ", sign, encrypt=("CustName", "IdNo")) == "0000"
        assert ask("XFER.IN.REQ", flows.xfer("GTJAT1", "100.00")) == "0000"
        assert ask("XFER.IN.REQ", flows.xfer("GTJAT2", "5.00")) == "0000"
        assert reverse("GTJAR2", "XFER.IN", "GTJAT2", "5.00") == "0000"
        assert ask("PAY.ORDER.REQ", flows.pay("GTJAP1", "2099-12-31")) == "0000"
        assert reverse("GTJAR1", "PAY.ORDER", "GTJAP1", "99.00") == "0000"
        assert ask("OTC.SUBSCRIBE.REQ", flows.otc("GTJAO1")) == "B330"
        gw.wait_for_log(r"reversal of OTC.SUBSCRIBE GTJAO1 from GTJA acknowledged")
    finally:
        bank.send_signal(signal.SIGTERM)
        assert bank.wait(30) == 0


def _fingerprint(gw_home: Path, path: Path) -> Any:
    """The fast path alone on a peer's file (raises fingerprint.Declined)."""
    name = parse_name(path.name)
    key = signer_key(KeyStore(gw_home / "keys"), name.from_party)
    with open(path, "rb") as f:
        return fingerprint.prove(gw_home / "data" / "journal.sqlite3", GW, name, f, key,
                                 path.with_name(path.name + ".sig").read_bytes(), _header)


#: What each file of that live day lists: BizSn and Status.
LIVE_DAY = {"XFER": ["GTJAT1 S", "GTJAT2 R", "GTJAR2 S"], "SIGN": ["GTJAS1 S"],
            "PAY": ["GTJAP1 R"], "OTC": ["GTJAO1 R"]}


def test_a_live_day_with_a_reversed_order_and_subscription_reconciles_on_both_sides(
        home, start_gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Over loopback, a gateway and `gateway sim bank`: GTJA pays an order and reverses
    it, subscribes (CCB books it, never answers: the gateway reverses it), and moves and
    reverses a transfer.  The bank's own four files and the gateway's XFER/PAY/OTC
    exports all check valid with no discrepancy, on the fingerprint path and the exact
    one alike."""
    sim_home, eod_dir = tmp_path / "ccb", tmp_path / "eod"
    KeyStore(home.root / "keys").add_peer(BANK, "BANK", ensure_key(sim_home, BANK).read_bytes(),
                                          replace=True)
    _sim_bank_day(home, start_gateway(**flows.FAST_REVERSALS), sim_home, eod_dir)
    db = sqlite3.connect(home.root / "data" / "journal.sqlite3")
    (day,), = db.execute("SELECT DISTINCT trade_date FROM record").fetchall()
    db.close()
    bank_files = sorted(eod_dir.glob("*.txt"))
    exports = []
    for file_type in ("XFER", "PAY", "OTC"):
        assert export_command(home.root, day, file_type, BANK, tmp_path / "gw") == 0
        exports.append(Path(capsys.readouterr().out.strip()))
    assert [p.name.split("_")[0] for p in bank_files] == ["OTC", "PAY", "SIGN", "XFER"]
    for path in (*bank_files, *exports):
        file_type = path.name.split("_")[0]
        status_at = 4 if file_type in ("PAY", "OTC") else 5
        assert [f"{r[0]} {r[status_at]}" for r in _d_lines(path)] == LIVE_DAY[file_type]
    for path in bank_files[1:]:
        assert _fingerprint(home.root, path).matched == len(_d_lines(path)), path.name
    # CCB booked the subscription (a BookDate) before the gateway's reversal reached it;
    # the gateway, its answer never taken, has none: matched by the exact path alone
    assert _d_lines(bank_files[0])[0][5] != ""
    with pytest.raises(fingerprint.Declined):
        _fingerprint(home.root, bank_files[0])
    reports = {p: as_dict(check_file(home.root, p)) for p in (*bank_files, *exports)}
    for path, report in reports.items():
        assert report["valid"] and report["matched"] == len(_d_lines(path)), report
        assert [] == report["missing_in_file"] == report["extra_in_file"] == report["mismatched"]
    monkeypatch.setattr(fingerprint, "available", lambda *a: False)
    assert reports == {p: as_dict(check_file(home.root, p)) for p in reports}
