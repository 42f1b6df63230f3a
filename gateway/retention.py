"""PROTOCOL §11 retention: old message evidence leaves the journal for the month files.

With ``[journal] retention_days`` above 0, the evidence rows (table ``message``) of a
business record that has been final (SUCCEEDED, FAILED, REVERSED) for longer than that
move to ``data/archive/YYYYMM.sqlite3`` (gateway/evidencearchive.py).  What the running
gateway reads stays in the journal: the records, their stored answers (idempotency,
give-back sums, reconciliation, queries read only those), the MsgIds of the replay
window (table ``seen_msg_id``, purged on its own schedule), and every row of a record
still open (PENDING, REVERSING) or final for less than the retention: the relay and the
reversal queue re-read the evidence of those only (a late answer, an earlier reversal
attempt's answer, a receiver's SYS.ERROR).

Which record a row is evidence of is read from the row itself: a business request names
it by its From and BizSn (the gateway's own XFER.REVERSE by the original it reverses),
an answer by its To and BizSn (or by its RefId).  Rows that are no record's evidence —
session messages (LOGON, KEYX, ECHO), SYS.ERRORs, queries, requests refused before they
were journaled as a record, unreadable frames kept as they came — move once they are
older than the retention.  The newest row never moves, so evidence ids never repeat.

The gateway calls :meth:`Retention.step` from its tick; each step looks at no more than
:data:`BATCH_ROWS` rows, so the reactor is never held long.  A pass walks the evidence
oldest first until it meets a row younger than the retention; the next pass starts
again from the beginning (rows held back for an open record are looked at again) after
:meth:`Retention.pass_interval`.  A move copies the batch to its month files and commits
them, then deletes the rows in the journal's own transaction (committed with the turn):
a crash between the two leaves the rows in both places, and the next pass copies them
again, which stores nothing twice.  Sans-IO: time is handed in.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from . import catalog, records
from .config import JournalSettings
from .evidencearchive import EvidenceArchive, month_of
from .journal import Journal
from .message import parse_xml

log = logging.getLogger(__name__)

#: Evidence rows looked at in one step (one tick): ~5-10 ms of the reactor's time.
BATCH_ROWS = 200
#: Bounds of the pause between two passes: retention / 24, within these (seconds).
MIN_PASS_INTERVAL = 1.0
MAX_PASS_INTERVAL = 600.0
_NS = "{urn:sbdx:1}"

Key = tuple[str, str, str]
Row = Sequence[Any]  # MESSAGE_COLUMNS: id, at, direction, session, party, msg_type, ...
_ID, _AT, _MSG_TYPE, _REF_ID, _XML = 0, 1, 5, 7, 9


class Retention:
    """Moves the evidence of long-final records out of ``journal``."""

    def __init__(self, settings: JournalSettings, journal: Journal, gateway: str,
                 archive: EvidenceArchive | None = None) -> None:
        if settings.retention_days <= 0:
            raise ValueError("retention is off (retention_days 0)")
        self.seconds = settings.retention_seconds
        self.journal = journal
        self.gateway = gateway
        self.archive = archive or EvidenceArchive(journal.path.parent / "archive")
        self._cursor = 0  #: the running pass goes on after this evidence id
        self._next_at = float("-inf")
        self.moved = 0  #: rows moved since start (for tests and status)
        self.passes = 0  #: passes completed

    def pass_interval(self) -> float:
        return min(MAX_PASS_INTERVAL, max(MIN_PASS_INTERVAL, self.seconds / 24))

    def due(self, now: float) -> bool:
        return now >= self._next_at

    def step(self, now: float) -> int:
        """Look at the next batch of the pass, move what may go; the rows moved."""
        started = time.perf_counter()  # for the log line only (the step's reactor time)
        cutoff = now - self.seconds
        newest = self.journal.last_message_id()
        rows = self.journal.messages_after(self._cursor, BATCH_ROWS)
        settled: dict[Key, tuple[str, float] | None] = {}
        movable: list[Row] = []
        finished = len(rows) < BATCH_ROWS
        for row in rows:
            if float(row[_AT]) >= cutoff or int(row[_ID]) >= newest:
                finished = True
                break
            if self._may_move(row, cutoff, settled):
                movable.append(row)
            self._cursor = int(row[_ID])
        try:
            moved = self._move(movable, started)
        except Exception as exc:  # the archive cannot be written (disk full, ...)
            log.error("retention: evidence could not be archived (%s); it stays in the "
                      "journal, trying again in %.0f s", exc, self.pass_interval())
            finished, moved = True, 0
        if finished:
            self._cursor = 0
            self._next_at = now + self.pass_interval()
            self.passes += 1
            self.archive.close()
        return moved

    def _may_move(self, row: Row, cutoff: float, settled: dict[Key, Any]) -> bool:
        key = self._record_of(row)
        if key is None:
            return True  # no record's evidence: it goes by age alone
        if key not in settled:
            settled[key] = self.journal.record_settled(key)
        found = settled[key]
        if found is None:
            return True  # refused before a record was made: no record to wait for
        state, changed_at = found
        return state in records.FINAL and changed_at < cutoff

    def _record_of(self, row: Row) -> Key | None:
        """The record ``row`` is evidence of (None: a session message, a query, ...)."""
        msg_type = row[_MSG_TYPE]
        if not isinstance(msg_type, str) or msg_type[-4:] not in (".REQ", ".RSP"):
            return None
        business = msg_type[:-4]
        route = catalog.ROUTES.get(business)
        if route is None or route.to == catalog.TO_GATEWAY:
            return None  # SYS.* or a query the gateway answers itself
        fields = _fields(bytes(row[_XML]))
        if fields is None:
            return None
        sender, to, biz_sn = fields.get("From"), fields.get("To"), fields.get("BizSn")
        if msg_type.endswith(".REQ"):
            if business == "XFER.REVERSE" and sender == self.gateway:  # our own reversal
                return _key(fields.get("OrigFrom"), fields.get("OrigType"),
                            fields.get("OrigBizSn"))
            return _key(sender, business, biz_sn)
        if business == "XFER.REVERSE" and to == self.gateway and sender and biz_sn:
            return self.journal.reversal_original(sender, biz_sn)
        if biz_sn:
            return _key(to, business, biz_sn)
        ref = row[_REF_ID]
        if sender and to and isinstance(ref, str) and ref:
            return self.journal.record_of_answer(sender, to, ref)
        return None

    def _move(self, rows: list[Row], started: float) -> int:
        """Copy to the month files (committed), then delete from the journal."""
        by_month: dict[str, list[Row]] = {}
        for row in rows:
            by_month.setdefault(month_of(float(row[_AT])), []).append(row)
        for month, part in sorted(by_month.items()):
            self.archive.store(month, part)
        self.journal.delete_messages([int(r[_ID]) for r in rows])
        spent = (time.perf_counter() - started) * 1e3
        for month, part in sorted(by_month.items()):
            log.info("retention: moved %d evidence message(s) to %s (older than %g days; "
                     "step %.1f ms)", len(part), self.archive.path(month),
                     self.seconds / 86400, spent)
        self.moved += len(rows)
        return len(rows)


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
