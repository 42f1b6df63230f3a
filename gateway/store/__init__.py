"""The store layer: everything the gateway keeps durably, behind typed interfaces.

``interfaces`` (one Protocol per concern, and the unit of work), ``model`` (the plain
dataclasses every store returns) and one package per implementation (``sqlite``).
Nothing outside this package imports a database driver or writes SQL.
"""
from __future__ import annotations

from .model import (
    OPEN_STATES,
    UPDATABLE,
    Agreement,
    Alert,
    CommitStats,
    DayLine,
    Record,
    Reversal,
    StoredMessage,
)

__all__ = ["OPEN_STATES", "UPDATABLE", "Agreement", "Alert", "CommitStats", "DayLine",
           "Record", "Reversal", "StoredMessage"]
