"""PROTOCOL §11 ``[journal] retention_days``: the message evidence of records final for
longer than that moves to ``data/archive/YYYYMM.sqlite3``; idempotency, replay defence,
give-back sums and ``journal show`` do not need it back.

In process (tests/inproc.py): a real Gateway, journal and archive files, real keys and
frames; the gateway's clock is moved past a retention of 60 s (a fraction of a day: the
peers stamp their messages from the wall clock, which the §5 skew check compares)."""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inproc import Clock, Rig, fast_config

from gateway import givebacks, records
from gateway.config import Config, ConfigError, JournalSettings, from_mapping, load
from gateway.evidencearchive import EvidenceArchive, month_of
from gateway.journalshow import show_command

from conftest import BANK, BROKER, make_home
from flows import sign_fields, xfer
from peer import Frame, TestPeer

RETENTION = 60.0  # seconds
SETTINGS = JournalSettings(RETENTION / 86400)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    home = make_home(tmp_path / "gw")
    config = fast_config(journal=SETTINGS, reversal_retry_max_seconds=1.0)
    r = Rig(home, config, Clock(time.time()), TestPeer(BANK, "BANK", home.keys[BANK], port=0),
            TestPeer(BROKER, "BROKER", home.keys[BROKER], port=0))
    yield r
    r.close()


def business(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if not f.type.startswith("SYS.")]


def relay(rig: Rig, msg_type: str, fields: list[tuple[str, Any]], result: str | None = "0000",
          **extra: str) -> tuple[str, Frame | None]:
    """The broker sends; the bank answers with ``result`` (None: never); the broker's
    answer (None if none came yet)."""
    msg_id = rig.broker.send(msg_type, fields, to=BANK,
                             encrypt=("CustName", "IdNo", "Phone")
                             if msg_type == "CTS.SIGN.REQ" else ())
    req = business(rig.bank.take())[-1]
    if result is not None:
        body = [("Result", result), ("ResultText", "ok"), ("BizSn", req.body["BizSn"]),
                *extra.items()]
        rig.bank.send(req.type.replace(".REQ", ".RSP"), body, to=BROKER,
                      ref=req.head("MsgId"))
    got = [f for f in rig.broker.take() if f.head("RefId") == msg_id]
    return msg_id, (got[0] if got else None)


def journal_ids(rig: Rig, msg_id: str) -> list[int]:
    assert rig.journal is not None
    return [row["id"] for row in rig.journal.messages(msg_id)]


def archived_ids(rig: Rig, msg_id: str) -> list[int]:
    return [row.id for row, _ in EvidenceArchive(rig.journal_path.parent / "archive")
            .messages(msg_id)]


def all_ids(path: Path) -> set[int]:
    ids = set()
    with sqlite3.connect(path) as db:
        ids |= {i for i, in db.execute("SELECT id FROM message")}
    for month in EvidenceArchive(path.parent / "archive").months():
        with sqlite3.connect(path.parent / "archive" / f"{month}.sqlite3") as db:
            ids |= {i for i, in db.execute("SELECT id FROM message")}
    return ids


def day_of_business(rig: Rig) -> dict[str, str]:
    """A signed agreement, a transfer in that succeeds (T1), one that the bank refuses
    (T2), and one the bank never answers (T3): it times out into the gateway's reversal
    queue, which the bank does not acknowledge either, so T3 stays REVERSING."""
    ids: dict[str, str] = {}
    ids["S1"], rsp = relay(rig, "CTS.SIGN.REQ", sign_fields("GTJAS1"), AgreementNo="AG1")
    assert rsp is not None and rsp.body["Result"] == "0000"
    ids["T1"], rsp = relay(rig, "XFER.IN.REQ", xfer("GTJAT1", "100.00"), BankSn="B1",
                           SweepRef="W1")
    assert rsp is not None and rsp.body["Result"] == "0000"
    ids["T2"], rsp = relay(rig, "XFER.IN.REQ", xfer("GTJAT2", "7.00"), "B310")
    assert rsp is not None and rsp.body["Result"] == "B310"
    ids["T3"], rsp = relay(rig, "XFER.IN.REQ", xfer("GTJAT3", "9.00"), None)
    assert rsp is None
    rig.clock.advance(rig.config.relay_timeout_seconds + 0.5)
    rig.tick()
    assert [f.body["Result"] for f in rig.broker.take() if f.head("RefId") == ids["T3"]] \
        == ["B330"]
    rig.bank.take()  # the gateway's reversal of T3: never answered
    return ids


def settle(rig: Rig, ticks: int, seconds: float) -> None:
    """Ticks ``seconds`` apart, each waiting for the retention's job it started."""
    for _ in range(ticks):
        rig.tick()
        if rig.gateway.retention is not None:
            rig.gateway.retention.wait()
        rig.clock.advance(seconds)


def past_retention(rig: Rig) -> None:
    """Move the clock past the retention and let the gateway's ticks run its passes
    (one every retention / 24 = 2.5 s)."""
    rig.clock.advance(RETENTION + 5)
    settle(rig, 12, 0.5)
    rig.bank.take()


def test_evidence_of_long_final_records_moves_and_open_ones_stay(
        rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    ids = day_of_business(rig)
    before = all_ids(rig.journal_path)
    for name in ("S1", "T1", "T2", "T3"):
        assert len(journal_ids(rig, ids[name])) >= 2 and not archived_ids(rig, ids[name])
    with caplog.at_level(logging.INFO, logger="gateway.retention"):
        past_retention(rig)
    for name in ("S1", "T1", "T2"):  # final for over the retention: moved, each once
        moved = archived_ids(rig, ids[name])
        assert not journal_ids(rig, ids[name]) and len(moved) == len(set(moved)) >= 2, name
    assert len(journal_ids(rig, ids["T3"])) >= 2  # REVERSING: still in the journal
    assert not archived_ids(rig, ids["T3"])
    assert all_ids(rig.journal_path) >= before  # nothing lost
    # the records, their answers and the remembered MsgIds all stay
    assert rig.journal is not None
    t1 = rig.journal.record(BROKER, "XFER.IN", "GTJAT1")
    assert t1 is not None and t1.state == records.SUCCEEDED and t1.response_xml
    db = rig.journal.uow.connection
    assert db.execute("SELECT count(*) FROM seen_msg_id WHERE msg_id=?",
                      (ids["T1"],)).fetchone()[0] == 1
    # one month file, owner-only, and a log line per move naming it
    folder = rig.journal_path.parent / "archive"
    month = month_of(rig.clock())
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    for path in folder.glob("*.sqlite3"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    moves = [r.getMessage() for r in caplog.records if "retention: moved" in r.getMessage()]
    assert moves and all("archive/" in m and ".sqlite3" in m for m in moves), moves
    assert any(month in m for m in moves)


def test_a_record_final_for_less_than_the_retention_keeps_its_old_evidence(rig: Rig) -> None:
    ids = day_of_business(rig)
    rig.clock.advance(RETENTION + 5)  # T3's messages are old now ...
    ours = [f for f in business(rig.bank.take()) if f.head("From") == "GW01"]
    rig.tick()  # the reversal queue retries
    ours += [f for f in business(rig.bank.take()) if f.head("From") == "GW01"]
    last = ours[-1]
    rig.bank.send("XFER.REVERSE.RSP", [("Result", "0000"), ("ResultText", "ok"),
                                       ("BizSn", last.body["BizSn"])], to="GW01",
                  ref=last.head("MsgId"))  # ... and T3 is REVERSED (final) only now
    assert rig.journal is not None
    t3 = rig.journal.record(BROKER, "XFER.IN", "GTJAT3")
    assert t3 is not None and t3.state == records.REVERSED
    assert rig.gateway.retention is not None
    passes = rig.gateway.retention.passes
    for _ in range(40):  # two whole passes (one every retention / 24), within 40 s
        if rig.gateway.retention.passes >= passes + 2:
            break
        settle(rig, 1, 1.0)
    assert rig.gateway.retention.passes >= passes + 2
    assert len(journal_ids(rig, ids["T3"])) >= 2 and not archived_ids(rig, ids["T3"])
    assert not journal_ids(rig, ids["T1"])  # while T1's went
    past_retention(rig)  # final for longer than the retention: now T3's goes too
    assert not journal_ids(rig, ids["T3"]) and len(archived_ids(rig, ids["T3"])) >= 2
    assert not journal_ids(rig, last.head("MsgId") or "")


def test_repeats_replays_and_give_backs_need_no_moved_evidence(rig: Rig) -> None:
    ids = day_of_business(rig)
    assert rig.journal is not None
    account = givebacks.account(rig.journal, (BROKER, "XFER.IN", "GTJAT1"))
    past_retention(rig)
    assert not journal_ids(rig, ids["T1"])
    assert givebacks.account(rig.journal, (BROKER, "XFER.IN", "GTJAT1")) == account
    # a repeat (same content, new MsgId) gets the stored answer, not relayed again
    repeat = rig.broker.send("XFER.IN.REQ", xfer("GTJAT1", "100.00"), to=BANK)
    assert not business(rig.bank.take())
    got = [f for f in rig.broker.take() if f.head("RefId") == repeat]
    assert [(f.body["Result"], f.body.get("BankSn")) for f in got] == [("0000", "B1")]
    # the refused one too, and a BizSn reused with other content is still B312
    repeat = rig.broker.send("XFER.IN.REQ", xfer("GTJAT2", "7.00"), to=BANK)
    assert [f.body["Result"] for f in rig.broker.take() if f.head("RefId") == repeat] \
        == ["B310"]
    reused = rig.broker.send("XFER.IN.REQ", xfer("GTJAT1", "100.01"), to=BANK)
    assert [f.body["Result"] for f in rig.broker.take() if f.head("RefId") == reused] \
        == ["B312"]
    # a replayed MsgId is still refused (the replay window is not the retention)
    rig.broker.send("XFER.IN.REQ", xfer("GTJAT9", "1.00"), to=BANK, msg_id=ids["T1"])
    errors = [f for f in rig.broker.take() if f.type == "SYS.ERROR"]
    assert [f.body["Code"] for f in errors] == ["E204"], errors
    assert not business(rig.bank.take())
    # a give-back of a moved original is admitted against the same sums
    _, rsp = relay(rig, "XFER.REVERSE.REQ", [
        ("BizSn", "GTJAV1"), ("OrigType", "XFER.IN"), ("OrigFrom", BROKER),
        ("OrigBizSn", "GTJAT1"), ("Amount", "100.00")])
    assert rsp is not None and rsp.body["Result"] == "0000"
    after = givebacks.account(rig.journal, (BROKER, "XFER.IN", "GTJAT1"))
    assert after is not None and account is not None
    assert (after.moved_fen, after.given_fen) == (account.moved_fen, 10000)
    # a second reversal is answered from the records (§6: the first result), not relayed
    again = rig.broker.send("XFER.REVERSE.REQ", [
        ("BizSn", "GTJAV2"), ("OrigType", "XFER.IN"), ("OrigFrom", BROKER),
        ("OrigBizSn", "GTJAT1"), ("Amount", "100.00")], to=BANK)
    assert not business(rig.bank.take())
    assert [f.body["Result"] for f in rig.broker.take() if f.head("RefId") == again] \
        == ["0000"]
    last = givebacks.account(rig.journal, (BROKER, "XFER.IN", "GTJAT1"))
    assert last is not None and last.given_fen == 10000


def test_a_late_answer_to_a_moved_record_changes_nothing(rig: Rig) -> None:
    ids = day_of_business(rig)
    past_retention(rig)
    assert rig.journal is not None
    before = rig.journal.record(BROKER, "XFER.IN", "GTJAT2")
    rig.bank.send("XFER.IN.RSP", [("Result", "0000"), ("ResultText", "late"),
                                  ("BizSn", "GTJAT2"), ("BankSn", "LATE")], to=BROKER,
                  ref=ids["T2"])
    assert not [f for f in rig.broker.take() if f.type.endswith(".RSP")]
    assert rig.journal.record(BROKER, "XFER.IN", "GTJAT2") == before


def test_journal_show_finds_moved_evidence(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    day_of_business(rig)
    assert show_command(rig.home.root, "GTJAT1", None, True, gateway="GW01") == 0
    shown = json.loads(capsys.readouterr().out)["records"][0]["messages"]
    assert len(shown) == 4 and {m["archive"] for m in shown} == {None}
    past_retention(rig)
    assert show_command(rig.home.root, "GTJAT1", None, True, gateway="GW01") == 0
    moved = json.loads(capsys.readouterr().out)["records"][0]["messages"]
    month = month_of(rig.clock())
    assert {m["archive"] for m in moved} == {month}
    assert [{**m, "archive": None} for m in moved] == shown
    assert show_command(rig.home.root, "GTJAT1", None, False, gateway="GW01") == 0
    assert f"(archive {month})" in capsys.readouterr().out


CRASH = """
import os, sys
from pathlib import Path
from gateway.config import JournalSettings
from gateway.journal import Journal
from gateway.retention import Retention

journal = Journal(Path(sys.argv[1]))
retention = Retention(JournalSettings(float(sys.argv[2])), journal, "GW01", inline=True)
assert retention.step(float(sys.argv[3])) == 0  # the job: copied, committed in the archive
moved = retention.step(float(sys.argv[3]))  # deleted in the journal's open transaction
print(moved, flush=True)
os._exit(0)  # killed after the archive's commit, before the journal's
"""


def test_a_crash_between_archive_commit_and_journal_delete_loses_nothing(
        rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    ids = day_of_business(rig)
    rig.close()  # the gateway stops; a process of its own moves, then dies
    path = rig.journal_path
    before = all_ids(path)
    later = rig.clock() + RETENTION + 5
    out = subprocess.run([sys.executable, "-c", CRASH, str(path), str(SETTINGS.retention_days),
                          str(later)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and int(out.stdout) > 0, out.stderr
    # the rows are in both places now: journal show lists each once
    assert journal_ids(_reopened(rig), ids["T1"]) and archived_ids(rig, ids["T1"])
    assert show_command(rig.home.root, "GTJAT1", None, True, gateway="GW01") == 0
    assert len(json.loads(capsys.readouterr().out)["records"][0]["messages"]) == 4
    # the restarted gateway moves them again: stored once, deleted from the journal
    rig.clock.t = later
    rig.restart()
    settle(rig, 8, 0.5)
    assert not journal_ids(rig, ids["T1"])
    moved = archived_ids(rig, ids["T1"])
    assert len(moved) == len(set(moved)) >= 2
    assert all_ids(path) >= before


def _reopened(rig: Rig) -> Rig:
    from gateway.journal import Journal

    rig.journal = Journal(rig.journal_path, read_only=True)
    return rig


def test_the_journal_table_of_gateway_toml(tmp_path: Path) -> None:
    assert Config().journal.retention_days == 0
    (tmp_path / "gateway.toml").write_text("[journal]\nretention_days = 30\n")
    assert load(tmp_path).journal.retention_days == 30.0
    (tmp_path / "gateway.toml").write_text("[journal]\nretention_days = 0.25\n")
    assert load(tmp_path).journal.retention_seconds == 21600.0
    for bad in ("retention_days = -1", "retention_days = true", 'retention_days = "30"',
                "retain = 3"):
        (tmp_path / "gateway.toml").write_text(f"[journal]\n{bad}\n")
        with pytest.raises(ConfigError, match=r"\[journal\]"):
            load(tmp_path)
    with pytest.raises(ConfigError, match="unknown setting"):
        from_mapping({"retention_days": 30})  # [gateway] is not its table


def test_retention_with_a_postgresql_url_is_one_line_saying_what_to_do(
        tmp_path: Path) -> None:
    """Retention's month files are local files: a pair on PostgreSQL keeps its evidence
    in the database.  ``serve`` refuses before it opens anything: exit 1, one line."""
    home = make_home(tmp_path / "gw")
    (home.root / "gateway.toml").write_text(
        '[journal]\nurl = "postgresql://gw@db.invalid/sbdx"\nretention_days = 30\n')
    out = subprocess.run([sys.executable, "-m", "gateway", "--home", str(home.root),
                          "serve"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("gateway serve: [journal] retention_days works with the SQLite "
                           "journal only: remove it (or set 0) with a postgresql:// url")
    assert "pg_dump" in line and 'docs/operations.md "Retention"' in line
    (home.root / "gateway.toml").write_text(
        '[journal]\nurl = "postgresql://gw@db.invalid/sbdx"\nretention_days = 0\n')
    assert load(home.root).journal.retention_days == 0  # 0 (or none) is fine


def test_no_retention_moves_nothing(tmp_path: Path) -> None:
    home = make_home(tmp_path / "gw")
    rig = Rig(home, fast_config(), Clock(time.time()),
              TestPeer(BANK, "BANK", home.keys[BANK], port=0),
              TestPeer(BROKER, "BROKER", home.keys[BROKER], port=0))
    try:
        ids = day_of_business(rig)
        assert rig.gateway.retention is None
        rig.clock.advance(RETENTION + 5)
        rig.tick()
        assert journal_ids(rig, ids["T1"]) and not (home.root / "data" / "archive").exists()
    finally:
        rig.close()


def test_the_exit_archive_carries_the_month_files(rig: Rig, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.archive import create, verify

    day_of_business(rig)
    past_retention(rig)
    out = tmp_path / "exit"
    made = create(rig.home.root, out)  # beside the running (in-process) gateway
    month = month_of(rig.clock())
    assert f"data/archive/{month}.sqlite3" in made.files
    assert not verify(out).problems
    # the archive is laid out like a home: journal show reads the moved evidence there
    assert show_command(out, "GTJAT1", None, True, gateway="GW01") == 0
    moved = json.loads(capsys.readouterr().out)["records"][0]["messages"]
    assert len(moved) == 4 and {m["archive"] for m in moved} == {month}


def test_a_record_that_changes_while_its_evidence_is_copied_keeps_it(tmp_path: Path) -> None:
    """The job judged T1 final and old and copied its rows; before the reactor deletes
    them a reversal makes T1 REVERSED (a change): its rows stay in the journal (and are
    in the archive: a duplicate, which journal show lists once); T2's go."""
    from gateway.retention import Retention

    home = make_home(tmp_path / "gw")
    rig = Rig(home, fast_config(), Clock(time.time()),
              TestPeer(BANK, "BANK", home.keys[BANK], port=0),
              TestPeer(BROKER, "BROKER", home.keys[BROKER], port=0))
    try:
        ids = day_of_business(rig)
        assert rig.journal is not None
        retention = Retention(SETTINGS, rig.journal, "GW01", inline=True)
        rig.clock.advance(RETENTION + 5)
        assert retention.step(rig.clock()) == 0  # the job: copied and committed there
        assert archived_ids(rig, ids["T1"]) and archived_ids(rig, ids["T2"])
        _, rsp = relay(rig, "XFER.REVERSE.REQ", [
            ("BizSn", "GTJAV1"), ("OrigType", "XFER.IN"), ("OrigFrom", BROKER),
            ("OrigBizSn", "GTJAT1"), ("Amount", "100.00")])
        assert rsp is not None and rsp.body["Result"] == "0000"
        assert retention.step(rig.clock()) > 0
        rig.gateway.flush()
        assert not journal_ids(rig, ids["T2"])
        assert sorted(journal_ids(rig, ids["T1"])) == sorted(archived_ids(rig, ids["T1"]))
        rig.journal.flush()
        assert show_command(home.root, "GTJAT1", None, True, gateway="GW01") == 0
    finally:
        rig.close()


def test_a_serving_gateway_moves_evidence_and_stops_cleanly(home, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """``gateway serve`` with ``[journal] retention_days`` of 2 s: the move's log line
    names the month file; SIGTERM waits for the job and exits 0."""
    from flows import call, signed

    home.write_config()
    with open(home.root / "gateway.toml", "a") as toml:
        toml.write(f"[journal]\nretention_days = {2 / 86400!r}\n")
    gw = start_gateway()
    bank, broker = gw.peer(BANK).open_session(), gw.peer(BROKER).open_session()
    signed(bank, broker)
    assert call(broker, "XFER.IN.REQ", xfer("GTJAT1"), bank=bank).body["Result"] == "0000"
    line = gw.wait_for_log(r"retention: moved \d+ evidence message\(s\) to \S+/data/archive/"
                           r"\d{6}\.sqlite3", timeout=30)
    assert "copied in" in line and "deleted in" in line
    bank.close()
    broker.close()
    assert gw.stop() == 0
    assert "journal flushed" in gw.log_text() and "Traceback" not in gw.log_text()
