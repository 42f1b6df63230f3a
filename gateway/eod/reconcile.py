"""Reconciliation in SQL: the file's records in a temp table joined with the journal.

Neither side is held in Python: the scanner streams well-formed records into table
``f`` of a private on-disk SQLite database (journal and fsync off — it is scratch),
the day's journal records are copied into table ``j`` through a read-only ATTACH,
and the four outcomes are SQL queries.  Only discrepancies come back to Python.
"""
from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fileformat import LAYOUTS, FileName, fen_text
from .mapping import COMPARED, COMPARED_IF_BOTH, column, day_query
from .scan import Row

CACHE_KIB = 65536  # page cache of the scratch database: bounds memory for any file size


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
        self.fields = tuple(n for n, _ in LAYOUTS[file_type] if n != "Time")
        self._dir = tempfile.TemporaryDirectory(prefix="sbdx-eod-")
        self.db = sqlite3.connect(f"file:{self._dir.name}/check.sqlite3", uri=True,
                                  isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE",
                       f"cache_size=-{CACHE_KIB}", "locking_mode=EXCLUSIVE"):
            self.db.execute(f"PRAGMA {pragma}")
        cols = ", ".join(f"{column(n)} TEXT" for n in self.fields)
        self.db.execute(f"CREATE TABLE f (line INTEGER NOT NULL, {cols}, fen INTEGER, "
                        "dup_line INTEGER, PRIMARY KEY (bizsn)) WITHOUT ROWID")
        marks = ",".join("?" for _ in range(len(self.fields) + 2))
        names = ", ".join(column(n) for n in self.fields)
        self._insert = (f"INSERT INTO f (line, {names}, fen) VALUES ({marks}) "
                        "ON CONFLICT (bizsn) DO UPDATE SET "
                        "dup_line = COALESCE(f.dup_line, excluded.line)")
        self.db.execute("BEGIN")

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()

    def sink(self, rows: list[Row]) -> None:
        """Scanner sink: one executemany per batch."""
        self.db.executemany(self._insert, rows)

    def first_duplicate(self) -> tuple[int, str, int] | None:
        """(line, BizSn, first line) of the earliest repeated BizSn, or None."""
        self.db.execute("COMMIT")
        row = self.db.execute("SELECT dup_line, bizsn, line FROM f WHERE dup_line IS NOT NULL "
                              "ORDER BY dup_line LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), str(row[1]), int(row[2]))

    # --- the journal side ------------------------------------------------------------
    def load_journal(self, journal: Path, gateway: str, name: FileName) -> None:
        """Copy the journal records the file covers into table ``j``."""
        sql, args = day_query(name.file_type, self.fields, name.day.isoformat(), gateway,
                              name.from_party, name.to_party)
        if journal.exists():
            uri = f"file:{journal}?mode=ro"
            self.db.execute("ATTACH DATABASE ? AS jr", (uri,))
            self.db.execute("CREATE TABLE j AS " + sql.format(db="jr."), args)
            self.db.execute("DETACH DATABASE jr")
        else:  # no journal yet: the gateway has seen no business at all
            cols = ", ".join(column(n) for n in self.fields)
            self.db.execute(f"CREATE TABLE j ({cols}, final)")
        self.db.execute("CREATE INDEX j_sn ON j (bizsn)")

    def reconcile(self) -> Reconciliation:
        out = Reconciliation()
        out.missing_in_file = [r[0] for r in self.db.execute(
            "SELECT bizsn FROM j WHERE final AND NOT EXISTS "
            "(SELECT 1 FROM f WHERE f.bizsn = j.bizsn) ORDER BY bizsn")]
        out.extra_in_file = [r[0] for r in self.db.execute(
            "SELECT bizsn FROM f WHERE NOT EXISTS (SELECT 1 FROM j WHERE j.bizsn = f.bizsn) "
            "ORDER BY line")]
        joined = self.db.execute("SELECT COUNT(*) FROM f JOIN j ON j.bizsn = f.bizsn").fetchone()
        out.mismatched = list(self._mismatches())
        out.matched = int(joined[0]) - len(out.mismatched)
        return out

    def _compared(self) -> tuple[list[str], list[str]]:
        always = [n for n in self.fields if n in COMPARED]
        if_both = [n for n in self.fields if n in COMPARED_IF_BOTH]
        return always, if_both

    def _differs(self) -> str:
        always, if_both = self._compared()
        terms = []
        for n in always:
            if n == "Amount":
                terms.append("f.fen IS NOT j.amount")
            else:
                terms.append(f"f.{column(n)} IS NOT COALESCE(j.{column(n)}, '')")
        for n in if_both:
            c = column(n)
            terms.append(f"(f.{c} <> '' AND COALESCE(j.{c}, '') <> '' AND f.{c} <> j.{c})")
        return " OR ".join(terms)

    def _mismatches(self) -> Any:
        always, if_both = self._compared()
        names = always + if_both
        f_cols = ", ".join("f.fen" if n == "Amount" else f"f.{column(n)}" for n in names)
        j_cols = ", ".join(f"j.{column(n)}" for n in names)
        sql = (f"SELECT f.bizsn, {f_cols}, {j_cols} FROM f JOIN j ON j.bizsn = f.bizsn "
               f"WHERE {self._differs()} ORDER BY f.line")
        width = len(names)
        for row in self.db.execute(sql):
            yield {"BizSn": row[0], "fields": _differing(names, row[1:1 + width],
                                                         row[1 + width:])}


def _show(name: str, value: object) -> str | None:
    if value is None:
        return None
    return fen_text(int(value)) if name == "Amount" else str(value)  # type: ignore[arg-type]


def _differing(names: list[str], file_vals: tuple[Any, ...],
               journal_vals: tuple[Any, ...]) -> dict[str, dict[str, str | None]]:
    out: dict[str, dict[str, str | None]] = {}
    for name, fv, jv in zip(names, file_vals, journal_vals):
        if name in COMPARED_IF_BOTH and (not fv or not jv):
            continue
        if name != "Amount" and (fv or "") == (jv or ""):
            continue
        if name == "Amount" and fv == jv:
            continue
        out[name] = {"file": _show(name, fv), "journal": _show(name, jv)}
    return out
