"""PROTOCOL §10 alerts: each has a kind, a severity, a subject and a time; it is journaled
and logged as one ``ALERT`` line, and handed to ``[alerts] command`` once it is durable.
(Metrics and the operator page read the journal's ``alert`` table; the thresholds that
raise most kinds are in :mod:`gateway.alertrules`.)"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .bookdate import CHINA
from .journal import Journal

log = logging.getLogger(__name__)

CRITICAL = "critical"
WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    severity: str
    subject: str
    text: str
    at: float

    def as_json(self) -> str:
        """One line, as the ``[alerts] command`` gets it on stdin."""
        time = dt.datetime.fromtimestamp(self.at, CHINA).isoformat(timespec="seconds")
        return json.dumps({"kind": self.kind, "severity": self.severity,
                           "subject": self.subject, "time": time, "text": self.text},
                          ensure_ascii=False)


class Alerts:
    """Raises alerts: journaled in the current transaction, logged, handed to listeners
    after the commit that makes them durable (an alert rolled back with its message's
    savepoint is never announced)."""

    def __init__(self, journal: Journal, clock: Callable[[], float]) -> None:
        self.journal = journal
        self.clock = clock
        self.listeners: list[Callable[[Alert], None]] = []

        #: State alerts raised and not cleared since, by (kind, subject) (§10: a state
        #: kind is raised once and again only after it cleared).
        self.open: dict[tuple[str, str], Alert] = {}

    def raise_alert(self, kind: str, severity: str, subject: str, text: str) -> Alert:
        """An event alert: every call is one alert."""
        alert = Alert(kind, severity, subject, text, self.clock())
        self.journal.log_alert(alert.at, kind, severity, subject, text)
        log.warning("ALERT %s", alert.as_json())
        if self.listeners:
            self.journal.after_commit(lambda: self._announce(alert))
        return alert

    def _announce(self, alert: Alert) -> None:
        for listener in self.listeners:
            listener(alert)

    def raise_state(self, kind: str, severity: str, subject: str, text: str) -> Alert | None:
        """A state alert (peer_down, reversal_backlog, …): raised once, then not again
        until :meth:`clear`; None when it is already open."""
        key = (kind, subject)
        if key in self.open:
            return None
        alert = self.open[key] = self.raise_alert(kind, severity, subject, text)
        self.journal.on_rollback(lambda: self._forget(key))
        return alert

    def _forget(self, key: tuple[str, str]) -> None:
        self.open.pop(key, None)

    def clear(self, kind: str, subject: str) -> bool:
        """The condition of a state alert is over: it may be raised again."""
        alert = self.open.pop((kind, subject), None)
        if alert is not None:
            log.info("alert %s %s cleared", kind, subject)
        return alert is not None

    def restore(self, kind: str, subject: str, since: float) -> bool:
        """After a restart: a state alert journaled at or after ``since`` (when its
        condition began, as far as the caller can tell) is open again, without being
        raised (nor announced) a second time.  False if there is none."""
        if (kind, subject) in self.open:
            return True
        row = self.journal.last_alert(kind, subject)
        if row is None or row[0] < since:
            return False
        at, severity, text = row
        self.open[(kind, subject)] = Alert(kind, severity, subject, text, at)
        log.info("alert %s %s still open (raised %s)", kind, subject,
                 dt.datetime.fromtimestamp(at, CHINA).isoformat(timespec="seconds"))
        return True

    def recent(self, limit: int = 50) -> list[Alert]:
        """The newest alerts from the journal, newest first."""
        rows = self.journal.alerts()[-limit:]
        return [Alert(kind, severity, subject, text, at)
                for at, kind, severity, subject, text in reversed(rows)]


# --- [alerts] command -----------------------------------------------------------------
#: Commands run at once; more alerts wait in the queue for one to finish.
COMMAND_WORKERS = 4
#: Alerts waiting for a command to run; beyond, an alert is only journaled and logged.
COMMAND_QUEUE_MAX = 1000
#: A command that took longer than this is logged as slow (§10: within 5 s of the event).
COMMAND_SLOW_SECONDS = 5.0


class AlertCommand:
    """Hands each alert to ``[alerts] command`` as one JSON line on its stdin.

    Never blocks its caller (the reactor): alerts are queued and run by up to
    COMMAND_WORKERS threads, each a process of its own (its own process group, so a
    shell script's children go with it), killed after ``timeout`` seconds.  A command
    that fails, hangs or is slow is logged with its exit code and the first line of
    its stderr; what it writes to stdout is discarded.  ``argv`` empty: nothing runs."""

    def __init__(self, argv: Sequence[str] = (), timeout: float = 10.0,
                 cwd: Path | None = None, workers: int = COMMAND_WORKERS) -> None:
        self.argv = tuple(argv)
        self.timeout = timeout
        self.cwd = cwd
        self._workers = workers
        self._queue: queue.Queue[Alert | None] = queue.Queue(COMMAND_QUEUE_MAX)
        self._threads: list[threading.Thread] = []
        self._running: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0

    def configure(self, argv: Sequence[str], timeout: float) -> None:
        """A new command (SIGHUP): alerts still queued go to it."""
        self.argv, self.timeout = tuple(argv), timeout

    def __call__(self, alert: Alert) -> None:
        if not self.argv:
            return
        self._start_workers()
        try:
            with self._lock:
                self._queue.put_nowait(alert)
                self._busy += 1
        except queue.Full:
            log.error("alert command: %d alerts waiting; %s %s only journaled and logged",
                      COMMAND_QUEUE_MAX, alert.kind, alert.subject)

    def _start_workers(self) -> None:
        if self._threads:
            return
        for n in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"alert-command-{n}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while (alert := self._queue.get()) is not None:
            try:
                self._run(alert, self.argv, self.timeout)
            except Exception:  # a bug: the worker must go on with the next alert
                log.exception("alert command: running it for %s failed", alert.kind)
            finally:
                with self._lock:
                    self._busy -= 1
                    self._idle.notify_all()

    def _run(self, alert: Alert, argv: tuple[str, ...], timeout: float) -> None:
        started = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, cwd=self.cwd,
                                    start_new_session=True)
        except OSError as exc:
            log.error("alert command %s cannot run: %s (alert %s %s)", argv[0],
                      exc.strerror or exc, alert.kind, alert.subject)
            return
        with self._lock:
            self._running.add(proc)
        try:
            _, err = proc.communicate((alert.as_json() + "\n").encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            log.warning("alert command %s killed after %g s (alert %s %s)", argv[0], timeout,
                        alert.kind, alert.subject)
            return
        finally:
            with self._lock:
                self._running.discard(proc)
        self._judge(alert, argv[0], proc.returncode, err, time.monotonic() - started)

    @staticmethod
    def _judge(alert: Alert, program: str, code: int, err: bytes, spent: float) -> None:
        first = err.decode("utf-8", "replace").strip().splitlines()[:1]
        said = f": {first[0][:200]}" if first else ""
        if code != 0:
            log.warning("alert command %s exited %d%s (alert %s %s)", program, code, said,
                        alert.kind, alert.subject)
        elif spent > COMMAND_SLOW_SECONDS:
            log.warning("alert command %s took %.1f s (alert %s %s)", program, spent,
                        alert.kind, alert.subject)

    def close(self, wait: float) -> bool:
        """Let queued and running commands finish for up to ``wait`` seconds, then kill
        what still runs; True if every alert was handed over."""
        deadline = time.monotonic() + wait
        with self._lock:
            while self._busy and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(left)
            done = not self._busy
            running = list(self._running)
        for proc in running:
            _kill_group(proc)
        for _ in self._threads:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                break
        if not done:
            log.warning("alert command: stopped with alerts not handed over (they are "
                        "journaled)")
        return done


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass  # gone already
    proc.wait()
