"""The reference peers' books: a double-entry ledger in SQLite (integer fen only).

The simulated parties' store (gateway/sim imports it through gateway/sim/ledger.py):
every statement on their books is here, as the gateway's are in this package.

Every movement is a posting (debit account, credit account, amount) tagged with
the business key that caused it, so a reversal can undo exactly that business
once, and the books can be checked: the sum of all balances never changes.
A posting that counted against its debit wallet's daily limit says so
(``limit_use``), so undoing it gives that day's usage back.  A reversal that
arrives before its original leaves a tombstone: the original, if it comes
later, is refused and moves nothing.  The ``outbox`` table holds the requests the
party sent and has not settled yet (:mod:`gateway.sim.outbox`).

The client identity (§4: CustName, IdNo) is kept sealed at rest, as the gateway keeps
it: a client's name and ID number are AES-256-GCM under the party's storage key
(``keys/<party>.storage.key``, :func:`gateway.sim.runtime.storage_cipher`), each
bound to its account and column; so is what the outbox keeps of a request's encrypted
fields.  A ledger opened without a key (a test or tool reading balances) stores and
shows them as it finds them.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from gateway.fieldcrypto import StorageCipher
from gateway.filemodes import private_database

from . import SqliteStore
from .checkpoint import Checkpointer

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
    reversal INTEGER NOT NULL DEFAULT 0,
    limit_use INTEGER NOT NULL DEFAULT 0
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
    reversed INTEGER NOT NULL DEFAULT 0,
    order_no TEXT,
    product_code TEXT,
    agreement_no TEXT,
    book_date TEXT,
    orig_type TEXT
);
CREATE INDEX IF NOT EXISTS op_day ON op (day);
CREATE TABLE IF NOT EXISTS tombstone (
    origin TEXT NOT NULL,
    biz_type TEXT NOT NULL,
    biz_sn TEXT NOT NULL,
    reversal_key TEXT NOT NULL,
    reversal_origin TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (origin, biz_type, biz_sn)
);
CREATE TABLE IF NOT EXISTS outbox (
    biz_key TEXT PRIMARY KEY,
    msg_type TEXT NOT NULL,
    to_party TEXT NOT NULL,
    body TEXT NOT NULL,
    secret TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last TEXT,
    at TEXT NOT NULL
);
"""

#: Columns added after the first release: (table, column, declaration), for ledgers
#: created before them (``ALTER TABLE`` appends, so ``SELECT *`` order stays the same).
ADDED_COLUMNS = (
    ("posting", "limit_use", "INTEGER NOT NULL DEFAULT 0"),
    ("op", "order_no", "TEXT"),
    ("op", "product_code", "TEXT"),
    ("op", "agreement_no", "TEXT"),
    ("op", "book_date", "TEXT"),
    ("op", "orig_type", "TEXT"),
)


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
    order_no: str | None = None
    product_code: str | None = None
    agreement_no: str | None = None
    book_date: str | None = None
    orig_type: str | None = None  #: what an XFER.REVERSE reversed (its OrigType)


@dataclass(frozen=True)
class Tombstone:
    """An original reversed before it was seen: (origin, type, BizSn) and by whom."""

    origin: str
    biz_type: str
    biz_sn: str
    reversal_key: str
    reversal_origin: str
    at: str


class HasStore(Protocol):
    """A journal facade (gateway.journal.Journal): what holds a store."""

    store: SqliteStore


def biz_key(origin: str, biz_type: str, biz_sn: str) -> str:
    return f"{origin}|{biz_type}|{biz_sn}"


class Ledger:
    """Accounts, postings and booked operations of one simulated party."""

    #: Account columns holding the client identity, sealed when the ledger has a key.
    SEALED_COLUMNS = ("name", "id_no")

    def __init__(self, where: Path | SqliteStore | HasStore, group_commit: bool = False,
                 sealer: StorageCipher | None = None) -> None:
        """``where``: the ledger's own SQLite file, or a journal's store (or the journal)
        whose file and transaction the books share (group commit implied: the journal's flush commits
        the bookings with the turn's evidence, one commit and one fsync for both).

        ``group_commit``: bookings (each atomic, as a savepoint) share one transaction
        that :meth:`flush` commits — the owner flushes before it answers anyone, so one
        fsync covers every booking of a reactor turn, as the gateway's journal does.

        ``sealer``: the party's storage cipher; with it the client identity is sealed at
        rest (and any a ledger of an earlier version kept in clear is sealed now)."""
        self.sealer = sealer
        store = where if isinstance(where, SqliteStore) else (
            None if isinstance(where, Path) else where.store)
        self._journal = store
        self._group = group_commit or store is not None
        self._in_tx = False
        self._checkpointer: Checkpointer | None = None
        if store is not None:
            self.db = store.uow.connection  # its checkpointer serves the books too
            if self.db.in_transaction:  # executescript below would commit it, unseen
                raise RuntimeError("the books must be opened before the journal's first write")
        else:
            assert isinstance(where, Path)
            private_database(where)  # 0600 in a 0700 data/ (§9); -wal/-shm follow it
            self.db = sqlite3.connect(str(where), isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            if group_commit:  # a sim commits on its reactor thread: checkpoints on a thread
                self._checkpointer = Checkpointer(self.db, where)
        self._add_missing_columns()
        self.db.executescript(SCHEMA)
        #: Tombstones are rare: while there is none, no booking needs to look one up.
        self._tombstones = bool(self.db.execute("SELECT EXISTS (SELECT 1 FROM tombstone)")
                                .fetchone()[0])
        self._seal_clear_identities()

    def _add_missing_columns(self) -> None:
        for table, column, decl in ADDED_COLUMNS:
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            if have and column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    # --- sealing the client identity ------------------------------------------
    def seal(self, value: str | None, context: str) -> str | None:
        """``value`` sealed for ``context`` (as is without a key; None stays None)."""
        if value is None or self.sealer is None:
            return value
        return self.sealer.seal(value, context)

    def unseal(self, value: str | None, context: str) -> str | None:
        """The plaintext of a :meth:`seal` token; a value stored in clear (an earlier
        version's, or a ledger without a key) as it is; a token without the key as is."""
        if value is None or self.sealer is None or not value.startswith(StorageCipher.PREFIX):
            return value
        return self.sealer.open(value, context)

    def _seal_clear_identities(self) -> None:
        """With a key: what SQLite frees is zeroed (``secure_delete``: an outbox row gone,
        a value replaced, leaves no copy in the file), and an identity an earlier version
        kept in clear is sealed now, then checkpointed out of the WAL and the old pages."""
        if self.sealer is None:
            return
        self.db.execute("PRAGMA secure_delete=ON")
        sealed = 0
        for column in self.SEALED_COLUMNS:
            rows = self.db.execute(f"SELECT id, {column} FROM account WHERE {column} IS NOT NULL"
                                   f" AND substr({column}, 1, 3) != ?",
                                   (StorageCipher.PREFIX,)).fetchall()
            for acct_id, value in rows:
                self.db.execute(f"UPDATE account SET {column}=? WHERE id=?",
                                (self.seal(value, f"account/{acct_id}/{column}"), acct_id))
            sealed += len(rows)
        if sealed:
            self.scrub()

    def scrub(self) -> None:
        """Commit, checkpoint the WAL into the file and truncate it, so that the pages a
        sealing replaced are overwritten now rather than at some later checkpoint (books
        in a journal's file with its transaction open: at the journal's next one)."""
        self.flush()
        if not self.db.in_transaction:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _account(self, row: tuple[Any, ...]) -> Account:
        acct = Account(*row)
        return replace(acct, name=self.unseal(acct.name, f"account/{acct.id}/name"),
                       id_no=self.unseal(acct.id_no, f"account/{acct.id}/id_no"))

    # --- accounts -------------------------------------------------------------
    def open_account(self, acct_id: str, kind: str, balance_fen: int = 0, *,
                     level: int | None = None, name: str | None = None,
                     id_type: str | None = None, id_no: str | None = None,
                     link: str | None = None) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO account (id, kind, level, name, id_type, id_no, link,"
            " balance_fen) VALUES (?,?,?,?,?,?,?,?)",
            (acct_id, kind, level, self.seal(name, f"account/{acct_id}/name"), id_type,
             self.seal(id_no, f"account/{acct_id}/id_no"), link, balance_fen))

    def account(self, acct_id: str) -> Account | None:
        row = self.db.execute("SELECT * FROM account WHERE id=?", (acct_id,)).fetchone()
        return self._account(row) if row else None

    def accounts(self, kind: str | None = None) -> list[Account]:
        sql, args = "SELECT * FROM account", tuple[str, ...]()
        if kind:
            sql, args = sql + " WHERE kind=?", (kind,)
        return [self._account(r) for r in self.db.execute(sql + " ORDER BY id", args)]

    def set_link(self, acct_id: str, link: str | None) -> None:
        self.db.execute("UPDATE account SET link=? WHERE id=?", (link, acct_id))

    def total(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(balance_fen),0) FROM account")
                   .fetchone()[0])

    # --- postings ---------------------------------------------------------------
    def post(self, key: str, debit: str, credit: str, amount_fen: int, day: str,
             reversal: bool = False, limit_use: bool = False) -> None:
        """Move ``amount_fen`` from ``debit`` to ``credit`` (caller checked funds).
        ``limit_use``: the amount counts against ``debit``'s outflow of ``day``."""
        self.db.execute("UPDATE account SET balance_fen = balance_fen - ? WHERE id=?",
                        (amount_fen, debit))
        self.db.execute("UPDATE account SET balance_fen = balance_fen + ? WHERE id=?",
                        (amount_fen, credit))
        self.db.execute("INSERT INTO posting (biz_key, debit, credit, amount_fen, day, reversal,"
                        " limit_use) VALUES (?,?,?,?,?,?,?)",
                        (key, debit, credit, amount_fen, day, int(reversal), int(limit_use)))
        if limit_use:
            self.db.execute(
                "UPDATE account SET out_today_fen = CASE WHEN out_day=? THEN out_today_fen"
                " ELSE 0 END + ?, out_day=? WHERE id=?", (day, amount_fen, day, debit))

    def undo(self, key: str, day: str) -> int:
        """Reverse every posting of ``key`` once; returns how many were undone.  An undone
        outflow of the wallet's current limit day is given back to that day's usage."""
        rows = self.db.execute("SELECT debit, credit, amount_fen, day, limit_use FROM posting"
                               " WHERE biz_key=? AND reversal=0 ORDER BY id DESC",
                               (key,)).fetchall()
        for debit, credit, amount, booked_day, limit_use in rows:
            self.post(key, credit, debit, amount, day, reversal=True)
            if limit_use:
                self.db.execute("UPDATE account SET out_today_fen = MAX(0, out_today_fen - ?)"
                                " WHERE id=? AND out_day=?", (amount, debit, booked_day))
        return len(rows)

    # --- operations -------------------------------------------------------------
    def op(self, key: str) -> Op | None:
        row = self.db.execute("SELECT * FROM op WHERE biz_key=?", (key,)).fetchone()
        return Op(*row) if row else None

    def book(self, op: Op) -> None:
        self.db.execute(
            "INSERT INTO op (biz_key, biz_type, origin, biz_sn, day, at, result, amount_fen,"
            " fund_acct, wallet_id, ref_sn, sweep_ref, extra, reversed, order_no, product_code,"
            " agreement_no, book_date, orig_type) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (op.biz_key, op.biz_type, op.origin, op.biz_sn, op.day, op.at, op.result,
             op.amount_fen, op.fund_acct, op.wallet_id, op.ref_sn, op.sweep_ref, op.extra,
             op.reversed, op.order_no, op.product_code, op.agreement_no, op.book_date,
             op.orig_type))

    def mark_reversed(self, key: str) -> None:
        self.db.execute("UPDATE op SET reversed=1 WHERE biz_key=?", (key,))

    def ops(self, day: str | None = None) -> list[Op]:
        """Booked operations (of ``day``), in booking order."""
        sql, args = "SELECT * FROM op", tuple[str, ...]()
        if day:
            sql, args = sql + " WHERE day=?", (day,)
        return [Op(*r) for r in self.db.execute(sql + " ORDER BY rowid", args)]

    def days(self) -> list[str]:
        """Every day an operation was booked on, oldest first."""
        return [d for d, in self.db.execute("SELECT DISTINCT day FROM op ORDER BY day")]

    def reversing_postings(self, key: str) -> int:
        """How many postings undid ``key``'s."""
        return int(self.db.execute("SELECT count(*) FROM posting WHERE biz_key=? AND"
                                   " reversal=1", (key,)).fetchone()[0])

    # --- the outbox (gateway/sim/outbox.py) ----------------------------------------
    def outbox_rows(self) -> list[tuple[str, str, str, str, str | None, str, int, str | None,
                                        str]]:
        """(biz_key, msg_type, to, body JSON, sealed secret, state, attempts, last, at)
        of every unsettled request, oldest first."""
        return [(str(k), str(t), str(to), str(b), s, str(st), int(n), last, str(at))
                for k, t, to, b, s, st, n, last, at in self.db.execute(
                    "SELECT biz_key, msg_type, to_party, body, secret, state, attempts, last,"
                    " at FROM outbox ORDER BY rowid")]

    def outbox_add(self, key: str, msg_type: str, to: str, body: str, secret: str | None,
                   state: str, attempts: int, last: str | None, at: str) -> None:
        self._booked("INSERT INTO outbox (biz_key, msg_type, to_party, body, secret, state,"
                     " attempts, last, at) VALUES (?,?,?,?,?,?,?,?,?)",
                     (key, msg_type, to, body, secret, state, attempts, last, at))

    def outbox_rewrite(self, key: str, body: str, secret: str | None) -> None:
        self._booked("UPDATE outbox SET body=?, secret=? WHERE biz_key=?", (body, secret, key))

    def outbox_save(self, key: str, state: str, attempts: int, last: str | None) -> None:
        self._booked("UPDATE outbox SET state=?, attempts=?, last=? WHERE biz_key=?",
                     (state, attempts, last, key))

    def outbox_remove(self, key: str) -> None:
        self._booked("DELETE FROM outbox WHERE biz_key=?", (key,))

    def _booked(self, sql: str, args: tuple[object, ...]) -> None:
        """One statement as one booking (atomic; committed as :meth:`begin` says)."""
        self.begin()
        try:
            self.db.execute(sql, args)
        except BaseException:
            self.rollback()
            raise
        self.commit()

    # --- reversals that came before their original --------------------------------
    def bury(self, orig_key: str, reversal_key: str, reversal_origin: str, at: str) -> None:
        """Remember that ``orig_key`` was reversed before it was seen (durable, once)."""
        origin, biz_type, biz_sn = orig_key.split("|", 2)
        self.db.execute("INSERT OR IGNORE INTO tombstone VALUES (?,?,?,?,?,?)",
                        (origin, biz_type, biz_sn, reversal_key, reversal_origin, at))
        self._tombstones = True

    def tombstone(self, orig_key: str) -> Tombstone | None:
        if not self._tombstones:
            return None
        origin, biz_type, biz_sn = orig_key.split("|", 2)
        row = self.db.execute("SELECT * FROM tombstone WHERE origin=? AND biz_type=? AND"
                              " biz_sn=?", (origin, biz_type, biz_sn)).fetchone()
        return Tombstone(*row) if row else None

    def begin(self) -> None:
        if not self._group:
            self.db.execute("BEGIN IMMEDIATE")
            return
        if self._journal is not None:
            self._journal.uow.begin()
        elif not self._in_tx:
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
        """Make every booking so far durable (group-commit mode; a no-op otherwise, and
        when the books share a journal: its flush commits them)."""
        if self._in_tx:
            self.db.execute("COMMIT")
            self._in_tx = False

    def close(self) -> None:
        """Commit what is booked and, for books in a file of their own, stop their
        checkpoint thread and close the file (books in a journal's file close with it)."""
        if self._journal is not None:
            return
        self.flush()
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        self.db.close()
