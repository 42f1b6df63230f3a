"""The simulated parties' books: their store is gateway/store/sqlite/ledger.py."""
from __future__ import annotations

from ..store.sqlite.ledger import (
    ADDED_COLUMNS,
    SCHEMA,
    Account,
    Ledger,
    Op,
    Tombstone,
    biz_key,
)

__all__ = ["ADDED_COLUMNS", "SCHEMA", "Account", "Ledger", "Op", "Tombstone", "biz_key"]
