"""Files at the edges (issue 18, defects 3-5): the drop-folder watcher never follows a
link and never reads a `.sig` whole; what the gateway and the sims keep is owner-only
(PROTOCOL §9: regular files under data/ 0600, folders 0700)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_eod import BANK, CREATED, DAY, NAME, XFER_ROWS, Env

from gateway.eod import check_command, watch_command, write_file
from gateway.eod.signing import MAX_SIGNATURE_BYTES
from gateway.journal import Journal
from gateway.keystore import KeyStore
from gateway.sim.ledger import Ledger
from gateway.sim.runtime import ensure_key

import flows
from conftest import BROKER

SPARSE_SIG_BYTES = 600 << 20
#: What a check of one small file may take, whole process (Python, cryptography,
#: SQLite): well under the 600 MiB a sparse .sig used to cost.
PROCESS_RSS_LIMIT_KIB = 200 << 10


@pytest.fixture()
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture()
def wide_umask() -> Iterator[None]:
    """The usual login umask: what the code itself creates must still be owner-only."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def open_modes(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (itself included) whose mode is not owner-only:
    folders must be 0700, regular files 0600."""
    wrong = {}
    for p in [root, *root.rglob("*")]:
        want = 0o700 if p.is_dir() else 0o600
        if mode(p) != want:
            wrong[str(p.relative_to(root.parent))] = f"{mode(p):04o}"
    return wrong


def _console(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=120)


def _measured(home: Path, *args: str) -> tuple[int, str, int]:
    """Run ``gateway --home HOME ARGS``; its exit code, stdout and peak RSS (KiB)."""
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--home", str(home), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, out, usage.ru_maxrss


def staged(env: Env, tmp_path: Path) -> Path:
    """A valid, reconciling file written outside the drop folder."""
    return env.write(XFER_ROWS, out=tmp_path / "stage")


def drop(env: Env, source: Path, name: str = NAME) -> Path:
    shutil.copy(source, env.drop / name)
    shutil.copy(source.with_name(source.name + ".sig"), env.drop / (name + ".sig"))
    return env.drop / name


def report(folder: Path, name: str = NAME) -> dict[str, object]:
    return json.loads((folder / (name + ".report.json")).read_text())


# --- defect 3: the watcher follows no link ------------------------------------------------
def test_a_symlinked_rejected_folder_receives_nothing(
        env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The attack of the issue: `rejected -> HOME`, then a `gateway.toml` with a `.sig`
    dropped; the watcher refuses to move anything, says what to do, and keeps going."""
    (env.drop / "rejected").symlink_to(env.home, target_is_directory=True)
    (env.drop / "gateway.toml").write_text('[gateway]\nlisten = "0.0.0.0:7700"\n')
    (env.drop / "gateway.toml.sig").write_bytes(b"x")
    for _ in range(2):  # it keeps running, and keeps refusing
        assert watch_command(env.home, env.drop, once=True) == 1  # nothing sorted
        out = capsys.readouterr().out
        assert "error: cannot sort files: rejected in" in out and "symbolic link" in out
        assert f"rm {env.drop}/rejected && mkdir -m 700 {env.drop}/rejected" in out
    assert not (env.home / "gateway.toml").exists()
    assert (env.drop / "gateway.toml").exists() and (env.drop / "gateway.toml.sig").exists()
    (env.drop / "rejected").unlink()  # the operator's fix: a real folder
    assert watch_command(env.home, env.drop, once=True) == 2
    assert report(env.drop / "rejected", "gateway.toml")["reason"].startswith("name:")
    assert not (env.home / "gateway.toml").exists()


def test_a_symlinked_accepted_folder_receives_nothing(
        env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (env.drop / "accepted").symlink_to(elsewhere, target_is_directory=True)
    drop(env, staged(env, tmp_path))
    assert watch_command(env.home, env.drop, once=True) == 1
    assert "accepted in" in capsys.readouterr().out
    assert list(elsewhere.iterdir()) == [] and (env.drop / NAME).exists()


def test_an_accepted_folder_writable_by_others_is_refused(
        env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another user who can write accepted/ could change a file after it was judged."""
    (env.drop / "accepted").mkdir()
    os.chmod(env.drop / "accepted", 0o777)
    drop(env, staged(env, tmp_path))
    assert watch_command(env.home, env.drop, once=True) == 1
    assert "not the watcher's own folder" in capsys.readouterr().out
    assert (env.drop / NAME).exists() and not (env.drop / "accepted" / NAME).exists()


def test_a_symlinked_clearing_file_is_rejected_as_the_link(env: Env, tmp_path: Path) -> None:
    """A link to a valid file was checked through the link and accepted, so the
    accepted "file" could change afterwards.  Now the link itself goes to rejected/."""
    source = staged(env, tmp_path)
    original = source.read_bytes()
    (env.drop / NAME).symlink_to(source)
    shutil.copy(source.with_name(NAME + ".sig"), env.drop / (NAME + ".sig"))
    assert watch_command(env.home, env.drop, once=True) == 2
    rejected = env.drop / "rejected"
    assert report(rejected)["reason"] == (
        f"file: {NAME} is a symbolic link; the watcher does not follow links: drop the "
        "file itself (the link was moved, not followed)")
    assert (rejected / NAME).is_symlink() and (rejected / (NAME + ".sig")).is_file()
    assert not (env.drop / "accepted").exists()
    assert source.read_bytes() == original  # the target was not touched


def test_a_symlinked_sig_is_rejected(env: Env, tmp_path: Path) -> None:
    source = staged(env, tmp_path)
    shutil.copy(source, env.drop / NAME)
    (env.drop / (NAME + ".sig")).symlink_to(source.with_name(NAME + ".sig"))
    assert watch_command(env.home, env.drop, once=True) == 2
    rejected = env.drop / "rejected"
    assert report(rejected)["reason"].startswith(
        f"legitimacy: signature file {NAME}.sig is a symbolic link")
    assert (rejected / (NAME + ".sig")).is_symlink() and not (env.drop / "accepted").exists()


def test_a_hard_linked_clearing_file_is_rejected(env: Env, tmp_path: Path) -> None:
    """A second name for the file (kept by whoever dropped it) could change it after
    it is accepted."""
    source = staged(env, tmp_path)
    os.link(source, env.drop / NAME)
    shutil.copy(source.with_name(NAME + ".sig"), env.drop / (NAME + ".sig"))
    assert watch_command(env.home, env.drop, once=True) == 2
    assert report(env.drop / "rejected")["reason"].startswith(f"file: {NAME} has 2 links")


def test_a_file_swapped_after_its_check_is_not_what_is_accepted(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever writes the folder renames another file over NAME once the check is done
    (here: while the report is rendered); the accepted file is the one checked."""
    import gateway.eod.watch as watch

    source = staged(env, tmp_path)
    drop(env, source)
    forged = tmp_path / "forged"
    forged.write_bytes(source.read_bytes().replace(b"100.50", b"999.99"))
    real_as_json = watch.as_json

    def swap_then_render(report: object) -> str:
        if forged.exists():
            os.replace(forged, env.drop / NAME)
        return real_as_json(report)  # type: ignore[arg-type]

    monkeypatch.setattr(watch, "as_json", swap_then_render)
    assert watch_command(env.home, env.drop, once=True) == 0
    assert report(env.drop / "accepted")["valid"] is True
    assert (env.drop / "accepted" / NAME).read_bytes() == source.read_bytes()


def test_a_planted_checking_folder_is_refused(
        env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (env.drop / ".checking").symlink_to(elsewhere, target_is_directory=True)
    drop(env, staged(env, tmp_path))
    assert watch_command(env.home, env.drop, once=True) == 1
    assert ".checking in" in capsys.readouterr().out
    assert list(elsewhere.iterdir()) == [] and (env.drop / NAME).exists()


def test_a_crash_leaves_files_in_checking_and_the_next_sweep_sorts_them(
        env: Env, tmp_path: Path) -> None:
    source = staged(env, tmp_path)
    checking = env.drop / ".checking"
    checking.mkdir(mode=0o700)
    shutil.copy(source, checking / NAME)  # stopped between the two moves into .checking
    shutil.copy(source.with_name(NAME + ".sig"), env.drop / (NAME + ".sig"))
    assert watch_command(env.home, env.drop, once=True) == 0
    assert report(env.drop / "accepted")["valid"] is True
    assert sorted(p.name for p in env.drop.iterdir()) == ["accepted"]


def test_a_crash_between_the_moves_out_of_checking_is_finished(env: Env,
                                                               tmp_path: Path) -> None:
    source = staged(env, tmp_path)
    accepted, checking = env.drop / "accepted", env.drop / ".checking"
    accepted.mkdir()
    checking.mkdir(mode=0o700)
    shutil.copy(source, accepted / NAME)  # the file moved on, its .sig not yet
    shutil.copy(source.with_name(NAME + ".sig"), checking / (NAME + ".sig"))
    assert watch_command(env.home, env.drop, once=True) == 0
    assert (accepted / (NAME + ".sig")).exists()
    assert sorted(p.name for p in env.drop.iterdir()) == ["accepted"]


def test_eod_check_of_a_link_follows_it(env: Env, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The operator named the file: a link is followed (docs/eod.md)."""
    source = staged(env, tmp_path)
    link = tmp_path / "link" / NAME
    link.parent.mkdir()
    link.symlink_to(source)
    link.with_name(NAME + ".sig").symlink_to(source.with_name(NAME + ".sig"))
    assert check_command(env.home, link, as_json=True) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True


# --- defect 4: a .sig is read bounded -----------------------------------------------------
def sparse_sig(path: Path) -> Path:
    sig = path.with_name(path.name + ".sig")
    with open(sig, "wb") as f:
        f.truncate(SPARSE_SIG_BYTES)  # sparse: no disk used
    return sig


SPARSE_REASON = (f"legitimacy: signature file {NAME}.sig is {SPARSE_SIG_BYTES} bytes; "
                 f"a signature is at most {MAX_SIGNATURE_BYTES} bytes")


def test_watch_rejects_a_huge_sig_without_reading_it(env: Env) -> None:
    sparse_sig(env.write(XFER_ROWS))
    code, out, rss_kib = _measured(env.home, "eod", "watch", str(env.drop), "--once")
    assert code == 2, out
    assert report(env.drop / "rejected")["reason"] == SPARSE_REASON
    assert f"rejected (exit 2) -> rejected: {SPARSE_REASON}" in out
    assert rss_kib < PROCESS_RSS_LIMIT_KIB


def test_eod_check_rejects_a_huge_sig_without_reading_it(env: Env) -> None:
    path = env.write(XFER_ROWS)
    sparse_sig(path)
    code, out, rss_kib = _measured(env.home, "eod", "check", str(path), "--json")
    assert code == 2 and json.loads(out)["reason"] == SPARSE_REASON
    assert rss_kib < PROCESS_RSS_LIMIT_KIB


def test_a_sig_of_the_largest_size_is_still_judged(env: Env,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = env.write(XFER_ROWS)
    path.with_name(NAME + ".sig").write_bytes(b"\x00" * MAX_SIGNATURE_BYTES)
    assert check_command(env.home, path, as_json=True) == 2
    assert "does not verify" in json.loads(capsys.readouterr().out)["reason"]


# --- defect 5: owner-only files at rest -------------------------------------------------------
def test_a_journal_and_ledger_are_owner_only_whatever_the_umask(
        tmp_path: Path, wide_umask: None) -> None:
    """Library use (no `gateway` command's umask): the code names the modes itself, and
    SQLite's -wal and -shm follow the database file's."""
    journal = Journal(tmp_path / "gw" / "data" / "journal.sqlite3")
    ledger = Ledger(tmp_path / "sim" / "data" / "CCB-ledger.sqlite3")
    try:
        journal.flush()
        for home in ("gw", "sim"):
            names = sorted(p.name for p in (tmp_path / home / "data").iterdir())
            assert any(n.endswith("-wal") for n in names) and any(
                n.endswith("-shm") for n in names), names
            assert open_modes(tmp_path / home) == {}
    finally:
        journal.close()
        ledger.db.close()


def test_an_open_data_folder_is_narrowed_with_a_warning(
        tmp_path: Path, wide_umask: None, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    db = data / "journal.sqlite3"
    db.touch(mode=0o644)
    Journal(db).close()
    assert open_modes(data) == {}
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert f"{data} was 0755, narrowed to 0700" in warned
    assert f"{db} was 0644, narrowed to 0600" in warned


def test_eod_files_the_watcher_and_writer_make_are_owner_only(
        env: Env, tmp_path: Path, wide_umask: None) -> None:
    out = tmp_path / "new" / "out"
    path = write_file(out, "XFER", BANK, BROKER, DAY, XFER_ROWS, env.bank, CREATED)
    assert open_modes(tmp_path / "new") == {}
    drop(env, path)
    (env.drop / "X.txt").write_text("junk")
    (env.drop / "X.txt.sig").write_bytes(b"x")
    os.chmod(env.drop / "X.txt", 0o644)
    assert watch_command(env.home, env.drop, once=True) == 2
    for sub in ("accepted", "rejected"):
        assert mode(env.drop / sub) == 0o700, sub
        reports = list((env.drop / sub).glob("*.report.*"))
        assert len(reports) == 2 and {mode(r) for r in reports} == {0o600}, sub
    assert mode(env.drop / "rejected" / "X.txt") == 0o644  # a dropped file is moved as is


def test_gateway_init_makes_data_owner_only(tmp_path: Path) -> None:
    assert _console(tmp_path / "gw", "init").returncode == 0
    assert mode(tmp_path / "gw" / "data") == 0o700


def test_serve_keeps_data_owner_only_wal_and_shm_included(day) -> None:  # type: ignore[no-untyped-def]
    gw, bank, broker = day
    flows.signed(bank, broker)
    data = gw.home.root / "data"
    names = {p.name for p in data.iterdir()}
    assert {"journal.sqlite3-wal", "journal.sqlite3-shm"} <= names, names
    assert open_modes(data) == {}
    bank.close()
    broker.close()
    assert gw.stop() == 0
    assert open_modes(data) == {}


def test_serve_narrows_an_open_data_folder_at_start(home, start_gateway,  # type: ignore[no-untyped-def]
                                                    wide_umask: None) -> None:
    data = home.root / "data"
    Journal(data / "journal.sqlite3").close()
    os.chmod(data, 0o755)
    os.chmod(data / "journal.sqlite3", 0o644)
    gw = start_gateway()
    assert open_modes(data) == {}
    gw.wait_for_log(r"journal.sqlite3 was 0644, narrowed to 0600")


def test_a_sim_keeps_its_home_owner_only(home, start_gateway,  # type: ignore[no-untyped-def]
                                         tmp_path: Path) -> None:
    """`gateway sim bank` run as a process: its data/ (ledger with -wal/-shm), keys/ and
    the end-of-day folder and files it writes."""
    bank_home, eod = tmp_path / "ccb", tmp_path / "eod"
    KeyStore(home.root / "keys").add_peer(BANK, "BANK", ensure_key(bank_home, BANK).read_bytes(),
                                          replace=True)
    gw = start_gateway()
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--home", str(bank_home), "sim", "bank", "--connect",
         f"127.0.0.1:{gw.port}", "--gateway-cert", str(home.root / "keys" / "gateway.crt"),
         "--eod-dir", str(eod)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        gw.wait_for_log(r"CCB logged on as BANK", timeout=20)
        names = {p.name for p in (bank_home / "data").iterdir()}
        assert {f"{BANK}-ledger.sqlite3-wal", f"{BANK}-ledger.sqlite3-shm"} <= names, names
        assert open_modes(bank_home / "data") == {}
        assert mode(bank_home / "keys") == 0o700  # its public key file inside may be 0644
    finally:
        sim.send_signal(signal.SIGTERM)
        out, _ = sim.communicate(timeout=30)
    assert sim.returncode == 0, out
    assert "eod: wrote" in out and any(eod.iterdir())
    assert open_modes(bank_home / "data") == {} and open_modes(eod) == {}
