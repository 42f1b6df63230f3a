"""Streaming reader of a clearing file: feed it bytes, it keeps constant state.

Sans-IO: :class:`Scanner` never opens a file.  It hashes the bytes before the last
line (the trailer's digest) and, by a copy of that hash, the whole file (what the
signature covers); it keeps the first and last lines, counts and sums the records,
remembers the first malformed record (line number and field), and hands the
well-formed records to a ``sink`` in batches (the reconciliation's temp table).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from .fileformat import DATE_FIELDS, LAYOUTS, SUM_FIELD, diagnose, line_regex, valid_date

BATCH_ROWS = 50_000
DATE_CACHE_MAX = 4096

Row = tuple[object, ...]
Sink = Callable[[list[Row]], None]


@dataclass(frozen=True)
class RecordError:
    """The first malformed record: where and what."""

    line: int
    field: str
    reason: str

    def text(self) -> str:
        return f"line {self.line}, field {self.field}: {self.reason}"


@dataclass
class ScanResult:
    """Everything the checks need, gathered in one pass."""

    size: int = 0
    header: str | None = None
    trailer: bytes | None = None
    body_sha256: str = ""
    file_sha256: bytes = b""
    records: int = 0
    total_fen: int | None = 0
    error: RecordError | None = None
    overdrafts: list[tuple[int, str, str, str]] = field(default_factory=list)


class Scanner:
    """Feed a file's bytes in chunks of any size, then call :meth:`finish`."""

    def __init__(self, file_type: str, sink: Sink | None = None) -> None:
        self.file_type = file_type
        self._sink = sink
        layout = LAYOUTS[file_type]
        names = [n for n, _ in layout]
        self._names = names
        self._rx = line_regex(file_type)
        self._sum_at = names.index(SUM_FIELD[file_type]) if file_type in SUM_FIELD else -1
        self._keep = len(names) - 1 if names[-1] == "Time" else len(names)
        self._date_at = [i for i, n in enumerate(names) if n in DATE_FIELDS]
        self._dates_ok: set[str] = set()
        self._hash = hashlib.sha256()
        self._carry = b""
        self._pending: bytes | None = None
        self._line = 0
        self._rows: list[Row] = []
        self.result = ScanResult()

    # --- bytes in -----------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        self.result.size += len(chunk)
        buf = self._carry + chunk if self._carry else chunk
        last = buf.rfind(b"\n")
        if last < 0:
            self._carry = buf
            return
        start_of_last = buf.rfind(b"\n", 0, last) + 1
        block = buf[:start_of_last]
        if self._pending is not None:
            block = self._pending + block
        self._pending = buf[start_of_last:last + 1]
        self._carry = buf[last + 1:]
        if block:
            self._hash.update(block)
            self._lines(block)

    def finish(self) -> ScanResult:
        """No more bytes: settle the last line (the trailer) and the digests."""
        res = self.result
        if self._carry:  # the last line has no LF: the one before it is not the last
            if self._pending is not None:
                self._hash.update(self._pending)
                self._lines(self._pending)
            self._pending = self._carry
        if self._pending is not None:
            if self._line == 0:  # a one-line file: that line is the header, no trailer
                self._hash.update(self._pending)
                self._lines(self._pending)
            else:
                res.trailer = self._pending
        res.body_sha256 = self._hash.hexdigest()
        whole = self._hash.copy()
        whole.update(res.trailer or b"")
        res.file_sha256 = whole.digest()
        self._flush()
        return res

    # --- lines ------------------------------------------------------------------------
    def _lines(self, block: bytes) -> None:
        # Invalid UTF-8 survives as lone surrogates, which no field pattern accepts.
        text = block.decode("utf-8", "surrogateescape")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if self._line == 0 and lines:
            self._line = 1
            self.result.header = lines[0]
            lines = lines[1:]
        self._records(lines)

    def _records(self, lines: list[str]) -> None:
        res, rx, keep, sum_at = self.result, self._rx.fullmatch, self._keep, self._sum_at
        date_at, dates_ok, rows = self._date_at, self._dates_ok, self._rows
        n = self._line
        total = 0
        for line in lines:
            n += 1
            m = rx(line)
            if m is None:
                self._bad(n, line)
                continue
            g = m.groups()
            amount = int(g[sum_at].replace(".", "", 1)) if sum_at >= 0 else 0
            total += amount
            for i in date_at:
                day = g[i][:10]
                if day and day not in dates_ok and not self._new_date(n, i, day):
                    break
            if amount < 0:
                res.overdrafts.append((n, g[0], g[1], g[2]))
            if res.error is None:
                rows.append((n, *g[:keep], amount))
                if len(rows) >= BATCH_ROWS:
                    self._flush()
        res.records += len(lines)
        if res.total_fen is not None:
            res.total_fen += total
        self._line = n

    def _new_date(self, n: int, i: int, day: str) -> bool:
        if not valid_date(day):
            self._error(n, self._names[i], f"{day!r} is not a calendar date")
            return False
        if len(self._dates_ok) >= DATE_CACHE_MAX:
            self._dates_ok.clear()
        self._dates_ok.add(day)
        return True

    def _bad(self, n: int, line: str) -> None:
        """A line that failed the fast match: locate the field; keep the sum if possible."""
        if not line.startswith("D|"):
            self._error(n, "D", f"expected a D record, found {line[:20]!r}")
            self.result.total_fen = None if self._sum_at >= 0 else 0
            return
        fields = line[2:].split("|")
        name, reason = diagnose(self.file_type, fields)
        if any("\udc80" <= c <= "\udcff" for c in line):
            reason = "not valid UTF-8"
        self._error(n, name, reason)
        if self._sum_at < 0 or self.result.total_fen is None:
            return
        try:
            self.result.total_fen += int(Decimal(fields[self._sum_at]) * 100)
        except (IndexError, InvalidOperation, ValueError):
            self.result.total_fen = None  # the record error speaks instead of the sum

    def _error(self, n: int, name: str, reason: str) -> None:
        if self.result.error is None:
            self._flush()  # the records before the first bad one still count for duplicates
            self.result.error = RecordError(n, name, reason)

    def _flush(self) -> None:
        if self._rows and self._sink is not None and self.result.error is None:
            self._sink(self._rows)
        self._rows.clear()
