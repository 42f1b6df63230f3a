"""Benchmark: check + reconcile a signed 1,000,000-record XFER file (PROTOCOL §8).

    python bench/eod_check.py [--records N] [--dir DIR] [--discrepancy]

Generates (in a child process, so its memory does not count) a key store with the
bank registered, a journal holding the day's N transfers (each with a ~1 KB stored answer, as the gateway keeps), and the bank's signed
XFER file listing the same N transfers; then runs the full check and reconciliation
in this process and prints records/s and the peak RSS (ru_maxrss) of this process.

A file that reconciles cleanly is proved by fingerprint (gateway/eod/fingerprint.py);
``--discrepancy`` makes the file's last record differ from the journal's (amount + 0.01,
trailer sum adjusted), so the fingerprint attempt fails and the exact check runs after
it: the cost of a file with discrepancies.
"""
from __future__ import annotations

import argparse
import datetime as dt
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from gateway.eod.check import check_file  # noqa: E402
from gateway.eod.fileformat import fen_text  # noqa: E402
from gateway.eod.writer import write_file  # noqa: E402
from gateway.journal import Journal, Record  # noqa: E402
from gateway.keystore import KeyStore, generate_key_file  # noqa: E402

DAY = dt.date(2026, 11, 25)
CST = dt.timezone(dt.timedelta(hours=8))
BANK, BROKER = "CCB", "GTJA"
KINDS = (("XFER.IN", "IN", BROKER, BANK), ("XFER.OUT", "OUT", BANK, BROKER))


def transfer(i: int) -> tuple[str, str, str, str, str, int, str, str, str]:
    biz_type, direction, origin, receiver = KINDS[i % 2]
    return (f"{origin}{i:09d}", biz_type, direction, origin, receiver, 100 + (i * 7919) % 9_999_900,
            f"{1_000_000_000 + i}", f"{6_200_000_000_000_000 + i}", f"BS{i:09d}")


def file_rows(n: int, discrepancy: bool = False) -> Iterator[list[str]]:
    for i in range(n):
        sn, _, direction, _, _, amount, fund, wallet, bank_sn = transfer(i)
        amount += 1 if discrepancy and i == n - 1 else 0
        sweep = f"SW{i:09d}" if direction == "IN" else ""
        yield [sn, direction, fund, wallet, fen_text(amount), "S", bank_sn, sweep,
               "2026-11-25T10:00:00+08:00"]


def journal_rows(n: int) -> Iterator[tuple[object, ...]]:
    for i in range(n):
        sn, biz_type, direction, origin, receiver, amount, fund, wallet, bank_sn = transfer(i)
        rec = Record(origin=origin, biz_type=biz_type, biz_sn=sn, receiver=receiver,
                     msg_id=f"M{i}", content_hash="h", state="SUCCEEDED",
                     trade_date=DAY.isoformat(), amount_fen=amount, fund_acct=fund,
                     wallet_id=wallet, bank_sn=bank_sn,
                     sweep_ref=f"SW{i:09d}" if direction == "IN" else None)
        yield (rec.origin, rec.biz_type, rec.biz_sn, rec.receiver, rec.msg_id,
               rec.content_hash, rec.state, rec.trade_date, rec.amount_fen, rec.fund_acct,
               rec.wallet_id, rec.bank_sn, rec.sweep_ref, i + 1, 1_790_000_000.0 + i,
               1_790_000_000.0 + i)


RESPONSE = b"<Msg>" + b"x" * 1000 + b"</Msg>"  # the stored answer, ~1 KB as in a real journal


def generate(root: Path, n: int, discrepancy: bool = False) -> Path:
    home = root / "home"
    keys = KeyStore.create(home / "keys", party="GW01")
    bank = generate_key_file(root / "ccb.key", "ES256")
    keys.add_peer(BANK, "BANK", bank.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    journal_path = home / "data" / "journal.sqlite3"
    Journal(journal_path).close()  # the real schema
    db = sqlite3.connect(journal_path)
    db.execute("PRAGMA synchronous=OFF")
    db.executemany("INSERT INTO record (origin, biz_type, biz_sn, receiver, msg_id, "
                   "content_hash, state, trade_date, amount_fen, fund_acct, wallet_id, "
                   "bank_sn, sweep_ref, response_id, created_at, updated_at) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", journal_rows(n))
    db.executemany("INSERT INTO response (id, xml) VALUES (?, ?)",
                   ((i + 1, RESPONSE) for i in range(n)))
    db.commit()
    db.close()
    created = dt.datetime(2026, 11, 25, 18, 0, tzinfo=CST)
    return write_file(root / "drop", "XFER", BANK, BROKER, DAY, file_rows(n, discrepancy), bank,
                      created)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: temp)")
    ap.add_argument("--discrepancy", action="store_true",
                    help="one record differs from the journal (exact check after the fast try)")
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sbdx-bench-") as tmp:
        root = args.dir or Path(tmp)
        if args.generate_only:
            print(generate(root, args.records, args.discrepancy))
            return 0
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--generate-only", "--records",
                              str(args.records), "--dir", str(root),
                              *(["--discrepancy"] if args.discrepancy else [])],
                             check=True, capture_output=True, text=True).stdout.strip()
        path = Path(out)
        print(f"generated {args.records:,} records ({path.stat().st_size / 1e6:.1f} MB) "
              f"in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        report = check_file(root / "home", path)
        elapsed = time.perf_counter() - t0
        rec = report.reconciliation
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"valid={report.valid} reason={report.reason} records={report.records:,} "
              f"matched={rec.matched if rec else 0:,} exit={report.exit_code}")
        print(f"check+reconcile: {elapsed:.2f} s, {report.records / elapsed:,.0f} records/s, "
              f"peak RSS {peak_mb:.0f} MB")
        return 0 if report.exit_code == (3 if args.discrepancy else 0) else 1


if __name__ == "__main__":
    sys.exit(main())
