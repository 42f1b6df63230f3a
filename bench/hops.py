"""Where a relayed round trip's time goes, from the three journals of a kept run (issue 8).

    python bench/relay.py --open-rate 777 --open-only --keep   # prints "kept DIR"
    python bench/hops.py DIR [--skip 3] [--worst 0]

Every party journals each message with the time it acted on it (``message.at``: the
broker when it built the request, the gateway when it verified and relayed it, the
bank when it booked it, ...), all on this machine's clock. For every XFER.OUT round
trip this joins the eight stamps by MsgId / RefId and splits it into seven segments:

    broker built → gateway acted → gateway relayed → bank acted → bank answered →
    gateway acted → gateway relayed → broker acted

A process stamps an inbound message when it acts on it (after its turn's parse, XSD
and signature stage, which is batched) and an outbound one when it queues it (before
the turn's sealing: MAC, signature, evidence row). So the three "acted" segments are
only the business step; the four ways between two processes hold the rest of both
processes' per-frame work, the sender's commit (fsync) and write, and the waits: for a
CPU, and for the receiver's current turn to end. Printed: the
p50/p90/p99/mean of each segment, and the mean of each over the slowest 1 % of round
trips (is the tail one station or all of them?); ``--worst N`` lists N slowest.
"""
from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
from pathlib import Path

from relay_driver import percentiles

SEGMENTS = ("broker → gateway", "gateway, request", "gateway → bank", "bank",
            "bank → gateway", "gateway, answer", "gateway → broker")


def _stamps(db: Path, direction: str, msg_type: str, key: str) -> dict[str, float]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(f"SELECT {key}, at FROM message WHERE direction=? AND msg_type=?",
                           (direction, msg_type))
        return {k: t for k, t in rows if k}
    finally:
        con.close()


def journals(root: Path) -> tuple[Path, Path, Path]:
    """The broker's, the gateway's and the bank's journal in a kept run folder."""
    return (root / "gtja" / "data" / "GTJA-ledger.sqlite3",
            root / "gw" / "data" / "journal.sqlite3",
            root / "ccb" / "data" / "CCB-ledger.sqlite3")


def round_trips(root: Path) -> tuple[list[str], list[dict[str, float]]]:
    """Request MsgIds in send order, and the eight stamp maps (MsgId → time)."""
    broker, gateway, bank = journals(root)
    req, rsp = "XFER.OUT.REQ", "XFER.OUT.RSP"
    maps = [_stamps(broker, "OUT", req, "msg_id"), _stamps(gateway, "IN", req, "msg_id"),
            _stamps(gateway, "OUT", req, "msg_id"), _stamps(bank, "IN", req, "msg_id"),
            _stamps(bank, "OUT", rsp, "ref_id"), _stamps(gateway, "IN", rsp, "ref_id"),
            _stamps(gateway, "OUT", rsp, "ref_id"), _stamps(broker, "IN", rsp, "ref_id")]
    ids = sorted((m for m in maps[0] if all(m in s for s in maps)), key=maps[0].__getitem__)
    return ids, maps


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="a run folder kept by bench/relay.py --keep")
    p.add_argument("--skip", type=float, default=3.0, help="seconds of warm-up to leave out")
    p.add_argument("--worst", type=int, default=0, help="list the N slowest round trips")
    args = p.parse_args(argv)
    missing = [str(db) for db in journals(args.root) if not db.is_file()]
    if missing:
        print(f"no journal at {', '.join(missing)}: is {args.root} a folder kept by "
              "bench/relay.py --keep?", file=sys.stderr)
        return 2
    ids, maps = round_trips(args.root)
    if not ids:
        print("no complete round trip in", args.root)
        return 1
    start = maps[0][ids[0]]
    ids = [i for i in ids if maps[0][i] >= start + args.skip]
    if not ids:
        print(f"no round trip after the first {args.skip:g} s in", args.root)
        return 1
    total = percentiles(sorted((maps[7][i] - maps[0][i]) * 1e3 for i in ids))
    print(f"{len(ids)} round trips: p50 {total['p50']:.1f}, p90 {total['p90']:.1f}, "
          f"p99 {total['p99']:.1f} ms (broker built → broker acted)")
    threshold = total["p99"] / 1e3
    tail = [i for i in ids if maps[7][i] - maps[0][i] >= threshold]
    print(f"{'segment':18} {'p50':>6} {'p90':>6} {'p99':>6} {'mean':>6}  mean over the slowest 1 %")
    for k, name in enumerate(SEGMENTS):
        seg = sorted((maps[k + 1][i] - maps[k][i]) * 1e3 for i in ids)
        at = percentiles(seg)
        slow = statistics.mean((maps[k + 1][i] - maps[k][i]) * 1e3 for i in tail)
        print(f"{name:18} {at['p50']:6.2f} {at['p90']:6.2f} {at['p99']:6.2f} "
              f"{statistics.mean(seg):6.2f}  {slow:6.2f}")
    for i in sorted(sorted(ids, key=lambda i: maps[0][i] - maps[7][i])[:args.worst],
                    key=maps[0].__getitem__):
        parts = " ".join(f"{(maps[k + 1][i] - maps[k][i]) * 1e3:6.1f}" for k in range(7))
        print(f"at {maps[0][i] - start:7.3f} s: {(maps[7][i] - maps[0][i]) * 1e3:6.1f} ms = {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
