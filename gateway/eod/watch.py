"""The drop-folder watcher (``gateway eod watch DIR``).

A file is complete when its ``.sig`` exists (§8: the ``.sig`` is written last).  Each
complete file is checked once and then moved, with its ``.sig``, into ``accepted/``
(valid, with or without discrepancies) or ``rejected/``, beside
``<name>.report.json`` and ``<name>.report.txt``.  The move is the record that a file
was processed, so a restart picks up exactly the files still in the folder.

Steps per file, each safe to repeat after a crash: check → write the reports into the
destination → move the file → move the ``.sig``.  A ``.sig`` left alone in the folder
whose file already sits in a destination without one is a move interrupted by a
crash, and is finished.  Never more than one watcher per folder.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from .check import CheckReport, check_file
from .report import as_json, as_text

ACCEPTED, REJECTED = "accepted", "rejected"
SIG = ".sig"

Log = Callable[[str], None]

log = logging.getLogger(__name__)


def complete_files(folder: Path) -> list[Path]:
    """Files of the folder whose ``.sig`` exists, by name (hidden temp files skipped)."""
    out = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = entry.name
        if (name.startswith(".") or name.endswith(SIG) or name in (ACCEPTED, REJECTED)
                or not entry.is_file()):
            continue
        if (folder / (name + SIG)).is_file():
            out.append(folder / name)
    return out


def _slots(dest: Path, name: str) -> list[Path]:
    """Where a file of this name may sit in ``dest``: ``dest/`` then ``dest/1/``, … ."""
    slots = [dest]
    if dest.is_dir():
        numbered = [p for p in dest.iterdir() if p.is_dir() and p.name.isdigit()]
        slots += sorted(numbered, key=lambda p: int(p.name))
    return slots


def free_slot(dest: Path, name: str) -> Path:
    """The first slot of ``dest`` not holding ``name``: nothing is ever overwritten."""
    for slot in _slots(dest, name):
        if not (slot / name).exists() and not (slot / (name + SIG)).exists():
            return slot
    n = 1
    while (dest / str(n)).exists():
        n += 1
    return dest / str(n)


def already_accepted(folder: Path, name: str) -> Path | None:
    dest = folder / ACCEPTED
    for slot in _slots(dest, name):
        if (slot / name).exists():
            return slot / name
    return None


def finish_interrupted(folder: Path, log: Log) -> None:
    """Move a lone ``.sig`` to its file, if a crash stopped between the two moves."""
    for sig in sorted(folder.glob("*" + SIG)):
        name = sig.name[: -len(SIG)]
        if (folder / name).exists():
            continue
        for dest in (ACCEPTED, REJECTED):
            for slot in _slots(folder / dest, name):
                if (slot / name).exists() and not (slot / sig.name).exists():
                    os.replace(sig, slot / sig.name)
                    log(f"finished moving {sig.name} into {slot}")
                    break


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def process(home: Path, folder: Path, path: Path, log: Log) -> CheckReport:
    """Check one complete file and move it, with its ``.sig``, beside its report."""
    previous = already_accepted(folder, path.name)
    if previous is not None:
        report = CheckReport(file=str(path), reason=(
            f"duplicate: {path.name} was already accepted ({previous.relative_to(folder)}); "
            "a file is processed once"))
    else:
        report = _checked(home, path)
    slot = free_slot(folder / (ACCEPTED if report.valid else REJECTED), path.name)
    slot.mkdir(parents=True, exist_ok=True)
    _write_atomic(slot / f"{path.name}.report.json", as_json(report) + "\n")
    _write_atomic(slot / f"{path.name}.report.txt", as_text(report))
    os.replace(path, slot / path.name)
    os.replace(path.with_name(path.name + SIG), slot / (path.name + SIG))
    verdict = ("accepted" if report.valid else "rejected") + f" (exit {report.exit_code})"
    log(f"{path.name}: {verdict} -> {slot.relative_to(folder)}"
        + (f": {report.reason}" if report.reason else ""))
    return report


def _checked(home: Path, path: Path) -> CheckReport:
    """check_file, which never raises for a bad file; a bug must not jam the folder."""
    try:
        return check_file(home, path)
    except Exception:  # noqa: BLE001 - logged with its traceback, the file is rejected
        log.exception("checking %s failed", path.name)
        return CheckReport(file=str(path), reason="check failed: internal error (see the "
                                                  "watcher's log); the file was not judged")


def sweep(home: Path, folder: Path, log: Log) -> int:
    """One pass over the folder; the number of files processed."""
    blocked = [d for d in (ACCEPTED, REJECTED) if (folder / d).exists()
               and not (folder / d).is_dir()]
    if blocked:
        log(f"cannot sort files: {', '.join(blocked)} in {folder} is not a directory; "
            "move it away")
        return 0
    finish_interrupted(folder, log)
    files = complete_files(folder)
    for path in files:
        process(home, folder, path, log)
    return len(files)
