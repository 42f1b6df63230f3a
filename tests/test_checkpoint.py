"""gateway.store.sqlite.checkpoint: WAL checkpoints off the committing thread."""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from gateway.journal import Journal, Record
from gateway.store.sqlite.checkpoint import Checkpointer


def _writer(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, x BLOB)")
    return db


def _commit_rows(db: sqlite3.Connection, n: int) -> float:
    """Commit ``n`` transactions of ~12 KiB each; the longest commit, seconds."""
    longest = 0.0
    for _ in range(n):
        db.execute("BEGIN")
        for _ in range(10):
            db.execute("INSERT INTO t (x) VALUES (?)", (os.urandom(1200),))
        t0 = time.perf_counter()
        db.execute("COMMIT")
        longest = max(longest, time.perf_counter() - t0)
    return longest


def _wal_frames(path: Path) -> int:
    return os.path.getsize(f"{path}-wal") // 4096


def test_the_writer_never_checkpoints_and_the_wal_stays_short(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    db = _writer(path)
    ck = Checkpointer(db, path, interval=0.005, restart_frames=200)
    assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for _ in range(40):
        _commit_rows(db, 10)
        time.sleep(0.001)
    # ~1,600 pages were written; checkpointed and restarted, the WAL stays far shorter
    assert ck.checkpoints >= 1
    assert _wal_frames(path) < 1200
    ck.close()
    assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 4000
    db.close()


def test_a_long_wal_is_restarted_from_its_beginning(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    db = _writer(path)
    ck = Checkpointer(db, path, interval=3600, restart_frames=100)  # rounds run by hand
    _commit_rows(db, 20)
    probe = sqlite3.connect(str(path), isolation_level=None, timeout=0.02)
    assert probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] >= 100
    ck._round(probe)
    assert ck.restarts == 1
    _commit_rows(db, 1)  # the next commit writes from the WAL's beginning
    assert probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] < 100
    probe.close()
    ck.close()
    db.close()


def test_without_it_the_wal_would_only_grow(tmp_path: Path) -> None:
    """The control for the test above: autocheckpoint off and no thread, the WAL keeps
    every page written (so the bound above is the Checkpointer's doing)."""
    path = tmp_path / "j.sqlite3"
    db = _writer(path)
    db.execute("PRAGMA wal_autocheckpoint=0")
    for _ in range(40):
        _commit_rows(db, 10)
    assert _wal_frames(path) >= 1200
    db.close()


def test_a_long_reader_never_holds_commits_back_for_long(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    db = _writer(path)
    ck = Checkpointer(db, path, interval=0.005, restart_frames=50, restart_wait=0.02,
                      restart_slack=10)
    reader = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # holds its snapshot
    released = threading.Event()
    tried_while_pinned: list[int] = []

    def release() -> None:
        time.sleep(1.0)
        tried_while_pinned.append(ck.restart_attempts)
        reader.execute("COMMIT")
        released.set()

    threading.Thread(target=release, daemon=True).start()
    longest = _commit_rows(db, 300)  # the WAL grows past restart_frames meanwhile
    released.wait(5)
    # while the reader pinned its snapshot, PASSIVE could not copy the WAL, so no
    # RESTART (which holds commits back while it waits for readers) was even tried
    assert tried_while_pinned == [0]
    # and no commit waited the reader out (1 s), let alone the writer's 5 s busy timeout
    assert longest < 0.5
    _commit_rows(db, 100)
    time.sleep(0.2)
    assert ck.restarts >= 1  # once the reader is gone the WAL is restarted again
    ck.close()
    db.close()


def test_the_journal_checkpoints_in_the_background_and_reopens_intact(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    db = journal.store.uow.connection
    assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for i in range(300):
        journal.log_message(0.0, "IN", "S1", "GTJA", "XFER.OUT.REQ", f"M{i}", None, b"env",
                            os.urandom(1000))
        journal.insert_record(Record(origin="GTJA", biz_type="XFER.OUT", biz_sn=f"B{i}",
                                     receiver="CCB", msg_id=f"M{i}", content_hash="h",
                                     state="PENDING", trade_date="2026-11-25",
                                     amount_fen=100), 0.0)
        journal.flush()
    deadline = time.monotonic() + 5
    while journal._checkpointer.checkpoints == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert journal._checkpointer.checkpoints >= 1
    journal.close()
    again = Journal(path)
    assert again.record("GTJA", "XFER.OUT", "B299") is not None
    assert len(list(again.messages())) == 300
    again.close()


def test_the_journal_times_its_commits_and_names_a_slow_one(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """Every answer of a turn waits for its COMMIT: the journal counts how long they take
    (its close line gives the figures), and logs one slower than slow_commit_seconds."""
    import logging

    journal = Journal(tmp_path / "j.sqlite3", slow_commit_seconds=0.0)  # every commit is slow
    with caplog.at_level(logging.INFO, logger="gateway.journal"):
        for n in range(3):
            journal.remember("GTJA", f"M{n}", 1.0)
            journal.flush()
        journal.flush()  # nothing written: no COMMIT, nothing counted
        stats = journal.commit_stats
        assert stats.commits == 3 and stats.slow == 3
        assert 0 < stats.max_seconds <= stats.seconds
        journal.close()
    slow = [r for r in caplog.records if "journal commit took" in r.getMessage()]
    assert len(slow) == 3 and all(r.levelname == "WARNING" for r in slow)
    closed = [r.getMessage() for r in caplog.records if "closed:" in r.getMessage()]
    assert closed and "3 commits, mean" in closed[0] and "3 slow" in closed[0], closed

    quiet = Journal(tmp_path / "k.sqlite3", slow_commit_seconds=60.0)  # under it: not slow
    quiet.remember("GTJA", "M1", 1.0)
    quiet.flush()
    assert quiet.commit_stats.commits == 1 and quiet.commit_stats.slow == 0
    quiet.close()
