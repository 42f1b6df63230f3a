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

    def raise_alert(self, kind: str, severity: str, subject: str, text: str) -> Alert:
        alert = Alert(kind, severity, subject, text, self.clock())
        self.journal.log_alert(alert.at, kind, severity, subject, text)
        log.warning("ALERT %s", alert.as_json())
        for listener in self.listeners:
            listener(alert)
        return alert
