"""Which b-trees the gateway's commits write, page by page (issue 8 tool).

    python bench/wal_pages.py [--round-trips 1000] [--batch 1]

Runs the in-process relay (bench/relay_inproc.py: the gateway's real journal, one
commit per ``--batch`` frames) with the background checkpoints off, so the WAL keeps
every frame written; then reads the WAL's frame headers (page numbers, commit marks)
and names each page's b-tree from SQLite's ``dbstat`` table. Printed: frames per
commit, and per commit how many frames each table or index took.
"""
from __future__ import annotations

import argparse
import collections
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH.parent / "tests"), str(BENCH)]

import relay_inproc  # noqa: E402

import gateway.journal as journal_module  # noqa: E402

WAL_HEADER = 32
FRAME_HEADER = 24


class _NoCheckpoints:
    """Stands in for gateway.store.sqlite.checkpoint.Checkpointer: the WAL keeps every frame."""

    def __init__(self, writer: sqlite3.Connection, path: Path, **_: Any) -> None:
        writer.execute("PRAGMA wal_autocheckpoint=0")

    def close(self) -> None:
        pass


def wal_frames(wal: bytes) -> list[tuple[int, bool]]:
    """(page number, is a commit frame) of every frame in a WAL file's bytes."""
    page_size = struct.unpack(">I", wal[8:12])[0]
    frames, off = [], WAL_HEADER
    while off + FRAME_HEADER + page_size <= len(wal):
        page, db_size = struct.unpack(">II", wal[off:off + 8])
        frames.append((page, db_size != 0))
        off += FRAME_HEADER + page_size
    return frames


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--round-trips", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1, help="frames per reactor turn")
    args = p.parse_args(argv)
    journal_module.Checkpointer = _NoCheckpoints  # type: ignore[assignment,misc]
    with tempfile.TemporaryDirectory(prefix="sbdx-walpages-") as tmp:
        result = relay_inproc.run(args.round_trips, args.batch, None, folder=Path(tmp))
        db_path = Path(tmp) / "gw" / "data" / "journal.sqlite3"
        frames = wal_frames(Path(f"{db_path}-wal").read_bytes())
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
            owner = dict(db.execute("SELECT pageno, name FROM dbstat"))
    commits = sum(1 for _, commit in frames if commit)
    per_tree = collections.Counter(owner.get(page, "(new page)") for page, _ in frames)
    print(f"{result}: {len(frames)} WAL frames, {commits} commits, "
          f"{len(frames) / commits:.2f} frames per commit (setup included)")
    for name, n in per_tree.most_common():
        if n / commits >= 0.01:
            print(f"  {n / commits:5.2f} per commit  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
