"""PROTOCOL §10 alerts: each has a kind, a severity, a subject and a time; it is journaled
and logged as one ``ALERT`` line.  (Metrics, the operator page and the ``[alerts] command``
hook build on this one place.)"""
from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

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
    """Raises alerts: journaled in the current transaction, logged, handed to listeners."""

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
        for listener in self.listeners:
            listener(alert)
        return alert

    def raise_state(self, kind: str, severity: str, subject: str, text: str) -> Alert | None:
        """A state alert (peer_down, reversal_backlog, …): raised once, then not again
        until :meth:`clear`; None when it is already open."""
        if (kind, subject) in self.open:
            return None
        alert = self.open[(kind, subject)] = self.raise_alert(kind, severity, subject, text)
        return alert

    def clear(self, kind: str, subject: str) -> bool:
        """The condition of a state alert is over: it may be raised again."""
        alert = self.open.pop((kind, subject), None)
        if alert is not None:
            log.info("alert %s %s cleared", kind, subject)
        return alert is not None

    def recent(self, limit: int = 50) -> list[Alert]:
        """The newest alerts from the journal, newest first."""
        rows = self.journal.alerts()[-limit:]
        return [Alert(kind, severity, subject, text, at)
                for at, kind, severity, subject, text in reversed(rows)]
