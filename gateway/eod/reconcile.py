"""Reconciliation in SQL: the file's records in a scratch table joined with the journal.

Neither side is held in Python.  The scanner streams well-formed records into table
``f`` of a private on-disk SQLite database (rollback journal and fsync off — it is
scratch; row ``seq`` = line − 1), a UNIQUE index on BizSn is then built (which is
also the duplicate check), and the journal, attached read-only, is joined to it in
one pass that returns only discrepancies.  Only if the file holds records the
journal lacks is a second, BizSn-indexed copy of the day's journal keys made to
list them.
"""
from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fileformat import CORE_FIELDS, FileName, fen_text, row_fields
from .mapping import COMPARED_IF_BOTH, column, core_day_query
from .scan import Row

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
        self.core = CORE_FIELDS[file_type]
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
        names = ", ".join(column(n) for n in self.fields)
        self._insert = f"INSERT INTO f ({names}) VALUES ({values})"
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
        sql, args = core_day_query(name.file_type, name.day.isoformat(), gateway,
                                   name.from_party, name.to_party)
        self.db.execute("ATTACH DATABASE ? AS jr", (f"file:{journal}?mode=ro",))
        try:
            day = sql.format(db="jr.")
            joined = self.db.execute(f"SELECT COUNT(*) FROM ({day}) AS j "
                                     "JOIN f ON f.bizsn = j.bizsn", args).fetchone()[0]
            self._discrepancies(day, args, out)
            if joined < total:
                out.extra_in_file = self._extra(day, args)
        finally:
            self.db.execute("DETACH DATABASE jr")
        out.matched = joined - len(out.mismatched)
        return out

    def _both(self) -> list[str]:
        return [n for n in self.fields if n in COMPARED_IF_BOTH]

    def _differs(self) -> str:
        terms = ["f.core IS NOT j.core"]
        for c in map(column, self._both()):
            terms.append(f"(f.{c} <> '' AND COALESCE(j.{c}, '') <> '' AND f.{c} <> j.{c})")
        return " OR ".join(terms)

    def _discrepancies(self, day: str, args: tuple[object, ...], out: Reconciliation) -> None:
        both = self._both()
        cols = ", ".join(["f.core", *(f"f.{column(n)}" for n in both),
                          *(f"j.c_{column(n)}" for n in self.core),
                          *(f"j.{column(n)}" for n in both)])
        sql = (f"SELECT j.bizsn, f.seq, {cols} FROM ({day}) AS j "
               "LEFT JOIN f ON f.bizsn = j.bizsn "
               f"WHERE (f.seq IS NULL AND j.owed) OR (f.seq IS NOT NULL AND ({self._differs()}))"
               " ORDER BY f.seq, j.bizsn")
        names = [*self.core, *both]
        for row in self.db.execute(sql, args):
            if row[1] is None:
                out.missing_in_file.append(row[0])
                continue
            file_vals = [*row[2].split("|")[1:], *row[3:3 + len(both)]]
            out.mismatched.append({"BizSn": row[0], "fields": _differing(
                names, file_vals, row[3 + len(both):])})

    def _extra(self, day: str, args: tuple[object, ...]) -> list[str]:
        """BizSns of the file the journal lacks (only run when there are some)."""
        self.db.execute(f"CREATE TABLE jk AS SELECT bizsn FROM ({day})", args)
        self.db.execute("CREATE INDEX jk_sn ON jk (bizsn)")
        return [r[0] for r in self.db.execute(
            "SELECT bizsn FROM f WHERE NOT EXISTS (SELECT 1 FROM jk WHERE jk.bizsn = f.bizsn) "
            "ORDER BY seq")]


def _journal_text(name: str, value: object) -> str:
    if value is None:
        return ""
    return fen_text(int(value)) if name == "Amount" else str(value)  # type: ignore[call-overload]


def _differing(names: list[str], file_vals: list[Any],
               journal_vals: tuple[Any, ...]) -> dict[str, dict[str, str | None]]:
    """The fields that differ, as text, for one mismatched record."""
    out: dict[str, dict[str, str | None]] = {}
    for name, fv, jv in zip(names, file_vals, journal_vals, strict=True):
        fv, jv = fv or "", _journal_text(name, jv)
        if name in COMPARED_IF_BOTH and (not fv or not jv):
            continue
        if fv != jv:
            out[name] = {"file": fv, "journal": jv if jv or name != "Amount" else None}
    return out
