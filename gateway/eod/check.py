"""Checking one clearing file (PROTOCOL §8), in §8's order, first failure wins.

name pattern → signer registered for FROM, signature valid (legitimacy) → header
matches the name → trailer digest, count, sum (integrity) → every record well-formed,
no duplicate BizSn → reconciliation against the journal (XFER/SIGN/PAY/OTC).
The file is read exactly once (one pass feeds the digests, the counters and the
scratch table) and never modified.

:func:`check_file` opens the path it is given, following a link (an operator named
it); the folder watcher opens what others dropped itself, never through a link, and
hands the open file to :func:`check_opened` — what is checked is what it opened.
"""
from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from gateway.exitcodes import EXIT_DISCREPANCIES, EXIT_OK, EXIT_REJECTED
from gateway.keystore import KeyStore
from gateway.signature import PublicKey

from . import fingerprint
from .fileformat import (
    CREATED_RE,
    RECONCILED_TYPES,
    TRAILER_PARTS,
    VERSION,
    FileName,
    fen_text,
    parse_name,
)
from .reconcile import Reconciliation, Workspace
from .scan import RecordError, Scanner, ScanResult
from .signing import BadSignature, UnfitSignatureFile, read_signature, verify_file
from .source import JournalRef, journal_of

READ_BYTES = 1 << 20

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class Rejected(Exception):
    """The file fails a §8 check; the message is the one clear reason."""


@dataclass
class CheckReport:
    """The outcome of checking (and, if valid, reconciling) one file."""

    file: str
    valid: bool = False
    reason: str | None = None
    records: int = 0
    reconciliation: Reconciliation | None = None
    overdrafts: list[tuple[int, str, str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if not self.valid:
            return EXIT_REJECTED
        if self.reconciliation is None or self.reconciliation.clean:
            return EXIT_OK
        return EXIT_DISCREPANCIES


def signer_key(keys: KeyStore, party: str) -> PublicKey:
    """The registered key of a file's writer: the gateway's own, or the peer's."""
    if party == keys.party:
        return keys.signer().public_key
    peer = keys.peer(party)
    if peer is None:
        raise Rejected(f"legitimacy: unknown signer: {party} is not a registered party")
    return peer.public_key


@dataclass(frozen=True)
class Opened:
    """A clearing file opened by the caller, and how to read its ``.sig`` (which
    raises :class:`Rejected` when it is missing or unfit)."""

    path: Path  #: where it was found; its name is checked, the report shows it
    file: BinaryIO
    signature: Callable[[], bytes]


def check_file(home: Path, path: Path, progress: Progress | None = None) -> CheckReport:
    """Check and reconcile the file at ``path`` (links followed); never raises for a
    bad file."""
    path = Path(path)
    try:
        fd = _open_regular(path)
    except Rejected as exc:
        return CheckReport(file=str(path), reason=str(exc))
    sig = path.with_name(path.name + ".sig")
    with os.fdopen(fd, "rb") as f:
        return check_opened(home, Opened(path, f, lambda: _signature_at(sig)), progress)


def check_opened(home: Path, opened: Opened, progress: Progress | None = None) -> CheckReport:
    """Check and reconcile an opened file against the journal of ``home``'s
    ``[journal] url`` (source.py); never raises for a bad file (StoreUnavailable, and
    JournalTooOld, when the journal cannot be read: nothing judged)."""
    report = CheckReport(file=str(opened.path))
    try:
        name = _name(opened.path)
        keys = KeyStore(Path(home) / "keys")
        key = signer_key(keys, name.from_party)
        sig = opened.signature()
        journal = journal_of(Path(home))
        if not _proved(journal, keys.party, name, opened.file, key, sig, report, progress):
            _scan_and_check(journal, keys.party, opened.file, name, key, sig, report,
                            progress)
    except Rejected as exc:
        report.valid, report.reason = False, str(exc)
    return report


def _open_regular(path: Path) -> int:
    try:  # O_NONBLOCK: a fifo of that name must not hang the check
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        fd = -1
    if fd < 0 or not stat.S_ISREG(os.fstat(fd).st_mode):
        if fd >= 0:
            os.close(fd)
        raise Rejected(f"file: {path} does not exist or is not a regular file")
    return fd


def _name(path: Path) -> FileName:
    try:
        return parse_name(path.name)
    except ValueError as exc:
        raise Rejected(f"name: {exc}") from None


def _signature_at(sig: Path) -> bytes:
    """The ``.sig`` beside a file the operator named (links followed)."""
    try:
        fd = os.open(sig, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Rejected(f"legitimacy: signature file {sig.name} is missing") from None
    except OSError as exc:
        raise Rejected(f"legitimacy: signature file {sig.name} cannot be read: "
                       f"{exc.strerror}") from None
    try:
        return signature_of(fd, sig.name)
    finally:
        os.close(fd)


def signature_of(fd: int, name: str) -> bytes:
    """The opened ``.sig``'s bytes, read bounded; :class:`Rejected` if unfit."""
    try:
        return read_signature(fd, name)
    except UnfitSignatureFile as exc:
        raise Rejected(f"legitimacy: {exc}") from None


def _proved(journal: JournalRef, gateway: str, name: FileName, file: BinaryIO, key: PublicKey,
            sig: bytes, report: CheckReport, progress: Progress | None) -> bool:
    """The fast path (fingerprint.py): True if it proved the file valid and matched."""
    if not fingerprint.available(name, gateway, journal):
        return False
    try:
        rec = fingerprint.prove(journal, gateway, name, file, key, sig, _header, progress)
    except fingerprint.Declined as exc:
        log.info("%s: exact check (%s)", name.text, exc)
        return False
    report.valid, report.records, report.reconciliation = True, rec.matched, rec
    return True


def _scan_and_check(journal: JournalRef, gateway: str, file: BinaryIO, name: FileName,
                    key: PublicKey, sig: bytes, report: CheckReport,
                    progress: Progress | None) -> None:
    ws = Workspace(name.file_type) if name.file_type in RECONCILED_TYPES else None
    try:
        scan = _read(file, Scanner(name.file_type, ws.sink if ws else None), progress)
        _legitimacy(key, sig, file, scan, name)
        report.records = scan.records
        _header(scan.header, name)
        unsunk = scan.unsunk_fen
        _trailer(scan, None if unsunk is None else unsunk + (ws.total_fen() if ws else 0))
        _well_formed(scan.error, ws)
        report.valid = True
        report.overdrafts = scan.overdrafts
        if ws is not None:
            report.reconciliation = ws.reconcile(journal, gateway, name)
    finally:
        if ws is not None:
            ws.close()


def _read(file: BinaryIO, scanner: Scanner, progress: Progress | None) -> ScanResult:
    """Feed the opened file, from its start, to the scanner in 1 MiB blocks."""
    total = os.fstat(file.fileno()).st_size
    file.seek(0)
    while chunk := file.read(READ_BYTES):
        scanner.feed(chunk)
        if progress is not None:
            progress(scanner.result.size, total)
    return scanner.finish()


def _legitimacy(key: PublicKey, sig: bytes, file: BinaryIO, scan: ScanResult,
                name: FileName) -> None:
    try:
        verify_file(key, sig, file, scan.file_sha256)
    except BadSignature:
        raise Rejected(f"legitimacy: signature {name.text}.sig does not verify with the "
                       f"registered key of {name.from_party}") from None


def _header(header: str | None, name: FileName) -> None:
    if header is None:
        raise Rejected("header: the file is empty")
    if header.startswith("\ufeff"):
        raise Rejected("header: the file starts with a byte-order mark; §8 files are UTF-8 "
                       "without one")
    if header.endswith("\r"):
        raise Rejected("header: CRLF line ends; §8 files use LF only")
    parts = header.split("|")
    if len(parts) != 7 or parts[0] != "H":
        raise Rejected(f"header: line 1 is not H|SBDX1|TYPE|YYYYMMDD|FROM|TO|CREATED "
                       f"({len(parts)} fields)")
    expected = (VERSION, name.file_type, f"{name.day:%Y%m%d}", name.from_party, name.to_party)
    labels = ("Version", "Type", "Date", "From", "To")
    for label, want, got in zip(labels, expected, parts[1:6], strict=False):
        if got != want:
            raise Rejected(f"header: field {label} is {got!r}, the file name says {want!r}")
    if not CREATED_RE.fullmatch(parts[6]):
        raise Rejected(f"header: field Created {parts[6][:80]!r} is not an ISO-8601 extended "
                       "date and time with a UTC offset (YYYY-MM-DDThh:mm:ss+hh:mm)")


def _trailer(scan: ScanResult, total_fen: int | None) -> None:
    raw = scan.trailer
    if raw is None:
        raise Rejected("integrity: trailer line T missing")
    if not raw.endswith(b"\n"):
        raise Rejected("integrity: the trailer line does not end with LF")
    parts = raw[:-1].decode("utf-8", "replace").split("|")
    if len(parts) != 4 or parts[0] != "T":
        raise Rejected("integrity: the last line is not a trailer T|COUNT|SUM|SHA256")
    for (label, rx), value in zip(TRAILER_PARTS.items(), parts[1:], strict=True):
        if not re.fullmatch(rx, value):
            raise Rejected(f"integrity: trailer {label} {value[:80]!r} is malformed")
    count, total, digest = parts[1:]
    if digest.lower() != scan.body_sha256:
        raise Rejected(f"integrity: trailer digest {digest} does not match the sha256 of "
                       f"the bytes before the trailer ({scan.body_sha256})")
    if int(count) != scan.records:
        raise Rejected(f"integrity: trailer count {count} but the file has "
                       f"{scan.records} records")
    if total_fen is not None and total != fen_text(total_fen):
        raise Rejected(f"integrity: trailer sum {total} but the records sum to "
                       f"{fen_text(total_fen)}")


def _well_formed(error: RecordError | None, ws: Workspace | None) -> None:
    dup = ws.first_duplicate() if ws is not None else None
    if dup is not None and (error is None or dup[0] < error.line):
        raise Rejected(f"record: line {dup[0]}, field BizSn: duplicate BizSn {dup[1]} "
                       f"(first on line {dup[2]})")
    if error is not None:
        raise Rejected(f"record: {error.text()}")
