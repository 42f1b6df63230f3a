"""``gateway archive --out DIR`` and ``gateway archive verify DIR`` (PROTOCOL §11).

The archive is taken from a separate process while a real gateway serves and business
flows; it is checked with the real openssl and sha256sum command-line tools and with
``archive verify``, then tampered with (a byte changed, a file deleted, a file added, a
bad signature), each of which ``verify`` must name and exit 2 on."""
from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import BANK, BROKER, GatewayHome
from flows import answer, call, signed, xfer

GATEWAY = [sys.executable, "-m", "gateway"]


def run(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    pre = ["--home", str(home)] if home is not None else []
    return subprocess.run([*GATEWAY, *pre, *args], capture_output=True, text=True, timeout=120)


def tree(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*")}


@pytest.fixture
def archived(tmp_path: Path, home: GatewayHome, day) -> Path:  # type: ignore[no-untyped-def]
    """An archive written while the gateway relays transfers from another thread."""
    gw, bank, broker = day
    signed(bank, broker)
    for i in range(3):
        assert call(broker, "XFER.IN.REQ", xfer(f"{BROKER}A{i}"), bank=bank).body["Result"] \
            == "0000"
    stop = threading.Event()
    done: list[str] = []

    def load() -> None:
        i = 0
        while not stop.is_set():
            sn = f"{BROKER}L{i}"
            msg_id = broker.send("XFER.IN.REQ", xfer(sn), to=BANK)
            answer(bank)
            assert broker._answer_to(msg_id, "XFER.IN.REQ").body["Result"] == "0000"
            done.append(sn)
            i += 1

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        while len(done) < 3:  # the load is flowing before the archive starts
            threading.Event().wait(0.05)
        out = tmp_path / "exit"
        result = run("archive", "--out", str(out), home=home.root)
        assert result.returncode == 0, result.stderr
        assert "MANIFEST signed" in result.stdout
    finally:
        stop.set()
        worker.join(30)
    assert len(done) > 3  # business went on while the copy was taken
    return out


def test_archive_taken_while_serving_is_a_consistent_signed_copy(
        archived: Path, home: GatewayHome, tmp_path: Path) -> None:
    files = tree(archived)
    names = {n for n, p in files.items() if p.is_file()}
    assert {"MANIFEST", "MANIFEST.sig", "data/journal.sqlite3", "gateway.toml",
            "keys/gateway.crt", "keys/ca.crt", "keys/peers.json", f"keys/peers/{BANK}.pem",
            f"keys/peers/{BROKER}.pem"} <= names
    # never a private key: not by name, not by content
    assert not {"keys/gateway.key", "keys/storage.key", "keys/ca.key", "keys/ops.token"} & names
    assert not [n for n in names if b"PRIVATE KEY" in files[n].read_bytes()]
    # owner-only
    for name, path in files.items():
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (name, oct(mode))
    assert stat.S_IMODE(os.stat(archived).st_mode) == 0o700
    # the journal copy is one self-contained database, intact, with the business in it
    assert not (archived / "data" / "journal.sqlite3-wal").exists()
    db = sqlite3.connect(f"file:{archived / 'data' / 'journal.sqlite3'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        sns = {sn for sn, in db.execute("SELECT biz_sn FROM record")}
        assert {f"{BROKER}A0", f"{BROKER}A1", f"{BROKER}A2", f"{BROKER}L0"} <= sns
        states = {st for st, in db.execute("SELECT DISTINCT state FROM record")}
        assert states <= {"PENDING", "SUCCEEDED"}
    finally:
        db.close()
    # MANIFEST: one sha256sum line per file but itself and its signature
    lines = (archived / "MANIFEST").read_text().splitlines()
    assert [line.split("  ", 1)[1] for line in lines] == sorted(
        names - {"MANIFEST", "MANIFEST.sig"})  # every file once, sorted by name
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "--check", "--strict", "MANIFEST"],
                               cwd=archived, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_manifest_signature_verifies_with_openssl(archived: Path, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command-line tool is not installed")
    pub = tmp_path / "gw.pub"
    subprocess.run([openssl, "x509", "-pubkey", "-noout", "-in",
                    str(archived / "keys" / "gateway.crt"), "-out", str(pub)], check=True)
    ok = subprocess.run([openssl, "dgst", "-sha256", "-verify", str(pub), "-signature",
                         str(archived / "MANIFEST.sig"), str(archived / "MANIFEST")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout, ok.stdout + ok.stderr
    (tmp_path / "M").write_bytes((archived / "MANIFEST").read_bytes() + b"\n")
    bad = subprocess.run([openssl, "dgst", "-sha256", "-verify", str(pub), "-signature",
                          str(archived / "MANIFEST.sig"), str(tmp_path / "M")],
                         capture_output=True, text=True)
    assert bad.returncode != 0


def test_archive_verify_passes_an_intact_archive(archived: Path, home: GatewayHome) -> None:
    result = run("archive", "verify", str(archived))
    assert result.returncode == 0, result.stderr
    assert "intact" in result.stdout and "fingerprint" in result.stdout
    pinned = run("archive", "verify", str(archived), "--cert",
                 str(home.root / "keys" / "gateway.crt"))
    assert pinned.returncode == 0, pinned.stderr


def _copy(archived: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(archived, target)
    return target


def test_archive_verify_names_each_kind_of_tampering(archived: Path, tmp_path: Path) -> None:
    changed = _copy(archived, tmp_path, "changed")
    journal = changed / "data" / "journal.sqlite3"
    data = bytearray(journal.read_bytes())
    data[len(data) // 2] ^= 0x01
    journal.write_bytes(bytes(data))

    missing = _copy(archived, tmp_path, "missing")
    (missing / "keys" / "peers.json").unlink()

    extra = _copy(archived, tmp_path, "extra")
    (extra / "keys" / "late.pem").write_text("added after the archive was signed\n")

    badsig = _copy(archived, tmp_path, "badsig")
    sig = bytearray((badsig / "MANIFEST.sig").read_bytes())
    sig[-1] ^= 0x01
    (badsig / "MANIFEST.sig").write_bytes(bytes(sig))

    relisted = _copy(archived, tmp_path, "relisted")  # a file changed and MANIFEST with it
    (relisted / "gateway.toml").write_text("[gateway]\nparty = \"EVIL\"\n")
    evil = hashlib.sha256((relisted / "gateway.toml").read_bytes()).hexdigest()
    lines = [f"{evil}  gateway.toml" if line.endswith("  gateway.toml") else line
             for line in (relisted / "MANIFEST").read_text().splitlines()]
    (relisted / "MANIFEST").write_text("\n".join(lines) + "\n")

    nosig = _copy(archived, tmp_path, "nosig")
    (nosig / "MANIFEST.sig").unlink()

    expected = {changed: "changed: data/journal.sqlite3", missing: "missing: keys/peers.json",
                extra: "extra: keys/late.pem", badsig: "bad signature",
                relisted: "bad signature", nosig: "missing: MANIFEST.sig"}
    for folder, problem in expected.items():
        result = run("archive", "verify", str(folder))
        assert result.returncode == 2, (folder.name, result.stdout, result.stderr)
        assert problem in result.stderr, (folder.name, result.stderr)
        assert "NOT intact" in result.stderr
    # the relisted archive's files all match its MANIFEST: only the signature tells
    assert "changed:" not in run("archive", "verify", str(relisted)).stderr


def test_archive_verify_with_another_gateways_certificate_fails(
        archived: Path, tmp_path: Path) -> None:
    from conftest import make_home

    other = make_home(tmp_path / "other")
    result = run("archive", "verify", str(archived), "--cert",
                 str(other.root / "keys" / "gateway.crt"))
    assert result.returncode == 2 and "bad signature" in result.stderr


def test_archive_refuses_a_folder_that_is_not_empty(home: GatewayHome, tmp_path: Path,
                                                    start_gateway) -> None:  # type: ignore[no-untyped-def]
    gw = start_gateway()
    gw.wait_for_log("serving on")
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run("archive", "--out", str(out), home=home.root)
    assert result.returncode == 1 and "not empty" in result.stderr
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    usage = run("archive", home=home.root)
    assert usage.returncode == 64 and "--out DIR" in usage.stderr


def test_archive_keeps_next_and_retired_public_keys_and_no_private_one(
        home: GatewayHome, tmp_path: Path, start_gateway) -> None:  # type: ignore[no-untyped-def]
    assert run("key", "rotate", home=home.root).returncode == 0
    (home.root / "keys" / "ops.token").write_text("0" * 64)
    gw = start_gateway()
    gw.wait_for_log("serving on")
    out = tmp_path / "exit"
    result = run("archive", "--out", str(out), home=home.root)
    assert result.returncode == 0, result.stderr
    names = set(tree(out))
    assert "keys/gateway.next.crt" in names
    assert not {"keys/gateway.next.key", "keys/ops.token"} & names
    assert run("archive", "verify", str(out)).returncode == 0


PG_TOML = '[journal]\nurl = "postgresql://gw@db.invalid/sbdx"\n'


def test_archive_of_a_postgresql_journal_says_pg_dump_then_archives_config_and_keys(
        home: GatewayHome, tmp_path: Path) -> None:
    """The journal in PostgreSQL is not copied: exit 1, one line naming pg_dump and
    --without-journal, nothing written; with --without-journal the configuration and
    public keys, signed, and no journal (nothing connects to the database)."""
    (home.root / "gateway.toml").write_text(PG_TOML, encoding="utf-8")
    out = tmp_path / "exit"
    refused = run("archive", "--out", str(out), home=home.root)
    assert refused.returncode == 1
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("gateway archive: the journal is in PostgreSQL ([journal] url)")
    assert "pg_dump" in line and "--without-journal" in line
    assert not out.exists()
    made = run("archive", "--out", str(out), "--without-journal", home=home.root)
    assert made.returncode == 0, made.stderr
    assert "(configuration and keys, no journal)" in made.stdout
    names = set(tree(out))
    assert "gateway.toml" in names and "keys/gateway.crt" in names
    assert not any(n.startswith("data") for n in names), names
    assert run("archive", "verify", str(out)).returncode == 0
