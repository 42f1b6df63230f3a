"""§10 alerts of a checked clearing file: ``eod_rejected``, ``eod_discrepancy``,
``overdraft``.

``gateway eod check`` and ``gateway eod watch`` run in a process of their own, beside a
running gateway or without one, so they raise these alerts themselves, the way the
gateway raises its own: journaled in the journal ``[journal] url`` names (table
``alert`` of ``HOME/data/journal.sqlite3`` by default, or of the shared PostgreSQL
journal, written as a tool, unfenced, whichever gateway of a pair is active: where the
gateways' pages and metrics read every alert, whoever wrote it), logged as one
``ALERT`` line on the command's stderr, and handed to ``[alerts] command`` (read from
``gateway.toml`` for each file, so ``eod watch`` needs no restart when it changes).
``eod check`` waits for the command (at most ``command_timeout_seconds``) before it
exits; its exit code is the file's verdict, whatever the alerts did.  A journal that
cannot be written is logged, and the alerts still go to the log and the command.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from gateway.alertrules import SEVERITY, AlertSettings, AlertSettingsError, load_settings
from gateway.alerts import Alert, AlertCommand, Alerts
from gateway.journal import Journal

from .check import CheckReport
from .source import journal_of

log = logging.getLogger(__name__)

#: Overdrafts of one file raised one by one; the rest are counted in one more alert.
OVERDRAFTS_MAX = 50
#: BizSns named in an eod_discrepancy's text, per list (the report has them all).
NAMED_MAX = 5

Found = tuple[str, str, str]  # kind, subject, text


def file_alerts(report: CheckReport) -> list[Found]:
    """What a checked file raises: rejected, or valid with discrepancies; and each
    negative balance of a BAL file."""
    name = Path(report.file).name
    if not report.valid:
        return [("eod_rejected", name, f"{name} rejected: {report.reason}")]
    found: list[Found] = []
    rec = report.reconciliation
    if rec is not None and not rec.clean:
        found.append(("eod_discrepancy", name, f"{name}: matched {rec.matched}, "
                      f"{_named('missing_in_file', rec.missing_in_file)}, "
                      f"{_named('extra_in_file', rec.extra_in_file)}, "
                      f"{_named('mismatched', [m['BizSn'] for m in rec.mismatched])}"))
    for line, fund, wallet, balance in report.overdrafts[:OVERDRAFTS_MAX]:
        found.append(("overdraft", f"{fund}/{wallet}", f"{name} line {line}: FundAcct "
                      f"{fund} WalletId {wallet} balance {balance}"))
    more = len(report.overdrafts) - OVERDRAFTS_MAX
    if more > 0:
        found.append(("overdraft", name, f"{name}: {more} more negative balances (see "
                      "its report)"))
    return found


def _named(title: str, biz_sns: list[str]) -> str:
    if not biz_sns:
        return f"{title} 0"
    shown = ", ".join(biz_sns[:NAMED_MAX]) + (" …" if len(biz_sns) > NAMED_MAX else "")
    return f"{title} {len(biz_sns)} ({shown})"


class FileAlerts:
    """Raises the alerts of each file an ``eod`` command judged (:meth:`judged`)."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.command = AlertCommand(cwd=self.home)
        self.settings = AlertSettings()

    def judged(self, report: CheckReport) -> None:
        found = file_alerts(report)
        if not found:
            return
        self._configure()
        try:
            announced = self._journaled(found)
        except Exception as exc:  # noqa: BLE001 - an alert must not be lost with the journal
            log.error("alerts not journaled: the journal could not be written (%s)", exc)
            announced = False
        if not announced:
            for kind, subject, text in found:
                alert = Alert(kind, SEVERITY[kind], subject, text, time.time())
                log.warning("ALERT %s", alert.as_json())
                self.command(alert)

    def _journaled(self, found: list[Found]) -> bool:
        """Journal the alerts; they are logged and handed to the command once committed
        (True then)."""
        where = journal_of(self.home)
        journal = (Journal(where) if isinstance(where, Path)
                   else Journal(where, home=self.home))
        try:
            alerts = Alerts(journal, time.time)
            alerts.listeners.append(self.command)
            for kind, subject, text in found:
                alerts.raise_alert(kind, SEVERITY[kind], subject, text)
            journal.flush()
            return True
        finally:
            journal.close()

    def _configure(self) -> None:
        try:
            self.settings = load_settings(self.home)
        except AlertSettingsError as exc:
            log.error("%s; alerts are journaled and logged, the command is not run until it "
                      "is fixed", exc)
            self.settings = AlertSettings()
        self.command.configure(self.settings.command, self.settings.command_timeout_seconds)

    def close(self) -> None:
        """Before the process exits: the command gets the last alerts (bounded)."""
        self.command.close(self.settings.command_timeout_seconds)

