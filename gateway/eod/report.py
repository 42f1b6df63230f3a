"""Rendering a check report: the §9 JSON object and a short human-readable text."""
from __future__ import annotations

import json
from typing import Any

from .check import CheckReport

JSON_KEYS = ("file", "valid", "reason", "records", "matched", "missing_in_file",
             "extra_in_file", "mismatched")
TEXT_LIST_MAX = 50  # discrepancies shown per kind in the text report (JSON has all)


def as_dict(report: CheckReport) -> dict[str, Any]:
    """Exactly the eight keys of §9."""
    rec = report.reconciliation
    return {
        "file": report.file,
        "valid": report.valid,
        "reason": report.reason,
        "records": report.records,
        "matched": rec.matched if rec else 0,
        "missing_in_file": list(rec.missing_in_file) if rec else [],
        "extra_in_file": list(rec.extra_in_file) if rec else [],
        "mismatched": list(rec.mismatched) if rec else [],
    }


def as_json(report: CheckReport) -> str:
    return json.dumps(as_dict(report), ensure_ascii=False, sort_keys=False)


def _listing(title: str, items: list[str]) -> list[str]:
    if not items:
        return []
    shown = items[:TEXT_LIST_MAX]
    more = f" … and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return [f"  {title} ({len(items)}): {', '.join(shown)}{more}"]


def _mismatch_lines(mismatched: list[dict[str, Any]]) -> list[str]:
    lines = [f"  mismatched ({len(mismatched)}):"] if mismatched else []
    for item in mismatched[:TEXT_LIST_MAX]:
        diffs = "; ".join(f"{k} file={v['file']!r} journal={v['journal']!r}"
                          for k, v in item["fields"].items())
        lines.append(f"    {item['BizSn']}: {diffs}")
    if len(mismatched) > TEXT_LIST_MAX:
        lines.append(f"    … and {len(mismatched) - TEXT_LIST_MAX} more")
    return lines


def as_text(report: CheckReport) -> str:
    if not report.valid:
        return f"{report.file}: REJECTED\n  reason: {report.reason}\n"
    lines = [f"{report.file}: VALID, {report.records} records"]
    rec = report.reconciliation
    if rec is None:
        lines.append("  not reconciled (BAL files are checked, not reconciled)")
    else:
        verdict = "reconciled" if rec.clean else "DISCREPANCIES"
        lines.append(f"  {verdict}: matched {rec.matched}, missing_in_file "
                     f"{len(rec.missing_in_file)}, extra_in_file {len(rec.extra_in_file)}, "
                     f"mismatched {len(rec.mismatched)}")
        lines += _listing("missing_in_file", rec.missing_in_file)
        lines += _listing("extra_in_file", rec.extra_in_file)
        lines += _mismatch_lines(rec.mismatched)
    for line, fund, wallet, balance in report.overdrafts[:TEXT_LIST_MAX]:
        lines.append(f"  ALERT overdraft: line {line} FundAcct {fund} WalletId {wallet} "
                     f"Balance {balance}")
    if len(report.overdrafts) > TEXT_LIST_MAX:
        lines.append(f"  … and {len(report.overdrafts) - TEXT_LIST_MAX} more overdrafts")
    return "\n".join(lines) + "\n"
