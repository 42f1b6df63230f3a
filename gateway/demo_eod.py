"""The demo's end of day (§8): the bank's signed XFER, SIGN, PAY and OTC files and the
broker's BAL file — written by the simulators' own code (gateway/sim/eod.py), as
``gateway sim bank|broker --eod-dir`` writes them — checked and reconciled by the
gateway; the gateway's own XFER export re-checked."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .eod import check_file
from .eod.export import export_file
from .sim.eod import write_bal_file, write_bank_files

if TYPE_CHECKING:
    from .demo import Day
    from .sim.runtime import Sim


def _line(report: Any) -> str:
    name = Path(report.file).name
    if not report.valid:
        return f"{name}: REJECTED — {report.reason}"
    rec = report.reconciliation
    if rec is None:
        return f"{name}: valid, {report.records} records" + (
            f", {len(report.overdrafts)} overdraft alert(s)" if report.overdrafts else "")
    issues = len(rec.missing_in_file) + len(rec.extra_in_file) + len(rec.mismatched)
    return (f"{name}: valid, {report.records} records, {rec.matched} matched with the "
            f"journal, {issues} discrepancies")


def end_of_day(home: Path, day: Day, bank: Sim, broker: Sim, service: Any) -> list[str]:
    gw_home = home / "gateway"
    out = home / "eod"
    out.mkdir(exist_ok=True)
    today = dt.date.fromisoformat(bank.node.trade_date())
    created = bank.node.local_now()
    bank_party, broker_party = bank.node.config.party, broker.node.config.party
    files = [
        *write_bank_files(bank.book, out, today, broker_party, service.config.party,
                          bank.node.signer, created),
        write_bal_file(broker.book, out, today, bank_party, broker.node.signer, created),
        export_file(gw_home, today, "XFER", bank_party, out, created),
    ]
    lines = []
    for path in files:
        report = check_file(gw_home, path)
        clean = report.valid and (report.reconciliation is None or report.reconciliation.clean)
        day.check(f"{path.name} valid and reconciled", clean, report.reason or "")
        lines.append(_line(report))
    return lines
