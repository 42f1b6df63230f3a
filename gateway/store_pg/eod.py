"""End-of-day queries (PROTOCOL §8) over the PostgreSQL journal: the
gateway.store.interfaces.EodQueries of gateway/store/sqlite/eod.py, with the same SQL
(the scope, the listed / owed / final rules and the exporter's fields are that module's
one definition, placeholders translated) over ``record.eod_line``, which migration 1
renders as SQLite's migration 2 does.  Each query is one read-only connection of its own,
beside a running gateway (either of an active/standby pair: nothing is written, so
nothing is fenced).  The exact check's workspace stays SQLite's, for any store
(gateway/store/sqlite/eod.py ``SqliteFileWorkspace``): the day's lines come into it
through :meth:`PgEodReader.day_rows`.

A server that cannot be reached is :class:`StoreUnavailable`, never "no journal": an
export must not sign an empty file, nor a check report every record extra, because
the database was down; a database never migrated (schema 0) is a journal with no
business yet."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg

from gateway.eod.fileformat import LAYOUTS
from gateway.store.interfaces import EodQueries, StoreUnavailable
from gateway.store.sqlite.eod import FINAL_SQL, day_sql, day_where, field_sql

from .schema import schema_version


def _pg(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's (the shared SQL holds no other ``?`` and
    no ``%``)."""
    assert "%" not in sql, sql
    return sql.replace("?", "%s")


class PgEodReader:
    """gateway.store.interfaces.EodQueries over the PostgreSQL journal at ``url``."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot connect to the PostgreSQL journal: {exc}".strip() + " (check "
                "[journal] url and that the server runs; nothing was read)") from exc
        conn.read_only = True
        return conn

    def exists(self) -> bool:
        """(migrated at least once; StoreUnavailable if it cannot be reached)"""
        with self._connect() as conn:
            return schema_version(conn) > 0

    def schema_has_lines(self) -> bool:
        return self.exists()  # every PostgreSQL schema keeps record.eod_line

    def optional_lines(self, file_type: str, trade_date: str, gateway: str,
                       from_party: str, to_party: str, limit: int) -> list[tuple[str, int]]:
        where, args = day_where(file_type, trade_date, gateway, from_party, to_party)
        with self._connect() as conn:
            return [(str(line), int(fen)) for line, fen in conn.execute(_pg(
                f"SELECT eod_line, COALESCE(amount_fen, 0) FROM record WHERE {where} AND"
                f" {FINAL_SQL} AND state='REVERSED' AND receiver=? ORDER BY biz_sn"
                f" LIMIT {int(limit)}"), (*args, from_party))]

    def owed_lines(self, file_type: str, trade_date: str, gateway: str, from_party: str,
                   to_party: str, batch: int) -> Iterator[list[tuple[str, int]]]:
        where, args = day_where(file_type, trade_date, gateway, from_party, to_party)
        with self._connect() as conn, conn.cursor(name="owed") as cur:  # server-side
            conn.autocommit = False  # a named cursor lives in a transaction
            cur.execute(_pg(f"SELECT eod_line, COALESCE(amount_fen, 0) FROM record WHERE"
                            f" {where} AND {FINAL_SQL} AND NOT (state='REVERSED' AND"
                            " receiver=?)"), (*args, from_party))
            while rows := cur.fetchmany(batch):
                yield [(str(line), int(fen)) for line, fen in rows]

    def export_rows(self, file_type: str, trade_date: str, gateway: str,
                    to_party: str) -> Iterator[tuple[object, ...]]:
        if not self.exists():
            return
        names = tuple(n for n, _ in LAYOUTS[file_type])
        where, args = day_where(file_type, trade_date, gateway, gateway, to_party)
        exprs = ", ".join(field_sql(n) for n in names)
        with self._connect() as conn:
            yield from conn.execute(_pg(f"SELECT {exprs} FROM record WHERE {where} AND"
                                        f" {FINAL_SQL} ORDER BY created_at, biz_sn"), args)

    def unfinished(self, file_type: str, trade_date: str, gateway: str,
                   to_party: str) -> int:
        if not self.exists():
            return 0
        where, args = day_where(file_type, trade_date, gateway, gateway, to_party)
        with self._connect() as conn:
            row = conn.execute(_pg(f"SELECT count(*) FROM record WHERE {where}"
                                   f" AND NOT ({FINAL_SQL})"), args).fetchone()
            return int(row[0]) if row else 0

    def day_rows(self, file_type: str, trade_date: str, gateway: str, from_party: str,
                 to_party: str, batch: int) -> Iterator[list[tuple[str, str | None, bool]]]:
        sql, args = day_sql(file_type, trade_date, gateway, from_party, to_party)
        with self._connect() as conn, conn.cursor(name="day") as cur:  # server-side
            conn.autocommit = False  # a named cursor lives in a transaction
            cur.execute(_pg(sql), args)
            while rows := cur.fetchmany(batch):
                yield [(str(sn), None if line is None else str(line), bool(owed))
                       for sn, line, owed in rows]


def _conforms(reader: PgEodReader) -> EodQueries:
    """mypy holds the PostgreSQL end-of-day reader to the interface (never called)."""
    return reader
