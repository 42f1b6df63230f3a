"""Writing a signed clearing file: ``.txt`` then ``.sig``, each via temp + rename.

Both are created 0600, and an output folder this makes is 0700 (PROTOCOL §9): a
clearing file lists fund accounts and wallets, and is handed over by its operator.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from gateway.filemodes import create_private, private_dir
from gateway.signature import Signer

from .fileformat import LAYOUTS, SUM_FIELD, VERSION, FileName, fen, fen_text
from .signing import sign_file

BUFFER_BYTES = 1 << 20  # flush the line buffer to disk (and the hash) every MiB


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _publish(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def header_line(name: FileName, created: dt.datetime) -> str:
    if created.tzinfo is None or created.utcoffset() is None:
        raise ValueError("created must carry a UTC offset")
    return (f"H|{VERSION}|{name.file_type}|{name.day:%Y%m%d}|{name.from_party}|"
            f"{name.to_party}|{created.isoformat(timespec='seconds')}\n")


def _write_body(f: object, name: FileName, records: Iterable[Sequence[str]],
                created: dt.datetime) -> tuple[int, int, hashlib._Hash]:
    """Write H and D lines; return (count, sum in fen, sha256 of those bytes)."""
    layout = LAYOUTS[name.file_type]
    width = len(layout)
    names = [n for n, _ in layout]
    sum_at = names.index(SUM_FIELD[name.file_type]) if name.file_type in SUM_FIELD else -1
    digest = hashlib.sha256()
    chunk: list[str] = [header_line(name, created)]
    size, count, total = 0, 0, 0
    for rec in records:
        if len(rec) != width:
            raise ValueError(f"record {count + 1}: expected {width} fields, got {len(rec)}")
        line = "D|" + "|".join(rec) + "\n"
        chunk.append(line)
        size += len(line)
        count += 1
        if sum_at >= 0:
            total += fen(rec[sum_at])
        if size >= BUFFER_BYTES:
            _emit(f, digest, chunk)
            chunk, size = [], 0
    _emit(f, digest, chunk)
    return count, total, digest


def _emit(f: object, digest: hashlib._Hash, chunk: list[str]) -> None:
    data = "".join(chunk).encode("utf-8")
    digest.update(data)
    f.write(data)  # type: ignore[attr-defined]


def write_file(out_dir: Path, file_type: str, from_party: str, to_party: str, day: dt.date,
               records: Iterable[Sequence[str]], signer: Signer, created: dt.datetime) -> Path:
    """Write ``<TYPE>_<FROM>_<TO>_<YYYYMMDD>.txt`` and, last, its ``.sig``; return the path.

    ``records`` are the D fields after ``D`` in §8 column order, as text.  Streams:
    memory stays constant whatever the number of records.
    """
    if file_type not in LAYOUTS:
        raise ValueError(f"unknown file type {file_type!r}")
    name = FileName(file_type, from_party, to_party, day)
    out_dir = private_dir(Path(out_dir))
    path = out_dir / name.text
    tmp = _tmp(path)
    try:
        with os.fdopen(create_private(tmp), "wb") as f:
            count, total, digest = _write_body(f, name, records, created)
            trailer = f"T|{count}|{fen_text(total)}|{digest.hexdigest()}\n".encode("ascii")
            f.write(trailer)
        digest.update(trailer)
        _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _write_sig(path, sign_file(signer, path, digest.digest()))
    return path


def _write_sig(path: Path, signature: bytes) -> None:
    sig = path.with_name(path.name + ".sig")
    tmp = _tmp(sig)
    try:
        with os.fdopen(create_private(tmp), "wb") as f:
            f.write(signature)
        _publish(tmp, sig)
    finally:
        tmp.unlink(missing_ok=True)
