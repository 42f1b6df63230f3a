"""PROTOCOL §11 retention: old message evidence leaves the journal for the month files.

With ``[journal] retention_days`` above 0, the evidence rows (table ``message``) of a
business record that has been final (SUCCEEDED, FAILED, REVERSED) for longer than that
move to ``data/archive/YYYYMM.sqlite3`` (gateway/evidencearchive.py).  What the running
gateway reads stays in the journal: the records, their stored answers (idempotency,
give-back sums, reconciliation, queries read only those), the MsgIds of the replay
window (table ``seen_msg_id``, purged on its own schedule), and every row of a record
still open (PENDING, REVERSING) or final for less than the retention: the relay and the
reversal queue re-read evidence only for what is in flight (what was sent under the
MsgId a receiver's SYS.ERROR names, the answers to a reversal attempt still queued).

Which record a row is evidence of is read from the row itself: a business request names
it by its From and BizSn (the gateway's own XFER.REVERSE by the original it reverses),
an answer by its To and BizSn (or by its RefId).  Rows that are no record's evidence —
session messages (LOGON, KEYX, ECHO), SYS.ERRORs, queries, requests refused before they
were journaled as a record, unreadable frames kept as they came — move once they are
older than the retention.  The newest row never moves, so evidence ids never repeat.

The gateway calls :meth:`Retention.step` from its tick.  The work of a batch — reading
at most :data:`BATCH_ROWS` rows oldest first, judging each, copying the movable ones to
their month files and committing them there (an fsync) — is a job on a thread of its
own with its own read-only connection to the journal, so the reactor never waits for
it; a later tick deletes what the job copied, in the journal's own transaction
(committed with the turn), after checking that no record the job judged by has changed
since (one index probe per record).  A crash between the month file's commit and the
journal's leaves the rows in both places; the next pass copies them again, which
stores nothing twice.  A pass walks the evidence until it meets a row younger than the
retention; the next pass starts again from the beginning (rows held back for an open
record are looked at again) after :meth:`Retention.pass_interval`.  No Twisted here:
time is handed in, and the job's thread is a plain one, as the journal's checkpointer.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from . import catalog, records
from .config import JournalSettings
from .evidencearchive import EvidenceArchive, month_of
from .journal import Journal
from .message import parse_xml
from .store.interfaces import RetentionQueries
from .store.model import StoredMessage
from .store.sqlite.retention import open_reader, retention_queries

log = logging.getLogger(__name__)

#: Evidence rows looked at in one batch (~1000 a second at most: one batch a tick).
BATCH_ROWS = 200
#: Bounds of the pause between two passes: retention / 24, within these (seconds).
MIN_PASS_INTERVAL = 1.0
MAX_PASS_INTERVAL = 600.0
_NS = "{urn:sbdx:1}"

Key = tuple[str, str, str]
Settled = tuple[str, float] | None  # (state, last change) of a record; None: no record
Row = StoredMessage


@dataclass
class Batch:
    """What one background job copied to the month files (committed there)."""

    by_month: dict[str, list[int]] = field(default_factory=dict)  #: evidence ids copied
    key_of: dict[int, Key | None] = field(default_factory=dict)  #: the record of each
    relied: dict[Key, Settled] = field(default_factory=dict)  #: the states it relied on
    last_id: int = 0  #: the pass goes on after this id
    finished: bool = False  #: the pass met a young row or the end
    seconds: float = 0.0  #: the job's time (off the reactor)


class Retention:
    """Moves the evidence of long-final records out of ``journal``.

    Reading and judging a batch and writing it to the month files (an fsync) run on a
    thread of their own (``inline=True``: at once, in the caller: for tools); the
    reactor only deletes what a finished job copied, after checking in its own
    connection that no record the job relied on has changed since."""

    def __init__(self, settings: JournalSettings, journal: Journal, gateway: str,
                 archive: EvidenceArchive | None = None, *, inline: bool = False) -> None:
        if settings.retention_days <= 0:
            raise ValueError("retention is off (retention_days 0)")
        self.queries = retention_queries(journal.store)  # ValueError unless SQLite
        if journal.path is None:  # a SQLite store without its file: not the gateway's
            raise ValueError("retention needs the journal's file (data/archive/ beside it)")
        self.path: Path = journal.path
        self.seconds = settings.retention_seconds
        self.journal = journal
        self.gateway = gateway
        self.archive = archive or EvidenceArchive(self.path.parent / "archive")
        self._pool = None if inline else ThreadPoolExecutor(
            1, thread_name_prefix="retention")
        self._job: Future[Batch] | None = None
        self._reader: RetentionQueries | None = None  # the job's own read-only connection
        self._cursor = 0  #: the running pass goes on after this evidence id
        self._next_at = float("-inf")
        self.moved = 0  #: rows moved since start (for tests and status)
        self.passes = 0  #: passes completed

    def pass_interval(self) -> float:
        return min(MAX_PASS_INTERVAL, max(MIN_PASS_INTERVAL, self.seconds / 24))

    def due(self, now: float) -> bool:
        return self._job is not None or now >= self._next_at

    def step(self, now: float) -> int:
        """Delete what the last job copied (if it is done), and start the next batch of
        the pass; the rows deleted."""
        moved = 0
        if self._job is not None:
            if not self._job.done():
                return 0
            job, self._job = self._job, None
            try:
                batch = job.result()
            except Exception as exc:  # the archive cannot be written (disk full, ...)
                log.error("retention: evidence could not be archived (%s); it stays in the "
                          "journal, trying again in %.0f s", exc, self.pass_interval())
                batch = Batch(last_id=0, finished=True)
            moved = self._delete(batch)
            self._cursor = batch.last_id
            if batch.finished:
                self._end_pass(now)
                return moved
        if now >= self._next_at:
            self._start(now - self.seconds)
        return moved

    def wait(self, timeout: float = 30.0) -> None:
        """Until the running job (if any) is done (tests; a clean stop)."""
        if self._job is not None:
            wait([self._job], timeout)

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown()
        self.archive.close()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _start(self, cutoff: float) -> None:
        cursor = self._cursor
        if self._pool is None:
            self._job = Future()
            try:
                self._job.set_result(self._collect(cursor, cutoff))
            except Exception as exc:
                self._job.set_exception(exc)
        else:
            self._job = self._pool.submit(self._collect, cursor, cutoff)

    def _end_pass(self, now: float) -> None:
        self._cursor = 0
        self._next_at = now + self.pass_interval()
        self.passes += 1
        self.archive.close()

    # --- the job (its own thread) ------------------------------------------------
    def _collect(self, cursor: int, cutoff: float) -> Batch:
        """Read the next rows of the pass, judge each, copy the movable ones to their
        month files and commit them."""
        started = time.perf_counter()
        if self._reader is None:
            self._reader = open_reader(self.path)
        reader = self._reader
        newest = reader.last_message_id()
        rows = reader.messages_after(cursor, BATCH_ROWS)
        batch = Batch(last_id=cursor, finished=len(rows) < BATCH_ROWS)
        settled: dict[Key, Settled] = {}
        movable: dict[str, list[Row]] = {}
        for row in rows:
            if row.at >= cutoff or row.id >= newest:
                batch.finished = True
                break
            key = self._record_of(row, reader)
            if key is not None and key not in settled:
                settled[key] = reader.record_settled(key)
            if _may_move(settled.get(key) if key else None, key, cutoff):
                movable.setdefault(month_of(row.at), []).append(row)
                batch.key_of[row.id] = key
                if key is not None:
                    batch.relied[key] = settled[key]
            batch.last_id = row.id
        for month, part in sorted(movable.items()):
            self.archive.store(month, part)
            batch.by_month[month] = [r.id for r in part]
        batch.seconds = time.perf_counter() - started
        return batch

    def _record_of(self, row: Row, reader: RetentionQueries) -> Key | None:
        """The record ``row`` is evidence of (None: a session message, a query, ...)."""
        msg_type = row.msg_type
        if msg_type is None or msg_type[-4:] not in (".REQ", ".RSP"):
            return None
        business = msg_type[:-4]
        route = catalog.ROUTES.get(business)
        if route is None or route.to == catalog.TO_GATEWAY:
            return None  # SYS.* or a query the gateway answers itself
        fields = _fields(row.xml)
        if fields is None:
            return None
        sender, to, biz_sn = fields.get("From"), fields.get("To"), fields.get("BizSn")
        if msg_type.endswith(".REQ"):
            if business == "XFER.REVERSE" and sender == self.gateway:  # our own reversal
                return _key(fields.get("OrigFrom"), fields.get("OrigType"),
                            fields.get("OrigBizSn"))
            return _key(sender, business, biz_sn)
        if business == "XFER.REVERSE" and to == self.gateway and sender and biz_sn:
            return reader.reversal_original(sender, biz_sn)
        if biz_sn:
            return _key(to, business, biz_sn)
        ref = row.ref_id
        if sender and to and ref:
            return reader.record_of_answer(sender, to, ref)
        return None

    # --- the reactor's part ------------------------------------------------------
    def _delete(self, batch: Batch) -> int:
        """Delete the rows the job copied whose record is as the job saw it (one that
        changed meanwhile keeps its rows: the next pass judges them again)."""
        started = time.perf_counter()
        now_settled: dict[Key, Settled] = {}
        deleted: dict[str, int] = {}
        for month, ids in sorted(batch.by_month.items()):
            keep = []
            for i in ids:
                key = batch.key_of.get(i)
                if key is not None:
                    if key not in now_settled:
                        now_settled[key] = self.queries.record_settled(key)
                    if now_settled[key] != batch.relied.get(key):
                        continue
                keep.append(i)
            self.queries.delete_messages(keep)
            deleted[month] = len(keep)
        spent = (time.perf_counter() - started) * 1e3
        for month, n in deleted.items():
            log.info("retention: moved %d evidence message(s) to %s (older than %g days; "
                     "copied in %.0f ms off the reactor, deleted in %.1f ms)", n,
                     self.archive.path(month), self.seconds / 86400, batch.seconds * 1e3,
                     spent)
        total = sum(deleted.values())
        self.moved += total
        return total


def _may_move(settled: Settled, key: Key | None, cutoff: float) -> bool:
    if key is None or settled is None:
        return True  # no record's evidence (or refused before a record was made): by age
    state, changed_at = settled
    return state in records.FINAL and changed_at < cutoff


def _key(origin: object, biz_type: object, biz_sn: object) -> Key | None:
    if isinstance(origin, str) and isinstance(biz_type, str) and isinstance(biz_sn, str) \
            and origin and biz_type and biz_sn:
        return (origin, biz_type, biz_sn)
    return None


def _fields(xml: bytes) -> dict[str, str] | None:
    """Head fields and the body's top-level fields of a journaled message (None if it
    does not parse: a refused message is kept as it came)."""
    try:
        root = parse_xml(xml)
    except Exception:  # evidence of anything at all
        return None
    out: dict[str, str] = {}
    for part in root:
        if part.tag == _NS + "Head":
            out.update((str(c.tag).rsplit("}", 1)[-1], c.text or "") for c in part)
        elif part.tag == _NS + "Body" and len(part):
            out.update((str(c.tag).rsplit("}", 1)[-1], c.text or "") for c in part[0]
                       if not len(c))
    return out
