"""Checking one clearing file (PROTOCOL §8), in §8's order, first failure wins.

name pattern → signer registered for FROM, signature valid (legitimacy) → header
matches the name → trailer digest, count, sum (integrity) → every record well-formed,
no duplicate BizSn → reconciliation against the journal (XFER/SIGN/PAY/OTC).
The file is read exactly once (one pass feeds the digests, the counters and the
scratch table) and never modified.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gateway.keystore import KeyStore
from gateway.signature import PublicKey

from .fileformat import (
    CREATED_RE,
    RECONCILED_TYPES,
    TRAILER_RE,
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
            return 2
        return 0 if self.reconciliation is None or self.reconciliation.clean else 3


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
        key = signer_key(KeyStore(Path(home) / "keys"), name.from_party)
        sig = _signature(path)
        _scan_and_check(home, path, name, key, sig, report, progress)
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


def _scan_and_check(home: Path, path: Path, name: FileName, key: PublicKey, sig: bytes,
                    report: CheckReport, progress: Progress | None) -> None:
    ws = Workspace(name.file_type) if name.file_type in RECONCILED_TYPES else None
    try:
        scan = _read(path, Scanner(name.file_type, ws.sink if ws else None), progress)
        report.records = scan.records
        _legitimacy(key, sig, path, scan, name)
        _header(scan.header, name)
        unsunk = scan.unsunk_fen
        _trailer(scan, None if unsunk is None else unsunk + (ws.total_fen() if ws else 0))
        _well_formed(scan.error, ws)
        report.valid = True
        report.overdrafts = scan.overdrafts
        if ws is not None:
            gateway = KeyStore(Path(home) / "keys").party
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
        raise Rejected(f"header: field Created {parts[6]!r} is not ISO-8601 with a UTC offset")


def _trailer(scan: ScanResult, total_fen: int | None) -> None:
    raw = scan.trailer
    if raw is None:
        raise Rejected("integrity: trailer line T missing")
    if not raw.endswith(b"\n"):
        raise Rejected("integrity: the trailer line does not end with LF")
    m = TRAILER_RE.fullmatch(raw[:-1].decode("utf-8", "replace"))
    if m is None:
        raise Rejected("integrity: the last line is not a trailer T|COUNT|SUM|SHA256")
    if m.group(3) != scan.body_sha256:
        raise Rejected(f"integrity: trailer digest {m.group(3)} does not match the sha256 of "
                       f"the bytes before the trailer ({scan.body_sha256})")
    if int(m.group(1)) != scan.records:
        raise Rejected(f"integrity: trailer count {m.group(1)} but the file has "
                       f"{scan.records} records")
    if total_fen is not None and m.group(2) != fen_text(total_fen):
        raise Rejected(f"integrity: trailer sum {m.group(2)} but the records sum to "
                       f"{fen_text(total_fen)}")


def _well_formed(error: RecordError | None, ws: Workspace | None) -> None:
    dup = ws.first_duplicate() if ws is not None else None
    if dup is not None and (error is None or dup[0] < error.line):
        raise Rejected(f"record: line {dup[0]}, field BizSn: duplicate BizSn {dup[1]} "
                       f"(first on line {dup[2]})")
    if error is not None:
        raise Rejected(f"record: {error.text()}")
