"""Double-entry ledger in SQLite for the reference peers (integer fen only).

Every movement is a posting (debit account, credit account, amount) tagged with
the business key that caused it, so a reversal can undo exactly that business
once, and the books can be checked: the sum of all balances never changes.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS account (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    level INTEGER,
    name TEXT,
    id_type TEXT,
    id_no TEXT,
    link TEXT,
    balance_fen INTEGER NOT NULL,
    out_day TEXT,
    out_today_fen INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS posting (
    id INTEGER PRIMARY KEY,
    biz_key TEXT NOT NULL,
    debit TEXT NOT NULL,
    credit TEXT NOT NULL,
    amount_fen INTEGER NOT NULL,
    day TEXT NOT NULL,
    reversal INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS posting_key ON posting (biz_key);
CREATE TABLE IF NOT EXISTS op (
    biz_key TEXT PRIMARY KEY,
    biz_type TEXT NOT NULL,
    origin TEXT NOT NULL,
    biz_sn TEXT NOT NULL,
    day TEXT NOT NULL,
    at TEXT NOT NULL,
    result TEXT NOT NULL,
    amount_fen INTEGER,
    fund_acct TEXT,
    wallet_id TEXT,
    ref_sn TEXT,
    sweep_ref TEXT,
    extra TEXT,
    reversed INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class Account:
    id: str
    kind: str
    level: int | None
    name: str | None
    id_type: str | None
    id_no: str | None
    link: str | None
    balance_fen: int
    out_day: str | None
    out_today_fen: int


@dataclass(frozen=True)
class Op:
    """One business request as the peer booked it (its own idempotency record)."""

    biz_key: str
    biz_type: str
    origin: str
    biz_sn: str
    day: str
    at: str
    result: str
    amount_fen: int | None
    fund_acct: str | None
    wallet_id: str | None
    ref_sn: str | None
    sweep_ref: str | None
    extra: str | None
    reversed: int


def biz_key(origin: str, biz_type: str, biz_sn: str) -> str:
    return f"{origin}|{biz_type}|{biz_sn}"


class Ledger:
    """Accounts, postings and booked operations of one simulated party."""

    def __init__(self, path: Path, group_commit: bool = False) -> None:
        """``group_commit``: bookings (each atomic, as a savepoint) share one transaction
        that :meth:`flush` commits — the owner flushes before it answers anyone, so one
        fsync covers every booking of a reactor turn, as the gateway's journal does."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._group = group_commit
        self._in_tx = False
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    # --- accounts -------------------------------------------------------------
    def open_account(self, acct_id: str, kind: str, balance_fen: int = 0, *,
                     level: int | None = None, name: str | None = None,
                     id_type: str | None = None, id_no: str | None = None,
                     link: str | None = None) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO account (id, kind, level, name, id_type, id_no, link,"
            " balance_fen) VALUES (?,?,?,?,?,?,?,?)",
            (acct_id, kind, level, name, id_type, id_no, link, balance_fen))

    def account(self, acct_id: str) -> Account | None:
        row = self.db.execute("SELECT * FROM account WHERE id=?", (acct_id,)).fetchone()
        return Account(*row) if row else None

    def accounts(self, kind: str | None = None) -> list[Account]:
        sql, args = "SELECT * FROM account", ()
        if kind:
            sql, args = sql + " WHERE kind=?", (kind,)
        return [Account(*r) for r in self.db.execute(sql + " ORDER BY id", args)]

    def set_link(self, acct_id: str, link: str | None) -> None:
        self.db.execute("UPDATE account SET link=? WHERE id=?", (link, acct_id))

    def total(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(balance_fen),0) FROM account")
                   .fetchone()[0])

    # --- postings ---------------------------------------------------------------
    def post(self, key: str, debit: str, credit: str, amount_fen: int, day: str,
             reversal: bool = False) -> None:
        """Move ``amount_fen`` from ``debit`` to ``credit`` (caller checked funds)."""
        self.db.execute("UPDATE account SET balance_fen = balance_fen - ? WHERE id=?",
                        (amount_fen, debit))
        self.db.execute("UPDATE account SET balance_fen = balance_fen + ? WHERE id=?",
                        (amount_fen, credit))
        self.db.execute("INSERT INTO posting (biz_key, debit, credit, amount_fen, day, reversal)"
                        " VALUES (?,?,?,?,?,?)", (key, debit, credit, amount_fen, day,
                                                  int(reversal)))

    def note_outflow(self, acct_id: str, amount_fen: int, day: str) -> None:
        self.db.execute(
            "UPDATE account SET out_today_fen = CASE WHEN out_day=? THEN out_today_fen ELSE 0 END"
            " + ?, out_day=? WHERE id=?", (day, amount_fen, day, acct_id))

    def undo(self, key: str, day: str) -> int:
        """Reverse every posting of ``key`` once; returns how many were undone."""
        rows = self.db.execute("SELECT debit, credit, amount_fen FROM posting WHERE biz_key=?"
                               " AND reversal=0 ORDER BY id DESC", (key,)).fetchall()
        for debit, credit, amount in rows:
            self.post(key, credit, debit, amount, day, reversal=True)
        return len(rows)

    # --- operations -------------------------------------------------------------
    def op(self, key: str) -> Op | None:
        row = self.db.execute("SELECT * FROM op WHERE biz_key=?", (key,)).fetchone()
        return Op(*row) if row else None

    def book(self, op: Op) -> None:
        self.db.execute("INSERT INTO op VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        (op.biz_key, op.biz_type, op.origin, op.biz_sn, op.day, op.at, op.result,
                         op.amount_fen, op.fund_acct, op.wallet_id, op.ref_sn, op.sweep_ref,
                         op.extra, op.reversed))

    def mark_reversed(self, key: str) -> None:
        self.db.execute("UPDATE op SET reversed=1 WHERE biz_key=?", (key,))

    def ops(self, day: str | None = None) -> list[Op]:
        sql, args = "SELECT * FROM op", ()
        if day:
            sql, args = sql + " WHERE day=?", (day,)
        return [Op(*r) for r in self.db.execute(sql + " ORDER BY rowid", args)]

    def begin(self) -> None:
        if not self._group:
            self.db.execute("BEGIN IMMEDIATE")
            return
        if not self._in_tx:
            self.db.execute("BEGIN IMMEDIATE")
            self._in_tx = True
        self.db.execute("SAVEPOINT booking")

    def commit(self) -> None:
        self.db.execute("RELEASE booking" if self._group else "COMMIT")

    def rollback(self) -> None:
        if self._group:
            self.db.execute("ROLLBACK TO booking")
            self.db.execute("RELEASE booking")
        else:
            self.db.execute("ROLLBACK")

    def flush(self) -> None:
        """Make every booking so far durable (group-commit mode; a no-op otherwise)."""
        if self._in_tx:
            self.db.execute("COMMIT")
            self._in_tx = False
