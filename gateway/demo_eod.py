"""The demo's end of day (§8): the bank's signed XFER file and the broker's BAL file,
checked and reconciled by the gateway; the gateway's own XFER export re-checked."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .eod import check_file, write_file
from .eod.export import export_file

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
    files = [
        write_file(out, "XFER", bank.node.config.party, broker.node.config.party, today,
                   bank.book.xfer_records(today.isoformat(), broker.node.config.party,
                                          service.config.party),
                   bank.node.signer, created),
        write_file(out, "BAL", broker.node.config.party, bank.node.config.party, today,
                   broker.book.bal_records(), broker.node.signer, created),
        export_file(gw_home, today, "XFER", bank.node.config.party, out, created),
    ]
    lines = []
    for path in files:
        report = check_file(gw_home, path)
        clean = report.valid and (report.reconciliation is None or report.reconciliation.clean)
        day.check(f"{path.name} valid and reconciled", clean, report.reason or "")
        lines.append(_line(report))
    return lines
