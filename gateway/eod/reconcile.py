"""Reconciliation in SQL: the file's records in a scratch table joined with the journal.

Neither side is held in Python.  The scanner streams well-formed records — each as its
text without Time, its BizSn and its amount — into table ``f`` of a private on-disk
SQLite database (rollback journal and fsync off — it is scratch; row ``seq`` = line −
1), a UNIQUE index on BizSn is then built (which is also the duplicate check), and the
journal, attached read-only, is joined to it in one pass that returns only the rows
whose texts differ from the journal's stored ``eod_line``; the differing §8 fields of
those few are worked out in Python (a row whose texts differ only where §8 does not
compare — a BankSn one side lacks, ProductCode — is matched).  Only if the file holds
records the journal lacks is a second, BizSn-indexed copy of the day's journal keys
made to list them.
"""
from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fileformat import (
    COMPARED_IF_BOTH,
    COMPARED_IF_BOTH_WHEN_REVERSED,
    CORE_FIELDS,
    FileName,
    field_names,
    row_fields,
)
from .mapping import column, lines_day_query
from .scan import Row

JOURNAL_SCHEMA_WITH_LINES = 2


class JournalTooOld(Exception):
    """The journal predates end-of-day lines (schema v1): the gateway migrates it."""

CACHE_KIB = 65536  # page cache of the scratch database: bounds memory for any file size
FEN_SPLIT = 100_000_000  # sum fen as high and low parts: no int64 overflow in SQL


@dataclass
class Reconciliation:
    """Outcome record by BizSn (§8)."""

    matched: int = 0
    missing_in_file: list[str] = field(default_factory=list)
    extra_in_file: list[str] = field(default_factory=list)
    mismatched: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing_in_file or self.extra_in_file or self.mismatched)


class Workspace:
    """The scratch database of one check: holds table ``f``; closes and deletes itself."""

    def __init__(self, file_type: str) -> None:
        self.file_type = file_type
        self.fields = row_fields(file_type)
        names = field_names(file_type)[1:-1]  # after BizSn, before Time: as in ``line``
        compared = (*CORE_FIELDS[file_type], *COMPARED_IF_BOTH)
        self._compared = [(i, n) for i, n in enumerate(names) if n in compared]
        self._status_at = names.index("Status")
        self._dir = tempfile.TemporaryDirectory(prefix="sbdx-eod-")
        self.db = sqlite3.connect(f"file:{self._dir.name}/check.sqlite3", uri=True,
                                  isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE",
                       f"cache_size=-{CACHE_KIB}"):
            self.db.execute(f"PRAGMA {pragma}")
        cols = ", ".join(f"{column(n)} {'INTEGER' if n == 'Amount' else 'TEXT'}"
                         for n in self.fields)
        self.db.execute(f"CREATE TABLE f (seq INTEGER PRIMARY KEY, {cols})")
        values = ", ".join(f"CAST(REPLACE(?{i}, '.', '') AS INTEGER)" if n == "Amount"
                           else f"?{i}" for i, n in enumerate(self.fields, 1))
        columns = ", ".join(column(n) for n in self.fields)
        self._insert = f"INSERT INTO f ({columns}) VALUES ({values})"
        self.db.execute("BEGIN")

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()

    def sink(self, rows: Sequence[Row]) -> None:
        """Scanner sink: one executemany per block."""
        self.db.executemany(self._insert, rows)

    def total_fen(self) -> int:
        """Sum of the Amount column of the records in ``f``."""
        if "Amount" not in self.fields:
            return 0
        hi, lo = self.db.execute(f"SELECT COALESCE(SUM(amount / {FEN_SPLIT}), 0), "
                                 f"COALESCE(SUM(amount % {FEN_SPLIT}), 0) FROM f").fetchone()
        return int(hi) * FEN_SPLIT + int(lo)

    def first_duplicate(self) -> tuple[int, str, int] | None:
        """(line, BizSn, first line) of the earliest repeated BizSn, or None.

        Building the UNIQUE index the join needs is the duplicate check.
        """
        self.db.execute("COMMIT")
        try:
            self.db.execute("CREATE UNIQUE INDEX f_sn ON f (bizsn)")
            return None
        except sqlite3.IntegrityError:
            pass
        self.db.execute("CREATE INDEX f_sn ON f (bizsn)")
        row = self.db.execute("SELECT b.seq + 1, b.bizsn, MIN(a.seq) + 1 FROM f b "
                              "JOIN f a ON a.bizsn = b.bizsn AND a.seq < b.seq "
                              "GROUP BY b.seq ORDER BY b.seq LIMIT 1").fetchone()
        return (int(row[0]), str(row[1]), int(row[2]))

    # --- the journal side ------------------------------------------------------------
    def reconcile(self, journal: Path, gateway: str, name: FileName) -> Reconciliation:
        """Compare ``f`` (indexed, duplicate-free) with the journal records it covers."""
        out = Reconciliation()
        total = self.db.execute("SELECT COUNT(*) FROM f").fetchone()[0]
        if not journal.exists():  # no journal yet: the gateway has seen no business
            out.extra_in_file = [r[0] for r in self.db.execute("SELECT bizsn FROM f ORDER BY seq")]
            return out
        sql, args = lines_day_query(name.file_type, name.day.isoformat(), gateway,
                                    name.from_party, name.to_party)
        self.db.execute("ATTACH DATABASE ? AS jr", (f"file:{journal}?mode=ro",))
        try:
            if self.db.execute("PRAGMA jr.user_version").fetchone()[0] < JOURNAL_SCHEMA_WITH_LINES:
                raise JournalTooOld(f"journal {journal} is schema v1; start the gateway once "
                                    "to migrate it")
            day = sql.format(db="jr.")
            joined = self.db.execute(f"SELECT COUNT(*) FROM ({day}) AS j WHERE EXISTS "
                                     "(SELECT 1 FROM f WHERE f.bizsn = j.bizsn)",
                                     args).fetchone()[0]
            self._discrepancies(day, args, out)
            if joined < total:
                out.extra_in_file = self._extra(day, args)
        finally:
            self.db.execute("DETACH DATABASE jr")
        out.matched = joined - len(out.mismatched)
        return out

    def _discrepancies(self, day: str, args: tuple[object, ...], out: Reconciliation) -> None:
        sql = (f"SELECT j.bizsn, f.seq, f.line, j.eod_line FROM ({day}) AS j "
               "LEFT JOIN f ON f.bizsn = j.bizsn "
               "WHERE (f.seq IS NULL AND j.owed) OR (f.seq IS NOT NULL AND f.line IS NOT j.eod_line)"
               " ORDER BY f.seq, j.bizsn")
        for bizsn, seq, file_line, journal_line in self.db.execute(sql, args):
            if seq is None:
                out.missing_in_file.append(bizsn)
                continue
            fields = self._differing(file_line, journal_line)
            if fields:
                out.mismatched.append({"BizSn": bizsn, "fields": fields})

    def _differing(self, file_line: str,
                   journal_line: str | None) -> dict[str, dict[str, str | None]]:
        """The §8-compared fields that differ, as text (an absent journal amount: None)."""
        file_vals = file_line.split("|")[2:]
        journal_vals = journal_line.split("|")[2:] if journal_line is not None else []
        out: dict[str, dict[str, str | None]] = {}
        if_both: tuple[str, ...] = COMPARED_IF_BOTH
        if self._status_at < len(journal_vals) and journal_vals[self._status_at] == "R":
            if_both += COMPARED_IF_BOTH_WHEN_REVERSED
        for i, name in self._compared:
            fv = file_vals[i]
            jv = journal_vals[i] if i < len(journal_vals) else ""
            if name in if_both and (not fv or not jv):
                continue
            if fv != jv:
                out[name] = {"file": fv, "journal": jv if jv or name != "Amount" else None}
        return out

    def _extra(self, day: str, args: tuple[object, ...]) -> list[str]:
        """BizSns of the file the journal lacks (only run when there are some)."""
        self.db.execute(f"CREATE TABLE jk AS SELECT bizsn FROM ({day})", args)
        self.db.execute("CREATE INDEX jk_sn ON jk (bizsn)")
        return [r[0] for r in self.db.execute(
            "SELECT bizsn FROM f WHERE NOT EXISTS (SELECT 1 FROM jk WHERE jk.bizsn = f.bizsn) "
            "ORDER BY seq")]
