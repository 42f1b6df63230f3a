"""End-of-day SQL over the journal (PROTOCOL §8)."""
from __future__ import annotations

from gateway.eod.mapping import LISTED_SQL

__all__ = ["LISTED_SQL"]
