"""The ``gateway eod check|export|watch`` command functions (PROTOCOL §9).

Each returns the process exit code and prints to stdout; errors about the
invocation itself go to stderr.  The CLI parses arguments and calls these.
"""
from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway.exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from gateway.keystore import KeyStore, KeyStoreMissing, RegistryRefusal
from gateway.store import StoreUnavailable

from . import report as render
from .alerting import FileAlerts
from .check import Progress, check_file
from .export import CST, AlreadyExported, export_file, trade_date_now, unfinished
from .reconcile import JournalTooOld
from .source import JournalRef, journal_of
from .watch import FolderBusy, Tally, hold_folder, sweep


def _interrupt_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so a check's scratch database is removed."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _progress_bar() -> Progress | None:
    """A progress bar on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None
    shown = [-1]

    def show(done: int, total: int) -> None:
        pct = 100 * done // total if total else 100
        if pct != shown[0]:
            shown[0] = pct
            bar = "#" * (pct // 4)
            end = "\n" if pct >= 100 else ""
            sys.stderr.write(f"\rchecking [{bar:<25}] {pct:3d}%{end}")
            sys.stderr.flush()

    return show


def check_command(home: Path, file: Path, as_json: bool = False) -> int:
    """``gateway eod check FILE [--json]``: 0 reconciled, 3 discrepancies, 2 rejected;
    1 when there is nothing to judge (no FILE there, no key store, journal too old).

    Prints one JSON object (``as_json``) or a short text report; the file is left
    where it is, unmodified.
    """
    if not Path(file).is_file():  # a mistyped path, or a file not delivered yet:
        # nothing to judge, so not "rejected" (2), which would blame the file's sender
        print(f"error: {file} does not exist or is not a regular file; nothing was judged",
              file=sys.stderr)
        return EXIT_FAILED
    _interrupt_on_sigterm()
    try:
        report = check_file(Path(home), Path(file), _progress_bar())
    except (KeyStoreMissing, JournalTooOld, StoreUnavailable, RegistryRefusal) as exc:
        print(f"error: {exc}; nothing was judged", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted; nothing was judged", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(render.as_json(report) if as_json else render.as_text(report), end="\n" if as_json else "",
          flush=True)
    alerts = FileAlerts(Path(home))  # §10: eod_rejected, eod_discrepancy, overdraft
    alerts.judged(report)
    alerts.close()
    return report.exit_code


def export_command(home: Path, day: str, file_type: str, to_party: str, out_dir: Path, *,
                   force: bool = False, now: dt.datetime | None = None) -> int:
    """``gateway eod export --date D --type TYPE --to PARTY [--out DIR] [--force]``;
    prints the path.  Exit 64 for a bad or future date, 1 when the file is already
    there (``--force`` replaces it); a warning on stderr, exit 0, when the trade date is
    still open (today's, or records not final yet: they are not in the file)."""
    try:
        date = dt.date.fromisoformat(day)
    except ValueError:
        print(f"error: --date {day!r} is not YYYY-MM-DD", file=sys.stderr)
        return EXIT_USAGE
    now = now or dt.datetime.now(CST)
    today = trade_date_now(now)
    if date > today:
        print(f"error: --date {date} is after today's trade date {today} (Asia/Shanghai): "
              "a day that has not begun has no business to export; give a past date, or "
              "today's", file=sys.stderr)
        return EXIT_USAGE
    kind = file_type.upper()
    path: Path | None = None
    try:
        path = export_file(Path(home), date, kind, to_party, Path(out_dir), force=force)
        pending = unfinished(Path(home), kind, date, to_party)
    except (KeyStoreMissing, StoreUnavailable, RegistryRefusal) as exc:
        print(f"error: {exc}; " + ("no file was written" if path is None else
                                   f"{path} was written but its open records not counted: "
                                   "export again with --force"), file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AlreadyExported as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(path)
    if date == today:
        print(f"warning: {date} is today's trade date (Asia/Shanghai) and still open: "
              "business of the rest of the day is not in this file; export again with "
              "--force once the day is over", file=sys.stderr)
    if pending:
        print(f"warning: {pending} {kind} record(s) with {to_party} of {date} are still "
              "PENDING or REVERSING and are left out of this file; once they are final "
              "(gateway status shows what is in flight), export again with --force",
              file=sys.stderr)
    return 0


def watch_command(home: Path, folder: Path, *, poll_seconds: float = 1.0,
                  once: bool = False, replace: bool = False) -> int:
    """``gateway eod watch DIR [--once] [--replace]``: check every complete file dropped
    into DIR, forever (exit 0 when stopped by SIGTERM/SIGINT), or once: exit 0 every
    file accepted and reconciled (or none), 3 one had discrepancies, 2 one was rejected,
    1 the folder could not be sorted.  One watcher per folder: a second is refused
    (exit 1).  A line is printed when it starts and when it stops."""
    folder = Path(folder)
    try:
        KeyStore(Path(home) / "keys")
        journal = journal_of(Path(home))
    except (KeyStoreMissing, StoreUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not folder.is_dir():
        print(f"error: {folder} is not a directory", file=sys.stderr)
        return EXIT_USAGE

    def log(text: str) -> None:
        print(text, flush=True)

    try:
        lock = hold_folder(folder)
    except FolderBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    stopped, handlers = _stop_reason_on_signals()
    tally = Tally()
    log(f"eod watch: started on {folder.resolve()} (home {Path(home).resolve()}, journal "
        f"{_journal_text(journal)}; "
        + ("one pass (--once)" if once else f"every {poll_seconds:g} s until SIGTERM/SIGINT")
        + ", replace " + ("on: a valid file replaces an accepted one of its name"
                          if replace else "off: a second file for an accepted day is rejected")
        + ")")
    alerts = FileAlerts(Path(home))  # §10: eod_rejected, eod_discrepancy, overdraft
    code = 0
    try:
        while True:
            sweep(Path(home), folder, log, alerts.judged, replace=replace, tally=tally)
            if once:
                stopped[0] = "one pass done (--once)"
                code = tally.exit_code
                return code
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        stopped[0] = stopped[0] or "SIGINT (Ctrl-C)"
        return 0
    finally:
        alerts.close()
        log(f"eod watch: stopped on {folder.resolve()} ({stopped[0] or 'error'}): "
            f"{tally.text()}" + (f"; exit {code}" if once else ""))
        os.close(lock)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _journal_text(journal: JournalRef) -> str:
    """The journal for a log line: the SQLite file, or PostgreSQL's database and host
    (never the url's password)."""
    if isinstance(journal, Path):
        return str(journal.resolve())
    parts = urlsplit(journal)
    host = parse_qs(parts.query).get("host", [parts.hostname or "localhost"])[0]
    return f"PostgreSQL {parts.path.lstrip('/') or '(default database)'} on {host}"


def _stop_reason_on_signals() -> tuple[list[str], dict[signal.Signals, Any]]:
    """SIGTERM and SIGINT unwind like Ctrl-C; the list's one item names the one that
    came.  Also returns the handlers they replaced."""
    reason = [""]

    def interrupt(signum: int, frame: object) -> None:
        reason[0] = signal.Signals(signum).name
        raise KeyboardInterrupt

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for signum in before:
        signal.signal(signum, interrupt)
    return reason, before
