"""End-of-day clearing files (PROTOCOL §8) and the ``gateway eod`` commands (§9).

The names below are loaded when first used: the data modules of this package
(fileformat.py, mapping.py) are read by the store layer when the journal opens, without
the checker, the exporter and the watcher."""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .check import CheckReport, check_file
    from .commands import check_command, export_command, watch_command
    from .writer import write_file

_WHERE = {"CheckReport": "check", "check_file": "check", "check_command": "commands",
          "export_command": "commands", "watch_command": "commands", "write_file": "writer"}

__all__ = ["CheckReport", "check_file", "check_command", "export_command", "watch_command",
           "write_file"]


def __getattr__(name: str) -> object:
    if name in _WHERE:
        return getattr(import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
