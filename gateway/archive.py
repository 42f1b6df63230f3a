"""``gateway archive --out DIR`` and ``gateway archive verify DIR`` (PROTOCOL §11).

The technical exit's freeze: a folder laid out like a gateway home, without one
private key, that proves itself.

    DIR/data/journal.sqlite3        the journal, a consistent copy (SQLite backup API)
    DIR/data/archive/YYYYMM.sqlite3 evidence moved out by ``[journal] retention_days``
    DIR/gateway.toml                the configuration (when there is one)
    DIR/keys/...                    certificates, trust roots, peers.json and the peers'
                                    registered public keys (current, next, retired)
    DIR/MANIFEST                    ``sha256sum`` lines: hex digest, two spaces, name
    DIR/MANIFEST.sig                the gateway key's detached signature of MANIFEST (§8)

The copies are taken while the gateway serves, from this separate process: the
backup API reads each database in one step, inside one read transaction, so the copy
is the database as of one commit (WAL readers never block the writer).  The copy is
turned to rollback-journal mode, so it is one self-contained file.

The journal is the SQLite file ``[journal] url`` names.  A PostgreSQL journal is
not copied (:data:`POSTGRESQL_REFUSAL`, exit 1): it is dumped with pg_dump, and
``--without-journal`` archives the configuration and public keys alone.

``verify`` re-hashes every file, looks for files missing, changed or added, and checks
the signature with the certificate in the archive (or one given with ``--cert``);
exit 0 when everything holds, 2 otherwise, one line per problem.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .exitcodes import EXIT_FAILED, EXIT_OK, EXIT_REJECTED
from .filemodes import DIR_MODE, create_private, private_dir
from .keystore import GATEWAY_CRT, KeyStore, KeyStoreMissing
from .signature import PublicKey, load_public_key

MANIFEST = "MANIFEST"
MANIFEST_SIG = "MANIFEST.sig"
JOURNAL = PurePosixPath("data/journal.sqlite3")
#: Where ``[journal] retention_days`` moves evidence (gateway/evidencearchive.py).
EVIDENCE_DIR = PurePosixPath("data/archive")
CONFIG = "gateway.toml"
#: Files of ``keys/`` that are public: certificates (``gateway.crt``, ``gateway.crt.<time>``,
#: ``gateway-chain.crt``, ``ca.crt``, ``trust/*``), the peers' keys (``peers/*.pem``,
#: retired ones too) and the registry (``peers.json``, ``gateway.json``).
PUBLIC_KEY_FILE = re.compile(r"(.*\.(pem|crt|json)|.*\.crt\.[^/]*)\Z")
#: Never copied, whatever their name says: any file holding one of these.
SECRET_MARKERS = (b"PRIVATE KEY",)
#: ``archive`` of a gateway whose ``[journal] url`` is PostgreSQL (exit 1).
POSTGRESQL_REFUSAL = (
    "the journal is in PostgreSQL ([journal] url) and an archive copies a SQLite journal"
    " only: dump it with pg_dump (docs/operations.md \"Technical exit: archive\"), then"
    " archive the configuration and keys with --without-journal")
_LINE = re.compile(r"([0-9a-f]{64})  (\S(?:.*\S)?)\Z")
_CHUNK = 1 << 20


class ArchiveError(Exception):
    """The archive could not be made; the text says what to do."""


# --- making one ------------------------------------------------------------------------
@dataclass
class Made:
    """What ``archive --out`` wrote, and what it left out (with why)."""

    out: Path
    files: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)


def create(home: Path, out: Path, *, with_journal: bool = True) -> Made:
    """Write the archive of ``home`` into the new or empty folder ``out``
    (``with_journal`` False: the configuration and public keys only)."""
    keys = _key_store(home)
    journal = _journal_file(home) if with_journal else None
    _empty_dir(out)
    made = Made(out)
    if journal is not None:
        from .store.sqlite.backup import BackupError, copy_journal  # as `gateway backup`

        try:
            copy_journal(journal, _target(out, JOURNAL))
        except BackupError as exc:
            raise ArchiveError(str(exc)) from None
        made.files.append(str(JOURNAL))
        for path in sorted((journal.parent / "archive").glob("*.sqlite3")):
            _copy_database(path, out, EVIDENCE_DIR / path.name, made)
    if (home / CONFIG).is_file():
        _copy_file(home / CONFIG, out, PurePosixPath(CONFIG), made)
    for path, name in _public_key_files(keys.keys_dir):
        if any(marker in path.read_bytes() for marker in SECRET_MARKERS):
            made.left_out.append(f"keys/{name}: holds a private key")
            continue
        _copy_file(path, out, PurePosixPath("keys") / name, made)
    manifest = out / MANIFEST
    _write(manifest, b"".join(f"{_sha256(out / n)}  {n}\n".encode()
                              for n in sorted(made.files)))
    from .eod.signing import sign_file  # §8's detached signature, as EOD files have

    digest = hashlib.sha256(manifest.read_bytes()).digest()
    _write(out / MANIFEST_SIG, sign_file(keys.signer(), manifest, digest))
    _fsync_dirs(out)
    return made


def _journal_file(home: Path) -> Path:
    """The SQLite journal ``[journal] url`` names; ArchiveError, saying what to do
    instead, for a PostgreSQL one (or none there)."""
    from .config import ConfigError, load
    from .store import sqlite_path

    try:
        path = sqlite_path(load(home).journal_url, home)
    except ConfigError as exc:
        raise ArchiveError(f"{exc} (fix gateway.toml)") from None
    if path is None:
        raise ArchiveError(POSTGRESQL_REFUSAL)
    if not path.is_file():
        raise ArchiveError(f"no journal at {path}: is --home the gateway's home?")
    return path


def _key_store(home: Path) -> KeyStore:
    try:
        keys = KeyStore(home / "keys")
        keys.signer()
    except KeyStoreMissing as exc:
        raise ArchiveError(f"{exc}") from None
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"the gateway key cannot be read ({exc}); the archive is signed "
                           "with it: run from the gateway's home (--home)") from None
    return keys


def _empty_dir(out: Path) -> None:
    """``out`` made 0700 if missing; an existing one must be an empty folder."""
    if os.path.lexists(out):
        if not out.is_dir() or out.is_symlink():
            raise ArchiveError(f"{out} exists and is not a folder: name a new or empty one")
        if any(out.iterdir()):
            raise ArchiveError(f"{out} is not empty: name a new or empty folder (an archive "
                               "is never written over another)")
        os.chmod(out, DIR_MODE)
    else:
        private_dir(out)


def _target(out: Path, name: PurePosixPath) -> Path:
    path = out.joinpath(*name.parts)
    private_dir(path.parent)
    return path


def _write(path: Path, data: bytes) -> None:
    fd = create_private(path)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _copy_file(src: Path, out: Path, name: PurePosixPath, made: Made) -> None:
    _write(_target(out, name), src.read_bytes())
    made.files.append(str(name))


def _copy_database(src: Path, out: Path, name: PurePosixPath, made: Made) -> None:
    """A consistent copy of the month file ``src`` of the retention, which the gateway
    may be writing (gateway/store/sqlite/monthfiles.py; the journal goes through
    ``copy_journal``, which checks it is one)."""
    from .store.interfaces import StoreUnavailable
    from .store.sqlite.monthfiles import copy_month_file

    try:
        copy_month_file(src, _target(out, name))
    except StoreUnavailable as exc:
        raise ArchiveError(f"{exc}; run the archive again") from None
    made.files.append(str(name))


def _public_key_files(keys_dir: Path) -> Iterator[tuple[Path, str]]:
    for path in sorted(keys_dir.rglob("*")):
        name = path.relative_to(keys_dir).as_posix()
        if path.is_file() and not path.is_symlink() and PUBLIC_KEY_FILE.match(path.name):
            yield path, name


def _fsync_dirs(out: Path) -> None:
    for folder in [out, *[p for p in out.rglob("*") if p.is_dir()]]:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --- checking one ----------------------------------------------------------------------
@dataclass
class Verdict:
    """What ``archive verify`` found: no problems means the archive holds."""

    files: int = 0
    problems: list[str] = field(default_factory=list)
    signer: str | None = None  #: the certificate that checked the signature


def verify(out: Path, cert: Path | None = None) -> Verdict:
    """Check every file of the archive at ``out`` against MANIFEST, and MANIFEST
    against MANIFEST.sig with ``cert`` (default: the archive's ``keys/gateway.crt``)."""
    verdict = Verdict()
    if not out.is_dir():
        verdict.problems.append(f"no archive at {out}: not a folder")
        return verdict
    manifest = out / MANIFEST
    if not _regular(manifest):
        verdict.problems.append(f"missing: {MANIFEST} (the list of files and their digests)")
        return verdict
    listed = _read_manifest(manifest.read_bytes(), verdict)
    for name, digest in listed.items():
        path = out / name
        if not _regular(path):
            verdict.problems.append(f"missing: {name}")
        elif _sha256(path) != digest:
            verdict.problems.append(f"changed: {name} (its SHA-256 is not MANIFEST's)")
        else:
            verdict.files += 1
    for name in _present(out):
        if name not in listed and name not in (MANIFEST, MANIFEST_SIG):
            verdict.problems.append(f"extra: {name} (not in MANIFEST)")
    _check_signature(out, cert, verdict)
    return verdict


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _read_manifest(data: bytes, verdict: Verdict) -> dict[str, str]:
    listed: dict[str, str] = {}
    for number, raw in enumerate(data.split(b"\n")[:-1] if data.endswith(b"\n")
                                 else data.split(b"\n"), 1):
        m = _LINE.match(raw.decode("utf-8", "replace"))
        name = PurePosixPath(m.group(2)) if m else None
        if m is None or name is None or name.is_absolute() or ".." in name.parts \
                or str(name) in (MANIFEST, MANIFEST_SIG):
            verdict.problems.append(f"{MANIFEST} line {number} is not 'SHA256  NAME' of a "
                                    "file inside the archive")
        elif str(name) in listed:
            verdict.problems.append(f"{MANIFEST} lists {name} twice")
        else:
            listed[str(name)] = m.group(1)
    return listed


def _present(out: Path) -> Iterator[str]:
    """Every entry under ``out`` that is not a folder (files, links, others)."""
    for root, dirs, files in os.walk(out):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            yield Path(root, name).relative_to(out).as_posix()


def _check_signature(out: Path, cert: Path | None, verdict: Verdict) -> None:
    from .eod.signing import BadSignature, verify_file

    cert_path = cert or out / "keys" / GATEWAY_CRT
    sig_path = out / MANIFEST_SIG
    try:
        pem = cert_path.read_bytes()
        public_key = load_public_key(pem)
    except (OSError, ValueError) as exc:
        verdict.problems.append(f"bad signature: no certificate to check it with "
                                f"({cert_path}: {exc})")
        return
    verdict.signer = f"{cert_path} (SHA-256 fingerprint {_fingerprint(pem, public_key)})"
    if not _regular(sig_path):
        verdict.problems.append(f"missing: {MANIFEST_SIG} (the signature of {MANIFEST})")
        return
    manifest = (out / MANIFEST).read_bytes()
    with open(out / MANIFEST, "rb") as f:
        try:
            verify_file(public_key, sig_path.read_bytes()[:4096], f,
                        hashlib.sha256(manifest).digest())
        except BadSignature:
            verdict.problems.append(f"bad signature: {MANIFEST_SIG} does not verify over "
                                    f"{MANIFEST} with {verdict.signer}")


def _fingerprint(pem: bytes, public_key: PublicKey) -> str:
    if b"-----BEGIN CERTIFICATE-----" in pem:
        return x509.load_pem_x509_certificate(pem).fingerprint(hashes.SHA256()).hex(":")
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


# --- the commands ----------------------------------------------------------------------
def archive_command(home: Path, out: Path, with_journal: bool = True) -> int:
    """``gateway archive --out DIR [--without-journal]``: 0 written, 1 not (the reason
    on stderr)."""
    try:
        made = create(home, out, with_journal=with_journal)
    except ArchiveError as exc:
        print(f"gateway archive: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for line in made.left_out:
        print(f"gateway archive: left out {line}", file=sys.stderr)
    print(f"archive {out}: {len(made.files)} files"
          + ("" if with_journal else " (configuration and keys, no journal)")
          + f", {MANIFEST} signed ({MANIFEST_SIG}); check it with: gateway archive verify"
          f" {out}")
    return EXIT_OK


def verify_command(out: Path, cert: Path | None) -> int:
    """``gateway archive verify DIR``: 0 it holds, 2 it does not (each problem named)."""
    verdict = verify(out, cert)
    for problem in verdict.problems:
        print(f"gateway archive verify: {problem}", file=sys.stderr)
    if verdict.problems:
        print(f"archive {out}: NOT intact ({len(verdict.problems)} problem(s))",
              file=sys.stderr)
        return EXIT_REJECTED
    print(f"archive {out}: intact: {verdict.files} files match {MANIFEST}; signature "
          f"verified with {verdict.signer}")
    return EXIT_OK


__all__ = ["ArchiveError", "Made", "Verdict", "archive_command", "create",
           "verify", "verify_command"]
