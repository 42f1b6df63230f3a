"""WAL checkpoints on a thread of their own, off the committing thread.

SQLite's automatic checkpoint runs inside the COMMIT that crosses
``wal_autocheckpoint`` (1000 pages): that commit copies the pages into the database
file and, with ``synchronous=FULL``, fsyncs it — ~12 ms on this project's benchmark box
against ~0.5 ms for an ordinary commit.  On a reactor thread that is a 12 ms stall of
every session, several times a second under load (docs/BENCHMARKS.md).

:class:`Checkpointer` turns the automatic checkpoint off for the writing connection and
checkpoints from its own connection on a daemon thread: every ``interval`` seconds a
PASSIVE checkpoint (it never blocks the writer: it copies what it can and fsyncs the
database file), and once the WAL holds ``restart_frames`` frames a RESTART checkpoint,
which makes the next commit start the WAL from its beginning again (a PASSIVE one
alone never gets there while commits keep coming, and the WAL would grow without end).
RESTART holds new commits back while it runs, so it is only tried when the PASSIVE
pass just copied (nearly) the whole WAL: then little is left, ~1-3 ms, and no reader
pins an old snapshot.  While a reader does (another process's long ``eod check``,
say), the WAL grows, as it does with SQLite's own checkpoints, and no RESTART is tried
until the reader is done; one that starts meanwhile is waited for at most
``restart_wait`` seconds.  Durability is unchanged: a commit is durable
once it is in the WAL (fsync'd by the commit itself); checkpoints only move committed
pages into the main file.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)

#: Seconds between two background checkpoints.
DEFAULT_INTERVAL = 0.1
#: WAL frames (pages) after which the WAL is restarted (4000 x 4 KiB = 16 MiB).
DEFAULT_RESTART_FRAMES = 4000
#: Longest a RESTART waits for readers (and so holds commits back), seconds.
DEFAULT_RESTART_WAIT = 0.02
#: A RESTART is tried only if PASSIVE left at most this many frames uncopied.
RESTART_SLACK_FRAMES = 256


class Checkpointer:
    """Checkpoints the WAL of ``path`` from a daemon thread until closed."""

    def __init__(self, writer: sqlite3.Connection, path: Path,
                 interval: float = DEFAULT_INTERVAL,
                 restart_frames: int = DEFAULT_RESTART_FRAMES,
                 restart_wait: float = DEFAULT_RESTART_WAIT,
                 restart_slack: int = RESTART_SLACK_FRAMES) -> None:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        self._writer = writer
        self.path = path
        self.interval = interval
        self.restart_frames = restart_frames
        self.restart_wait = restart_wait
        self.restart_slack = restart_slack
        self.checkpoints = 0  # completed rounds (for tests and diagnostics)
        self.restarts = 0
        self.restart_attempts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"checkpoint {path.name}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        while not self._stop.wait(self.interval):
            try:
                if db is None:
                    db = sqlite3.connect(str(self.path), isolation_level=None,
                                         check_same_thread=False, timeout=self.restart_wait)
                self._round(db)
            except sqlite3.Error as exc:  # e.g. the file went away: try again later
                log.warning("background checkpoint of %s failed: %s", self.path, exc)
        if db is not None:
            db.close()

    def _round(self, db: sqlite3.Connection) -> None:
        _, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames >= self.restart_frames and frames - copied <= self.restart_slack:
            self.restart_attempts += 1
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            self.restarts += 0 if busy else 1
        self.checkpoints += 1

    def close(self) -> None:
        """Stop the thread and restore automatic checkpoints on the writer."""
        self._stop.set()
        self._thread.join()
        try:
            self._writer.execute("PRAGMA wal_autocheckpoint=1000")
        except sqlite3.ProgrammingError:  # the writer is already closed
            pass
