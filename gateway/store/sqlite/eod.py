"""End-of-day SQL over the journal (PROTOCOL §8): every statement of the checks and
the exporter, and the ``record.eod_line`` column, rendered from gateway/eod/mapping.py.

:class:`SqliteEodReader` reads the journal file read-only (a check runs beside the
gateway, on a connection of its own per query: the fast path reads on two threads);
:class:`SqliteFileWorkspace` is the exact check's scratch database, whatever the store:
the file's records in table ``f``, joined with a SQLite journal attached read-only, or
with another store's day (the PostgreSQL journal) copied in from its reader.
"""
from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from gateway.eod.fileformat import LAYOUTS, row_fields
from gateway.eod.mapping import (
    BIZ_TYPES,
    FINAL_STATES,
    REVERSED_TRANSFERS,
    SOURCES,
    column,
    line_fields,
)

from ..interfaces import EodQueries, FileWorkspace, StoreTooOld

#: The journal schema from which every record keeps its §8 line (migration 2).
JOURNAL_SCHEMA_WITH_LINES = 2
CACHE_KIB = 65536  # page cache of the scratch database: bounds memory for any file size
FEN_SPLIT = 100_000_000  # sum fen as high and low parts: no int64 overflow in SQL
DAY_BATCH = 8192  # rows of another store's day copied into the workspace per batch


def _quoted(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def field_sql(name: str, *, as_text: bool = False) -> str:
    """The SQL expression of a D field over table ``record`` (mapping.SOURCES);
    ``as_text``: as the line writes it (absent: '', Amount: ``12.34``), else the raw
    value for the exporter (Amount in fen, absent: NULL)."""
    source = SOURCES[name]
    col = source.attribute
    if source.fen:
        return (f"({col} / 100) || '.' || substr(100 + {col} % 100, 2)" if as_text else col)
    if source.codes:
        whens = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in source.codes)
        otherwise = f"'{source.otherwise}'" if source.otherwise is not None else col
        return f"CASE {col} {whens} ELSE {otherwise} END"
    return f"COALESCE({col}, '')" if as_text and name != "BizSn" else col


def eod_line_sql() -> str:
    """``record.eod_line``: mapping.eod_line as one SQL expression (NULL where no file
    lists the type)."""
    whens = []
    for file_type, kinds in BIZ_TYPES.items():
        parts = " || '|' || ".join(field_sql(n, as_text=True) for n in line_fields(file_type))
        whens.append(f"WHEN biz_type IN ({_quoted(kinds)}) THEN 'D|' || {parts}")
    return "CASE " + " ".join(whens) + " END"


#: SQL condition every journal row a file lists meets, whatever the file's TYPE: it
#: leaves out exactly the reversals of what is not a transfer.
LISTED_SQL = f"(biz_type <> 'XFER.REVERSE' OR orig_type IN ({_quoted(REVERSED_TRANSFERS)}))"

#: Whether the file must list a journal record (``?`` = the file's writer).  A record the
#: gateway REVERSED after a relay timeout may be unknown to its receiver: the request can
#: be lost with the connection (or the gateway) before it arrives, and §6 has receivers
#: answer the reversal of an unknown original with success.  Money moved on neither
#: side, so the receiver's file may omit it; if it lists the record, it must say ``R``.
OWED_SQL = (f"(state IN ({_quoted(FINAL_STATES)}) AND NOT (state = 'REVERSED' AND"
            " receiver = ?))")
FINAL_SQL = f"state IN ({_quoted(FINAL_STATES)})"


def scope(gateway: str, from_party: str, to_party: str) -> tuple[str, tuple[str, ...]]:
    """SQL condition and arguments selecting the journal records a file covers.

    Two peers: their business with each other, either direction.  One peer (the
    gateway wrote or receives the file): all that peer's relayed business.  Records
    the gateway refused itself (receiver = the gateway) were never relayed, so no
    counterparty lists them.
    """
    peers = [p for p in (from_party, to_party) if p != gateway]
    if len(peers) == 2:
        return ("(origin IN (?, ?) AND receiver IN (?, ?) AND origin <> receiver)",
                (peers[0], peers[1], peers[0], peers[1]))
    if len(peers) == 1:
        return "((origin=? OR receiver=?) AND receiver<>?)", (peers[0], peers[0], gateway)
    return "receiver<>?", (gateway,)


def day_where(file_type: str, trade_date: str, gateway: str, from_party: str,
              to_party: str) -> tuple[str, tuple[object, ...]]:
    """WHERE condition (and its arguments) of the journal rows a file covers, any state."""
    kinds = BIZ_TYPES[file_type]
    pair, pair_args = scope(gateway, from_party, to_party)
    where = (f"trade_date=? AND biz_type IN ({','.join('?' for _ in kinds)}) AND {LISTED_SQL}"
             f" AND {pair}")
    return where, (trade_date, *kinds, *pair_args)


def _connect(journal: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{journal}?mode=ro", uri=True)


class SqliteEodReader:
    """gateway.store.interfaces.EodQueries over a journal file, read-only."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal

    def exists(self) -> bool:
        return self.journal.is_file()

    def schema_has_lines(self) -> bool:
        db = _connect(self.journal)
        try:
            return int(db.execute("PRAGMA user_version").fetchone()[0]) >= \
                JOURNAL_SCHEMA_WITH_LINES
        finally:
            db.close()

    def optional_lines(self, file_type: str, trade_date: str, gateway: str,
                       from_party: str, to_party: str, limit: int) -> list[tuple[str, int]]:
        """(line, fen) of the final records the file may list or omit (REVERSED by the
        gateway, received by the writer ``from_party``: mapping's OWED rule), at most
        ``limit``."""
        where, args = day_where(file_type, trade_date, gateway, from_party, to_party)
        db = _connect(self.journal)
        try:
            return [(str(line), int(fen)) for line, fen in db.execute(
                f"SELECT eod_line, COALESCE(amount_fen, 0) FROM record WHERE {where} AND"
                f" {FINAL_SQL} AND state='REVERSED' AND receiver=? LIMIT {int(limit)}",
                (*args, from_party))]
        finally:
            db.close()

    def owed_lines(self, file_type: str, trade_date: str, gateway: str, from_party: str,
                   to_party: str, batch: int) -> Iterator[list[tuple[str, int]]]:
        """(line, fen) of the final records the file must list, in batches of ``batch``
        (one range scan of the day: the table is clustered by trade date)."""
        where, args = day_where(file_type, trade_date, gateway, from_party, to_party)
        db = _connect(self.journal)
        try:
            cur = db.execute(f"SELECT eod_line, COALESCE(amount_fen, 0) FROM record WHERE"
                             f" {where} AND {FINAL_SQL} AND NOT (state='REVERSED' AND"
                             " receiver=?)", (*args, from_party))
            while rows := cur.fetchmany(batch):
                yield rows
        finally:
            db.close()

    def export_rows(self, file_type: str, trade_date: str, gateway: str,
                    to_party: str) -> Iterator[tuple[object, ...]]:
        names = tuple(n for n, _ in LAYOUTS[file_type])
        if not self.exists():
            return
        where, args = day_where(file_type, trade_date, gateway, gateway, to_party)
        exprs = ", ".join(field_sql(n) for n in names)
        db = _connect(self.journal)
        try:
            yield from db.execute(f"SELECT {exprs} FROM record WHERE {where} AND {FINAL_SQL}"
                                  " ORDER BY created_at, biz_sn", args)
        finally:
            db.close()

    def unfinished(self, file_type: str, trade_date: str, gateway: str,
                   to_party: str) -> int:
        if not self.exists():
            return 0
        where, args = day_where(file_type, trade_date, gateway, gateway, to_party)
        db = _connect(self.journal)
        try:
            (count,) = db.execute(f"SELECT count(*) FROM record WHERE {where}"
                                  f" AND NOT ({FINAL_SQL})", args).fetchone()
            return int(count)
        finally:
            db.close()

    def day_rows(self, file_type: str, trade_date: str, gateway: str, from_party: str,
                 to_party: str, batch: int) -> Iterator[list[tuple[str, str | None, bool]]]:
        """(The exact check attaches this journal instead: :class:`SqliteFileWorkspace`.)"""
        sql, args = day_sql(file_type, trade_date, gateway, from_party, to_party)
        db = _connect(self.journal)
        try:
            cur = db.execute(sql, args)
            while rows := cur.fetchmany(batch):
                yield [(str(sn), line, bool(owed)) for sn, line, owed in rows]
        finally:
            db.close()


def day_sql(file_type: str, trade_date: str, gateway: str, from_party: str, to_party: str,
            table: str = "record") -> tuple[str, tuple[object, ...]]:
    """SELECT (bizsn, eod_line, owed) of every row of ``table`` the file covers, any
    state (EodQueries.day_rows), and its arguments."""
    where, args = day_where(file_type, trade_date, gateway, from_party, to_party)
    # OWED_SQL's parameter comes first: it precedes WHERE
    return (f"SELECT biz_sn AS bizsn, eod_line, {OWED_SQL} AS owed FROM {table}"
            f" WHERE {where}", (from_party, *args))


class SqliteFileWorkspace:
    """gateway.store.interfaces.FileWorkspace: the file's records in table ``f`` of a
    private on-disk scratch database (rollback journal and fsync off; row ``seq`` =
    line − 1), closed and deleted by :meth:`close`."""

    def __init__(self, file_type: str) -> None:
        self.fields = row_fields(file_type)
        self._dir = tempfile.TemporaryDirectory(prefix="sbdx-eod-")
        self.db = sqlite3.connect(f"file:{self._dir.name}/check.sqlite3", uri=True,
                                  isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "temp_store=FILE",
                       f"cache_size=-{CACHE_KIB}"):
            self.db.execute(f"PRAGMA {pragma}")
        cols = ", ".join(f"{column(n)} {'INTEGER' if n == 'Amount' else 'TEXT'}"
                         for n in self.fields)
        self.db.execute(f"CREATE TABLE f (seq INTEGER PRIMARY KEY, {cols})")
        values = ", ".join(f"CAST(REPLACE(?{i}, '.', '') AS INTEGER)" if n == "Amount"
                           else f"?{i}" for i, n in enumerate(self.fields, 1))
        columns = ", ".join(column(n) for n in self.fields)
        self._insert = f"INSERT INTO f ({columns}) VALUES ({values})"
        self.db.execute("BEGIN")

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()

    def sink(self, rows: Sequence[Sequence[str]]) -> None:
        """One executemany per block of the scanner."""
        self.db.executemany(self._insert, rows)

    def total_fen(self) -> int:
        if "Amount" not in self.fields:
            return 0
        hi, lo = self.db.execute(f"SELECT COALESCE(SUM(amount / {FEN_SPLIT}), 0), "
                                 f"COALESCE(SUM(amount % {FEN_SPLIT}), 0) FROM f").fetchone()
        return int(hi) * FEN_SPLIT + int(lo)

    def first_duplicate(self) -> tuple[int, str, int] | None:
        """Building the UNIQUE index the join needs is the duplicate check."""
        self.db.execute("COMMIT")
        try:
            self.db.execute("CREATE UNIQUE INDEX f_sn ON f (bizsn)")
            return None
        except sqlite3.IntegrityError:
            pass
        self.db.execute("CREATE INDEX f_sn ON f (bizsn)")
        row = self.db.execute("SELECT b.seq + 1, b.bizsn, MIN(a.seq) + 1 FROM f b "
                              "JOIN f a ON a.bizsn = b.bizsn AND a.seq < b.seq "
                              "GROUP BY b.seq ORDER BY b.seq LIMIT 1").fetchone()
        return (int(row[0]), str(row[1]), int(row[2]))

    def file_biz_sns(self) -> list[str]:
        return [str(r[0]) for r in self.db.execute("SELECT bizsn FROM f ORDER BY seq")]

    def join(self, journal: EodQueries, file_type: str, trade_date: str, gateway: str,
             from_party: str, to_party: str,
             ) -> tuple[int, list[tuple[str, int | None, str | None, str | None]], list[str]]:
        """The file's records against the journal's day, in one pass: (records of the
        day the file lists, the differing rows as (BizSn, file seq or None if the file
        lacks an owed one, file line, journal line) in file order, the file's BizSns the
        journal lacks).  A SQLite journal is attached read-only and joined in place;
        another store's day (PostgreSQL) is first copied, streamed, from its reader
        (``day_rows``) into table ``jday`` here.  StoreTooOld if the journal keeps no
        lines yet."""
        total = self.db.execute("SELECT COUNT(*) FROM f").fetchone()[0]
        day_args = (file_type, trade_date, gateway, from_party, to_party)
        if not isinstance(journal, SqliteEodReader):
            if not journal.schema_has_lines():
                raise StoreTooOld("the journal keeps no end-of-day lines; start the gateway"
                                  " once to migrate it")
            self._copy_day(journal.day_rows(*day_args, batch=DAY_BATCH))
            return self._joined("SELECT bizsn, eod_line, owed FROM jday", (), total)
        self.db.execute("ATTACH DATABASE ? AS jr", (f"file:{journal.journal}?mode=ro",))
        try:
            if self.db.execute("PRAGMA jr.user_version").fetchone()[0] < \
                    JOURNAL_SCHEMA_WITH_LINES:
                raise StoreTooOld(f"journal {journal.journal} is schema v1; start the gateway"
                                  " once to migrate it")
            return self._joined(*day_sql(*day_args, table="jr.record"), total)
        finally:
            self.db.execute("DETACH DATABASE jr")

    def _copy_day(self, batches: Iterator[list[tuple[str, str | None, bool]]]) -> None:
        """The journal's day, from another store, into table ``jday`` (one transaction)."""
        self.db.execute("CREATE TABLE jday (bizsn TEXT, eod_line TEXT, owed INTEGER)")
        began = not self.db.in_transaction
        if began:
            self.db.execute("BEGIN")
        for rows in batches:
            self.db.executemany("INSERT INTO jday VALUES (?, ?, ?)", rows)
        if began:
            self.db.execute("COMMIT")

    def _joined(self, day: str, args: tuple[object, ...], total: int,
                ) -> tuple[int, list[tuple[str, int | None, str | None, str | None]], list[str]]:
        joined = int(self.db.execute(f"SELECT COUNT(*) FROM ({day}) AS j WHERE EXISTS "
                                     "(SELECT 1 FROM f WHERE f.bizsn = j.bizsn)",
                                     args).fetchone()[0])
        differing = [(str(b), s, f, j) for b, s, f, j in self.db.execute(
            f"SELECT j.bizsn, f.seq, f.line, j.eod_line FROM ({day}) AS j "
            "LEFT JOIN f ON f.bizsn = j.bizsn WHERE (f.seq IS NULL AND j.owed) OR "
            "(f.seq IS NOT NULL AND f.line IS NOT j.eod_line) ORDER BY f.seq, j.bizsn",
            args)]
        extra = self._extra(day, args) if joined < total else []
        return joined, differing, extra

    def _extra(self, day: str, args: tuple[object, ...]) -> list[str]:
        """BizSns of the file the journal lacks (only run when there are some)."""
        self.db.execute(f"CREATE TABLE jk AS SELECT bizsn FROM ({day})", args)
        self.db.execute("CREATE INDEX jk_sn ON jk (bizsn)")
        return [str(r[0]) for r in self.db.execute(
            "SELECT bizsn FROM f WHERE NOT EXISTS (SELECT 1 FROM jk WHERE jk.bizsn = f.bizsn) "
            "ORDER BY seq")]


def _conforms(reader: SqliteEodReader, space: SqliteFileWorkspace,
              ) -> tuple[EodQueries, FileWorkspace]:
    """mypy holds the end-of-day classes to the interfaces (never called)."""
    return reader, space
