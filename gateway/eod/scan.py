"""Streaming reader of a clearing file: feed it bytes, it keeps constant state.

Sans-IO: :class:`Scanner` never opens a file.  It hashes the bytes before the last
line (the trailer's digest) and, by a copy of that hash, the whole file (what the
signature covers); it keeps the first and last lines, counts the records, remembers
the first malformed record (line number and field), and hands the well-formed
records to a ``sink`` block by block (the reconciliation's scratch table).

Fast path: a block of complete lines (about 1 MiB) is parsed by one ``findall`` of
the D-line pattern (dates calendar-exact); if it matched every line, the block is
well-formed.  Only a block holding a bad line is walked line by line to name the line
and field.  A line longer than ``MAX_LINE_BYTES`` is a bad record and is not kept:
memory stays bounded whatever the file holds.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .fileformat import (
    SUM_FIELD,
    diagnose,
    field_names,
    line_regex,
    row_fields,
)

#: A D line is < 300 bytes; a longer one is refused without being held in memory.
MAX_LINE_BYTES = 64 * 1024
#: What a bad record's amount must look like for its value to count towards the sum
#: (anything else — "Infinity", "1e999999" — makes the sum unknowable, never parsed).
LOOSE_AMOUNT_RE = re.compile(r"(-?)([0-9]{1,15})(?:\.([0-9]{1,2}))?")

Row = tuple[str, ...]
#: Receives well-formed records (kept fields, file order); returns nothing.
Sink = Callable[[Sequence[Row]], None]


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
    """Everything the checks need, gathered in one pass.

    ``unsunk_fen`` sums the records *not* handed to the sink (all of them when there
    is no sink; those after the first malformed record otherwise); ``None`` when a
    malformed amount makes the sum unknowable (the record error then speaks).
    """

    size: int = 0
    header: str | None = None
    trailer: bytes | None = None
    body_sha256: str = ""
    file_sha256: bytes = b""
    records: int = 0
    unsunk_fen: int | None = 0
    error: RecordError | None = None
    overdrafts: list[tuple[int, str, str, str]] = field(default_factory=list)


class Scanner:
    """Feed a file's bytes in chunks of any size, then call :meth:`finish`."""

    def __init__(self, file_type: str, sink: Sink | None = None) -> None:
        self.file_type = file_type
        self._sink = sink
        self._names = row_fields(file_type)
        self._rx = line_regex(file_type)
        self._sum_at = self._names.index(SUM_FIELD[file_type]) if file_type in SUM_FIELD else -1
        layout = field_names(file_type)
        self._raw_sum_at = layout.index(SUM_FIELD[file_type]) if file_type in SUM_FIELD else -1
        self._hash = hashlib.sha256()
        self._whole = hashlib.sha256()
        self._carry = b""
        self._overlong = False  # inside a line longer than MAX_LINE_BYTES
        self._pending: bytes | None = None
        self._line = 0
        self.result = ScanResult()

    # --- bytes in -----------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        self.result.size += len(chunk)
        self._whole.update(chunk)
        if self._overlong:
            chunk = self._skip_overlong(chunk)
            if not chunk:
                return
        buf = self._carry + chunk if self._carry else chunk
        last = buf.rfind(b"\n")
        if last < 0:
            if len(buf) > MAX_LINE_BYTES:
                self._start_overlong(buf)
            else:
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
            self._block(block)
        if len(self._carry) > MAX_LINE_BYTES:
            self._start_overlong(self._carry)

    # --- lines too long to keep -----------------------------------------------------------
    def _settle_pending(self) -> None:
        """The held line is not the last one: hash and parse it now."""
        if self._pending is not None:
            self._hash.update(self._pending)
            self._block(self._pending)
            self._pending = None

    def _start_overlong(self, head: bytes) -> None:
        """``head`` begins a line over the limit: it is a bad record, hashed, not kept."""
        self._settle_pending()
        self._hash.update(head)
        self._carry = b""
        self._overlong = True
        if self._line == 0:  # the header itself: the header check will refuse it
            self.result.header = head[:200].decode("utf-8", "replace")
        else:
            self._error(self._line + 1, "D", f"line longer than {MAX_LINE_BYTES} bytes")
            self.result.unsunk_fen = None if self._sum_at >= 0 else 0
            self.result.records += 1
        self._line += 1

    def _skip_overlong(self, chunk: bytes) -> bytes:
        """Hash the rest of an over-long line; return what follows its LF."""
        end = chunk.find(b"\n")
        if end < 0:
            self._hash.update(chunk)
            return b""
        self._hash.update(chunk[:end + 1])
        self._overlong = False
        return chunk[end + 1:]

    def finish(self) -> ScanResult:
        """No more bytes: settle the last line (the trailer) and the digests."""
        res = self.result
        if self._carry:  # the last line has no LF: the one before it is not the last
            if self._pending is not None:
                self._hash.update(self._pending)
                self._block(self._pending)
            self._pending = self._carry
        if self._pending is not None:
            if self._line == 0:  # a one-line file: that line is the header, no trailer
                self._hash.update(self._pending)
                self._block(self._pending)
            else:
                res.trailer = self._pending
        res.body_sha256 = self._hash.hexdigest()
        res.file_sha256 = self._whole.digest()
        return res

    # --- blocks of complete lines ---------------------------------------------------------
    def _block(self, block: bytes) -> None:
        # Invalid UTF-8 survives as lone surrogates, which no field pattern accepts.
        text = block.decode("utf-8", "surrogateescape")
        if self._line == 0:
            end = text.find("\n")
            self.result.header = text if end < 0 else text[:end]
            self._line = 1
            text = "" if end < 0 else text[end + 1:]
        lines = text.count("\n")
        rows = self._rx.findall(text)
        if len(rows) == lines:
            self._good(rows, self._line + 1)
            self._line += lines
        else:
            self._walk(text)
        self.result.records += lines

    def _good(self, rows: Sequence[Row], first_line: int) -> None:
        res = self.result
        if self._sink is not None and res.error is None:
            self._sink(rows)
            return
        if self._sum_at >= 0 and res.unsunk_fen is not None:
            at = self._sum_at
            res.unsunk_fen += sum(int(r[at].replace(".", "", 1)) for r in rows)
        if self.file_type == "BAL":
            res.overdrafts.extend((first_line + i, r[0], r[1], r[2])
                                  for i, r in enumerate(rows) if r[2].startswith("-") and r[2] != "-0.00")

    def _walk(self, text: str) -> None:
        """A block with a bad line: line by line, to locate the first bad field."""
        match = self._rx.fullmatch
        for line in text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"):
            self._line += 1
            m = match(line + "\n")
            if m is not None:
                self._good((m.groups(),), self._line)
            else:
                self._bad(self._line, line)

    def _bad(self, n: int, line: str) -> None:
        """Locate the bad field of a line; keep the sum if its amount is still a number."""
        if not line.startswith("D|"):
            self._error(n, "D", f"expected a D record, found {line[:20]!r}")
            self.result.unsunk_fen = None if self._sum_at >= 0 else 0
            return
        fields = line[2:].split("|")
        name, reason = diagnose(self.file_type, fields)
        if len(line.encode("utf-8", "surrogateescape")) > MAX_LINE_BYTES:
            # the same reason whether the block held the whole line or it was cut off
            name, reason = "D", f"line longer than {MAX_LINE_BYTES} bytes"
        elif any("\udc80" <= c <= "\udcff" for c in line):
            reason = "not valid UTF-8"
        elif line.endswith("\r"):
            name, reason = "D", "CRLF line end; §8 files use LF only"
        self._error(n, name, reason)
        if self._sum_at < 0 or self.result.unsunk_fen is None:
            return
        value = fields[self._raw_sum_at] if self._raw_sum_at < len(fields) else ""
        m = LOOSE_AMOUNT_RE.fullmatch(value)
        if m is None:
            self.result.unsunk_fen = None
            return
        fen = int(m.group(2)) * 100 + int((m.group(3) or "0").ljust(2, "0"))
        self.result.unsunk_fen += -fen if m.group(1) else fen

    def _error(self, n: int, name: str, reason: str) -> None:
        if self.result.error is None:
            self.result.error = RecordError(n, name, reason)
