"""Checking one clearing file (PROTOCOL §8), in §8's order, first failure wins.

name pattern → signer registered for FROM, signature valid (legitimacy) → header
matches the name → trailer digest, count, sum (integrity) → every record well-formed,
no duplicate BizSn → reconciliation against the journal (XFER/SIGN/PAY/OTC).
The file is read exactly once (one pass feeds the digests, the counters and the
scratch table) and never modified.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
from .signing import BadSignature, verify_file

READ_BYTES = 1 << 20
JOURNAL = Path("data") / "journal.sqlite3"

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


def check_file(home: Path, path: Path, progress: Progress | None = None) -> CheckReport:
    """Check and reconcile ``path``; never raises for a bad file."""
    report = CheckReport(file=str(path))
    try:
        if not path.is_file():
            raise Rejected(f"file: {path} does not exist or is not a regular file")
        name = _name(path)
        keys = KeyStore(Path(home) / "keys")
        key = signer_key(keys, name.from_party)
        sig = _signature(path)
        if not _proved(Path(home) / JOURNAL, keys.party, name, path, key, sig, report,
                       progress):
            _scan_and_check(home, keys.party, path, name, key, sig, report, progress)
    except Rejected as exc:
        report.valid, report.reason = False, str(exc)
    return report


def _name(path: Path) -> FileName:
    try:
        return parse_name(path.name)
    except ValueError as exc:
        raise Rejected(f"name: {exc}") from None


def _signature(path: Path) -> bytes:
    sig = path.with_name(path.name + ".sig")
    if not sig.is_file():
        raise Rejected(f"legitimacy: signature file {sig.name} is missing")
    return sig.read_bytes()


def _proved(journal: Path, gateway: str, name: FileName, path: Path, key: PublicKey,
            sig: bytes, report: CheckReport, progress: Progress | None) -> bool:
    """The fast path (fingerprint.py): True if it proved the file valid and matched."""
    if not fingerprint.available(name, gateway, journal):
        return False
    try:
        rec = fingerprint.prove(journal, gateway, name, path, key, sig, _header, progress)
    except fingerprint.Declined as exc:
        log.info("%s: exact check (%s)", path.name, exc)
        return False
    report.valid, report.records, report.reconciliation = True, rec.matched, rec
    return True


def _scan_and_check(home: Path, gateway: str, path: Path, name: FileName, key: PublicKey,
                    sig: bytes, report: CheckReport, progress: Progress | None) -> None:
    ws = Workspace(name.file_type) if name.file_type in RECONCILED_TYPES else None
    try:
        scan = _read(path, Scanner(name.file_type, ws.sink if ws else None), progress)
        _legitimacy(key, sig, path, scan, name)
        report.records = scan.records
        _header(scan.header, name)
        unsunk = scan.unsunk_fen
        _trailer(scan, None if unsunk is None else unsunk + (ws.total_fen() if ws else 0))
        _well_formed(scan.error, ws)
        report.valid = True
        report.overdrafts = scan.overdrafts
        if ws is not None:
            report.reconciliation = ws.reconcile(Path(home) / JOURNAL, gateway, name)
    finally:
        if ws is not None:
            ws.close()


def _read(path: Path, scanner: Scanner, progress: Progress | None) -> ScanResult:
    total = path.stat().st_size
    with open(path, "rb") as f:
        while chunk := f.read(READ_BYTES):
            scanner.feed(chunk)
            if progress is not None:
                progress(scanner.result.size, total)
    return scanner.finish()


def _legitimacy(key: PublicKey, sig: bytes, path: Path, scan: ScanResult,
                name: FileName) -> None:
    try:
        verify_file(key, sig, path, scan.file_sha256)
    except BadSignature:
        raise Rejected(f"legitimacy: signature {path.name}.sig does not verify with the "
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
