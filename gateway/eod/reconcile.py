"""Reconciliation: the file's records, held by the store's scratch workspace, joined
with the journal; the differing §8 fields worked out here.

Neither side is held in Python.  The scanner streams well-formed records — each as its
text without Time, its BizSn and its amount — into the workspace
(gateway/store/sqlite/eod.py: a private on-disk SQLite database, whatever the journal's
store), which builds a UNIQUE index on BizSn (also the duplicate check) and joins the
journal's day to it in one pass (a SQLite journal attached; the PostgreSQL journal's
day streamed in through its reader first) that returns only the rows whose texts
differ from the journal's stored §8 line; the
differing fields of those few are worked out in Python (a row whose texts differ only
where §8 does not compare — a BankSn one side lacks, ProductCode — is matched).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.store import StoreTooOld, eod_reader, file_workspace

from .fileformat import (
    COMPARED_IF_BOTH,
    COMPARED_IF_BOTH_WHEN_REVERSED,
    CORE_FIELDS,
    FileName,
    field_names,
)
from .scan import Row

#: The journal predates end-of-day lines (schema v1): the gateway migrates it.
JournalTooOld = StoreTooOld


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
    """The scratch space of one check (the store's FileWorkspace): holds the file's
    records; closes and deletes itself."""

    def __init__(self, file_type: str) -> None:
        self.file_type = file_type
        names = field_names(file_type)[1:-1]  # after BizSn, before Time: as in ``line``
        compared = (*CORE_FIELDS[file_type], *COMPARED_IF_BOTH)
        self._compared = [(i, n) for i, n in enumerate(names) if n in compared]
        self._status_at = names.index("Status")
        self._space = file_workspace(file_type)

    def close(self) -> None:
        self._space.close()

    def sink(self, rows: Sequence[Row]) -> None:
        """Scanner sink: one batch per block."""
        self._space.sink(rows)

    def total_fen(self) -> int:
        """Sum of the Amount column of the records held."""
        return self._space.total_fen()

    def first_duplicate(self) -> tuple[int, str, int] | None:
        """(line, BizSn, first line) of the earliest repeated BizSn, or None."""
        return self._space.first_duplicate()

    # --- the journal side ------------------------------------------------------------
    def reconcile(self, journal: Path | str, gateway: str, name: FileName) -> Reconciliation:
        """Compare the file's records (duplicate-free) with the journal records it covers
        (``journal``: the SQLite file, or the PostgreSQL journal's url)."""
        out = Reconciliation()
        reader = eod_reader(journal)
        if not reader.exists():  # no journal yet: the gateway has seen no business
            out.extra_in_file = self._space.file_biz_sns()
            return out
        joined, differing, out.extra_in_file = self._space.join(
            reader, name.file_type, name.day.isoformat(), gateway, name.from_party,
            name.to_party)
        for bizsn, seq, file_line, journal_line in differing:
            if seq is None:
                out.missing_in_file.append(bizsn)
                continue
            fields = self._differing(str(file_line), journal_line)
            if fields:
                out.mismatched.append({"BizSn": bizsn, "fields": fields})
        out.matched = joined - len(out.mismatched)
        return out

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
