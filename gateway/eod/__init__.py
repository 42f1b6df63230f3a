"""End-of-day clearing files (PROTOCOL §8) and the ``gateway eod`` commands (§9)."""
from __future__ import annotations

from .check import CheckReport, check_file
from .commands import check_command, export_command, watch_command
from .writer import write_file

__all__ = ["CheckReport", "check_file", "check_command", "export_command", "watch_command",
           "write_file"]
