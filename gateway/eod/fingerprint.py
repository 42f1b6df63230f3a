"""Reconciliation by fingerprint: the fast proof that a file lists exactly the journal.

A clearing file that reconciles cleanly — the everyday case — lists, each record's
Time aside, exactly the lines the journal keeps for that day: every record carries its
end-of-day line (``record.eod_line``, computed by the store on every write, the same text
``gateway eod export`` writes).  Equal multisets of lines mean every record matched
on every compared field of §8 (a line holds them all), none missing, none extra.

So the file is read once, all of it in C: per block of complete lines one ``findall``
of a one-group pattern validates every line (calendar-exact dates) and returns it
without its Time; Python's keyed SipHash of each line is summed.  The journal side is
one range scan of the day's lines (the record table is clustered by trade date),
hashed and summed the same way.  The journal may be the SQLite file or the PostgreSQL
journal: both keep ``record.eod_line`` rendered by the same SQL (PostgreSQL's reader,
gateway/store_pg/eod.py, streams the day through a server-side cursor), so the proof
is the same on either.  Equal counts and equal sums prove equal multisets
except with probability about 2^-64 per check; the hash key is the interpreter's
random per-process secret, which a file writer cannot know, so no file can be built to
collide.  With a fixed ``PYTHONHASHSEED`` the secret is known and this path is off.

This path concludes only "valid and fully matched".  On anything else — a line that
does not match, a failed check, a count or fingerprint difference — it returns None
and the exact check (check.py: scratch table and join) runs from the start and gives
the answer with its reasons.  Like the exact check it relies on the day's records of
one pair of peers having distinct BizSns, which the gateway enforces when it admits
them (B312, docs/business-rules.md); files addressed to or from the gateway itself
cover several pairs and always take the exact path.
"""
from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from gateway.signature import PublicKey
from gateway.store import eod_reader

from .fileformat import SUM_FIELD, TRAILER_RE, FileName, fen_text, record_text_regex
from .mapping import BIZ_TYPES
from .reconcile import Reconciliation
from .scan import MAX_LINE_BYTES
from .signing import BadSignature, verify_file

READ_BYTES = 1 << 20
#: Records the file may omit or list (REVERSED by the gateway, unseen by the writer),
#: held as a set of hashes; more than this and the exact check runs instead.
OPTIONAL_MAX = 100_000
FETCH_ROWS = 8192

Progress = Callable[[int, int], None]


class Declined(Exception):
    """The fast path cannot conclude; the exact check decides."""


def available(name: FileName, gateway: str, journal: Path | str) -> bool:
    """Whether this file may be proved by fingerprint at all (``journal``: the SQLite
    file, or the PostgreSQL journal's url)."""
    seed = os.environ.get("PYTHONHASHSEED", "random")
    return (name.file_type in BIZ_TYPES and sys.flags.hash_randomization == 1
            and seed == "random" and gateway not in (name.from_party, name.to_party)
            and name.from_party != name.to_party and eod_reader(journal).exists())


class LineSums:
    """Count, hash sum and (optionally) the hashes seen of a set of optional lines."""

    def __init__(self, optional: dict[int, int]) -> None:
        self.count = 0
        self.hash_sum = 0
        self._optional = optional.keys()
        self.present: set[int] = set()

    def add(self, lines: list[str]) -> None:
        hashes = list(map(hash, lines))
        self.count += len(hashes)
        self.hash_sum += sum(hashes)
        if self._optional:
            self.present |= self._optional & set(hashes)


class FileScan:
    """One pass over the file: digests, header, trailer and the line sums."""

    def __init__(self, file_type: str, sums: LineSums) -> None:
        self._rx = record_text_regex(file_type)
        self.sums = sums
        self.body = hashlib.sha256()
        self.whole = hashlib.sha256()
        self.header: str | None = None
        self.trailer: bytes = b""
        self.trailer_sum = ""
        self.size = 0

    def read(self, f: BinaryIO, progress: Progress | None) -> None:
        """Read the opened file from its start."""
        total = os.fstat(f.fileno()).st_size
        carry = b""
        f.seek(0)
        while chunk := f.read(READ_BYTES):
            self.size += len(chunk)
            self.whole.update(chunk)
            buf = carry + chunk
            cut = buf.rfind(b"\n", 0, len(buf) - 1) + 1  # keep the last line back
            if cut == 0:
                if len(buf) > MAX_LINE_BYTES:
                    raise Declined("over-long line")
                carry = buf
                continue
            self._block(buf[:cut])
            carry = buf[cut:]
            if progress is not None:
                progress(self.size, total)
        self.trailer = carry

    def _block(self, block: bytes) -> None:
        self.body.update(block)
        text = block.decode("utf-8", "surrogateescape")
        if self.header is None:
            end = text.find("\n")
            self.header, text = text[:end], text[end + 1:]
        lines = self._rx.findall(text)
        if len(lines) != text.count("\n"):
            raise Declined("a line is not a well-formed record")
        self.sums.add(lines)


def prove(journal: Path | str, gateway: str, name: FileName, file: BinaryIO, key: PublicKey,
          sig: bytes, header_ok: Callable[[str, FileName], object],
          progress: Progress | None = None) -> Reconciliation:
    """Valid and fully matched, or :class:`Declined`.  ``header_ok`` raises if not.

    The journal's day is read on a second thread while this one reads the file:
    SQLite runs without the GIL, so its range scan overlaps the file's regex work (and
    PostgreSQL's: psycopg waits for the server without it)."""
    reader = eod_reader(journal)
    day = (name.file_type, name.day.isoformat(), gateway, name.from_party, name.to_party)
    if not reader.schema_has_lines():
        raise Declined("journal schema without end-of-day lines")
    optional = _optional_lines(reader.optional_lines(*day, limit=OPTIONAL_MAX + 1))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="eod-journal") as pool:
        owed_sums = pool.submit(_owed_sums, reader.owed_lines(*day, batch=FETCH_ROWS))
        scan = FileScan(name.file_type, LineSums(optional))
        scan.read(file, progress)
        _checks(scan, name, key, sig, file, header_ok)
        owed = owed_sums.result()
    _compare(scan, owed, optional, name)
    return Reconciliation(matched=scan.sums.count)


def _optional_lines(rows: list[tuple[str, int]]) -> dict[int, int]:
    """hash(line) → amount of the records the file may list or omit."""
    out = {hash(line): amount for line, amount in rows}
    if len(rows) > OPTIONAL_MAX or len(out) != len(rows):
        raise Declined("optional records too many or not distinct")
    return out


def _owed_sums(batches: Iterator[list[tuple[str, int]]]) -> tuple[int, int, int]:
    """(count, hash sum, amount sum in fen) of the records the file must list (runs on
    the journal thread: the reader opens its own connection)."""
    sums, amount = LineSums({}), 0
    for rows in batches:
        sums.add([line for line, _ in rows])
        amount += sum(fen for _, fen in rows)
    return sums.count, sums.hash_sum, amount


def _checks(scan: FileScan, name: FileName, key: PublicKey, sig: bytes, file: BinaryIO,
            header_ok: Callable[[str, FileName], object]) -> None:
    """Legitimacy, header, trailer digest and count — as the exact check does them."""
    try:
        verify_file(key, sig, file, scan.whole.digest())
    except BadSignature:
        raise Declined("signature") from None
    if scan.header is None:
        raise Declined("no header")
    try:
        header_ok(scan.header, name)
    except Exception:  # noqa: BLE001 - any refusal: the exact check words it
        raise Declined("header") from None
    m = TRAILER_RE.fullmatch(scan.trailer.removesuffix(b"\n").decode("ascii", "replace"))
    if (m is None or not scan.trailer.endswith(b"\n") or m.group(3).lower() !=
            scan.body.hexdigest() or int(m.group(1)) != scan.sums.count):
        raise Declined("trailer")
    scan.trailer_sum = m.group(2)


def _compare(scan: FileScan, owed: tuple[int, int, int], optional: dict[int, int],
             name: FileName) -> None:
    count, hash_sum, amount = owed
    present = scan.sums.present
    if (scan.sums.count != count + len(present)
            or scan.sums.hash_sum != hash_sum + sum(present)):
        raise Declined("records differ from the journal's")
    total = amount + sum(optional[h] for h in present) if name.file_type in SUM_FIELD else 0
    if scan.trailer_sum != fen_text(total):  # a SIGN file has no amounts: its sum is 0.00
        raise Declined("trailer sum")
