"""CPU cost of one durable SQLite commit on this machine (issue 8 tool).

    python bench/commit_cost.py [--commits 3000]

Each commit inserts one 1.2 KB row into a WAL table carrying K secondary indexes, so
it dirties about K + 2 pages, like one relayed hop in a journal: the gateway's hop
writes evidence rows, a MsgId and a record with its indexes, ~12 pages. Every 300
commits a RESTART checkpoint runs, so the WAL file is reused, as the gateway's
checkpoint thread keeps it. Reported per commit: CPU (user + system, of this
process) under ``synchronous`` FULL, NORMAL and OFF. FULL − OFF is the price of the
commit's fdatasync; the gateway pays it once per reactor turn, and a relayed round
trip in the benchmark rig takes five such turns over its three processes (broker
send, gateway request hop, bank, gateway answer hop, broker receive).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

ROW_BYTES = 1200
RESTART_EVERY = 300


def commit_cost(folder: Path, synchronous: str, indexes: int, commits: int,
                rows: int = 1) -> dict[str, Any]:
    path = folder / f"c_{synchronous}_{indexes}_{rows}.db"
    db = sqlite3.connect(str(path), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA wal_autocheckpoint=0")
    columns = [f"c{i}" for i in range(indexes)]
    db.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, {', '.join(c + ' TEXT' for c in columns)},"
               " blob BLOB)")
    for c in columns:
        db.execute(f"CREATE INDEX t_{c} ON t ({c})")
    insert = (f"INSERT INTO t ({', '.join(columns)}, blob)"
              f" VALUES ({', '.join('?' * indexes)}, ?)")
    blob = os.urandom(ROW_BYTES)
    before = resource.getrusage(resource.RUSAGE_SELF)
    n = 0
    for k in range(commits):
        db.execute("BEGIN")
        for _ in range(rows):
            # half the keys ascend (appended), half are scattered over the index
            db.execute(insert, tuple(f"K{n:010d}" if i % 2 == 0 else f"{(n * 7919) % 1000003:08d}"
                                     for i in range(indexes)) + (blob,))
            n += 1
        db.execute("COMMIT")
        if k % RESTART_EVERY == RESTART_EVERY - 1:
            db.execute("PRAGMA wal_checkpoint(RESTART)")
    after = resource.getrusage(resource.RUSAGE_SELF)
    db.close()
    user = (after.ru_utime - before.ru_utime) / commits * 1e6
    system = (after.ru_stime - before.ru_stime) / commits * 1e6
    return {"synchronous": synchronous, "indexes": indexes, "rows_per_commit": rows,
            "user_us": round(user, 1), "sys_us": round(system, 1),
            "cpu_us_per_commit": round(user + system, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commits", type=int, default=3000)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="sbdx-commit-") as tmp:
        for indexes in (1, 10):
            for synchronous in ("FULL", "NORMAL", "OFF"):
                results.append(commit_cost(Path(tmp), synchronous, indexes, args.commits))
        for synchronous in ("FULL", "OFF"):  # a turn of 16 hops' rows in one commit
            results.append(commit_cost(Path(tmp), synchronous, 10, args.commits // 4, rows=16))
    print("| synchronous | indexes | rows per commit | user µs | sys µs | CPU µs per commit |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['synchronous']} | {r['indexes']} | {r['rows_per_commit']} | {r['user_us']} |"
              f" {r['sys_us']} | {r['cpu_us_per_commit']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
