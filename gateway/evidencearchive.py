"""Message evidence moved out of the journal (PROTOCOL §11 ``[journal] retention_days``).

One SQLite file per month, ``data/archive/YYYYMM.sqlite3`` (0600 in a 0700 folder), the
month of each message's own time in Asia/Shanghai (the trade calendar's zone).  Each
holds a table ``message`` with the journal's columns and ids, so a row reads the same
wherever it is (``journal show`` looks in both), and its indexes by MsgId; the
statements are gateway/store/sqlite/monthfiles.py's.

:meth:`EvidenceArchive.store` is idempotent: a row already there with the same id and
the same content is a copy left by a move that was interrupted after the archive's
commit and before the journal's (gateway/retention.py), and is not stored twice.  A row
with that id and other content (a journal restored from an older backup reuses ids) is
stored under a new id, with a warning: evidence is never dropped.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from .bookdate import CHINA
from .store.interfaces import MonthFile, StoreUnavailable
from .store.model import StoredMessage
from .store.sqlite import monthfiles

log = logging.getLogger(__name__)

_MONTH_FILE = re.compile(r"(\d{6})\.sqlite3\Z")


def month_of(at: float) -> str:
    """``YYYYMM`` of a message's time, in Asia/Shanghai."""
    return dt.datetime.fromtimestamp(at, CHINA).strftime("%Y%m")


class EvidenceArchive:
    """The month files under ``folder`` (``HOME/data/archive``); their statements are
    gateway/store/sqlite/monthfiles.py's."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._open: dict[str, MonthFile] = {}

    def path(self, month: str) -> Path:
        return self.folder / f"{month}.sqlite3"

    def months(self) -> list[str]:
        """The months that have a file, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(m.group(1) for p in self.folder.iterdir()
                      if (m := _MONTH_FILE.match(p.name)))

    # --- writing (the gateway) ---------------------------------------------------
    def store(self, month: str, rows: Sequence[StoredMessage]) -> int:
        """Copy ``rows`` (journal evidence rows) into the month's file and commit
        (durable when this returns); the number of rows newly stored."""
        writer = self._open.get(month)
        if writer is None:
            writer = self._open[month] = monthfiles.SqliteMonthFile(self.path(month))
        stored, renamed = writer.store(rows)
        for old, new in renamed:
            log.warning("evidence id %s is already in %s with other content (a journal "
                        "restored from a backup?); stored as id %s there", old,
                        self.path(month).name, new)
        return stored

    def close(self) -> None:
        """Close the files opened for writing (each last close checkpoints its WAL)."""
        for writer in self._open.values():
            writer.close()
        self._open.clear()

    # --- reading (journal show) --------------------------------------------------
    def _each_month(self, read: Callable[..., list[StoredMessage]], *args: str) -> list[tuple[StoredMessage, str]]:
        found: list[tuple[StoredMessage, str]] = []
        for month in self.months():
            try:
                found += [(m, month) for m in read(self.path(month), *args)]
            except StoreUnavailable as exc:
                log.warning("evidence archive %s unreadable: %s", self.path(month), exc)
        return found

    def messages(self, msg_id: str) -> list[tuple[StoredMessage, str]]:
        """Archived rows journaled under ``msg_id``, each with its month, oldest first."""
        return self._each_month(monthfiles.messages_by_msg_id, msg_id)

    def reversal_answer_messages(self, party: str,
                                 ref_id: str) -> list[tuple[StoredMessage, str]]:
        """Archived XFER.REVERSE.RSP rows ``party`` sent naming ``ref_id``."""
        return self._each_month(monthfiles.reversal_answers, party, ref_id)
