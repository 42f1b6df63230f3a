"""The ``gateway eod check|export|watch`` command functions (PROTOCOL §9).

Each returns the process exit code and prints to stdout; errors about the
invocation itself go to stderr.  The CLI parses arguments and calls these.
"""
from __future__ import annotations

import datetime as dt
import signal
import sys
import time
from pathlib import Path

from gateway.exitcodes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from gateway.keystore import KeyStore, KeyStoreMissing

from . import report as render
from .alerting import FileAlerts
from .check import Progress, check_file
from .export import export_file
from .reconcile import JournalTooOld
from .watch import sweep


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
    except (KeyStoreMissing, JournalTooOld) as exc:
        print(f"error: {exc}", file=sys.stderr)
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


def export_command(home: Path, day: str, file_type: str, to_party: str, out_dir: Path) -> int:
    """``gateway eod export --date D --type TYPE --to PARTY [--out DIR]``; prints the path."""
    try:
        date = dt.date.fromisoformat(day)
    except ValueError:
        print(f"error: --date {day!r} is not YYYY-MM-DD", file=sys.stderr)
        return EXIT_USAGE
    try:
        path = export_file(Path(home), date, file_type.upper(), to_party, Path(out_dir))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyStoreMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(path)
    return 0


def watch_command(home: Path, folder: Path, *, poll_seconds: float = 1.0,
                  once: bool = False) -> int:
    """``gateway eod watch DIR``: check every complete file dropped into DIR, forever."""
    folder = Path(folder)
    try:
        KeyStore(Path(home) / "keys")
    except KeyStoreMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not folder.is_dir():
        print(f"error: {folder} is not a directory", file=sys.stderr)
        return EXIT_USAGE

    def log(text: str) -> None:
        print(text, flush=True)

    _interrupt_on_sigterm()
    alerts = FileAlerts(Path(home))  # §10: eod_rejected, eod_discrepancy, overdraft
    try:
        while True:
            sweep(Path(home), folder, log, alerts.judged)
            if once:
                return 0
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        return 0
    finally:
        alerts.close()
