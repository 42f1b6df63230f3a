"""The live stores: every statement the gateway runs against its journal, SQLite's or
PostgreSQL's.

Each class implements one Protocol of gateway/store/interfaces.py over a unit of work
that runs :class:`Statements` (:class:`~gateway.store.sqlite.uow.SqliteUnitOfWork`, or
:class:`~gateway.store_pg.uow.PgUnitOfWork`, which turns the ``?`` placeholders into
psycopg's) and returns gateway/store/model.py dataclasses.  The SQL is the dialect both
speak: ``INSERT … ON CONFLICT``, ``RETURNING``, ``?`` placeholders.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import fields
from typing import Any, Protocol

from .interfaces import Key
from .model import (
    OPEN_STATES,
    UPDATABLE,
    Agreement,
    Alert,
    Record,
    Reversal,
    StoredMessage,
)


class Statements(Protocol):
    """What the stores need of a unit of work: statements with ``?`` placeholders,
    each answering a DB-API cursor (writes open the turn's transaction)."""

    def write(self, sql: str, args: tuple[object, ...] = ()) -> Any: ...

    def read(self, sql: str, args: Sequence[object] = ()) -> Any: ...

    #: SQL for the id the last ``INSERT INTO response`` of this connection drew.
    last_response_id_sql: str


_RECORD_FIELDS = tuple(f.name for f in fields(Record))
#: The stored answer lives in table ``response`` (schema v2); read back in place.
_RECORD_SELECT = ", ".join(_RECORD_FIELDS).replace(
    "response_xml", "(SELECT xml FROM response WHERE id = record.response_id)", 1)
_INSERT_FIELDS = tuple("response_id" if f == "response_xml" else f for f in _RECORD_FIELDS)
_INSERT_RECORD = (f"INSERT INTO record ({', '.join(_INSERT_FIELDS)}, created_at, updated_at)"
                  f" VALUES ({','.join('?' * (len(_RECORD_FIELDS) + 2))})")
_RESPONSE_AT = _RECORD_FIELDS.index("response_xml")
#: The insert of an answered record: its answer's id by the SQL put in place of ``@``.
_INSERT_RECORD_ANSWERED = (
    f"INSERT INTO record ({', '.join(_INSERT_FIELDS)}, created_at, updated_at) VALUES"
    f" ({','.join(['?'] * _RESPONSE_AT + ['@'] + ['?'] * (len(_RECORD_FIELDS) - _RESPONSE_AT + 1))})")
_AGREEMENT_FIELDS = tuple(f.name for f in fields(Agreement))
_AGREEMENT_COLUMNS = ", ".join(_AGREEMENT_FIELDS)
_REVERSAL_FIELDS = tuple(f.name for f in fields(Reversal))
_REVERSAL_COLUMNS = ", ".join(_REVERSAL_FIELDS)
_MESSAGE_COLUMNS = ", ".join(f.name for f in fields(StoredMessage))


def _values(row: object, names: tuple[str, ...]) -> tuple[object, ...]:
    """A flat dataclass as a tuple (``astuple`` deep-copies every field: slow)."""
    return tuple(getattr(row, name) for name in names)


def _marks(values: tuple[object, ...]) -> str:
    """Placeholders for ``IN (…)``; none: ``NULL`` (PostgreSQL refuses ``IN ()``, and
    nothing is IN (NULL))."""
    return ",".join("?" for _ in values) or "NULL"


def _message(row: tuple[Any, ...]) -> StoredMessage:
    ident, at, direction, session, party, msg_type, msg_id, ref_id, envelope, xml = row
    return StoredMessage(int(ident), float(at), str(direction), str(session), party, msg_type,
                         msg_id, ref_id, bytes(envelope), bytes(xml))


class SqlMessages:
    """gateway.store.interfaces.MessageStore over table ``message``."""

    def __init__(self, uow: Statements) -> None:
        self._uow = uow

    def log(self, at: float, direction: str, session: str, party: str | None,
            msg_type: str | None, msg_id: str | None, ref_id: str | None,
            envelope: bytes, xml: bytes) -> None:
        self._uow.write(
            "INSERT INTO message (at, direction, session, party, msg_type, msg_id, ref_id,"
            " envelope, xml) VALUES (?,?,?,?,?,?,?,?,?)",
            (at, direction, session, party, msg_type, msg_id, ref_id, envelope, xml))

    def by_msg_id(self, msg_id: str | None = None) -> Iterator[StoredMessage]:
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM message"
        if msg_id:
            rows = self._uow.read(sql + " WHERE msg_id = ? ORDER BY id", (msg_id,))
        else:
            rows = self._uow.read(sql + " ORDER BY id")
        for row in rows:
            yield _message(row)

    def reversal_answers(self, party: str, ref_id: str) -> list[StoredMessage]:
        return [_message(r) for r in self._uow.read(
            f"SELECT {_MESSAGE_COLUMNS} FROM message WHERE msg_type='XFER.REVERSE.RSP' AND"
            " ref_id=? AND party=? AND direction='IN' ORDER BY id", (ref_id, party))]

    def count_reversal_answers(self, party: str, ref_id: str) -> int:
        """(a partial index holds only those rows)"""
        return int(self._uow.read(
            "SELECT count(*) FROM message WHERE msg_type='XFER.REVERSE.RSP' AND ref_id=? AND"
            " party=? AND direction='IN'", (ref_id, party)).fetchone()[0])


#: A read the stores can say in advance (gateway.store.interfaces.ReadAhead): its SQL
#: with ``?`` placeholders and its arguments, as the store method runs it.
Query = tuple[str, tuple[object, ...]]


class SqlSeenMsgIds:
    """gateway.store.interfaces.SeenMsgIds over table ``seen_msg_id``."""

    def __init__(self, uow: Statements) -> None:
        self._uow = uow

    def remember(self, sender: str, msg_id: str, seen_at: float) -> bool:
        cur = self._uow.write(
            "INSERT INTO seen_msg_id (sender, msg_id, seen_at) VALUES (?,?,?)"
            " ON CONFLICT DO NOTHING",
            (sender, msg_id, seen_at))
        return bool(cur.rowcount == 1)

    def purge(self, older_than: float) -> int:
        return int(self._uow.write("DELETE FROM seen_msg_id WHERE seen_at < ?",
                                   (older_than,)).rowcount)

    def count(self) -> int:
        """MsgIds remembered now (tests, diagnostics)."""
        return int(self._uow.read("SELECT count(*) FROM seen_msg_id").fetchone()[0])


class SqlRecords:
    """gateway.store.interfaces.RecordStore over tables ``record``, ``response`` and
    ``asked_again``."""

    def __init__(self, uow: Statements) -> None:
        self._uow = uow

    def select(self, where: str, args: tuple[object, ...]) -> list[Record]:
        rows = self._uow.read(*self._query(where, args))
        return [Record(*r) for r in rows]

    @staticmethod
    def _query(where: str, args: tuple[object, ...]) -> Query:
        return f"SELECT {_RECORD_SELECT} FROM record WHERE {where}", args

    @classmethod
    def get_query(cls, key: Key) -> Query:
        return cls._query("origin=? AND biz_type=? AND biz_sn=?", tuple(key))

    def get(self, key: Key) -> Record | None:
        found = [Record(*r) for r in self._uow.read(*self.get_query(key))]
        return found[0] if found else None

    def with_biz_sn(self, biz_sn: str, origins: tuple[str, ...] | None = None,
                    biz_types: tuple[str, ...] = ()) -> list[Record]:
        """(of ``origins`` and ``biz_types``: probes of the unique index; of anyone: a
        scan of the table)"""
        if origins is None:
            return self.select("biz_sn=? ORDER BY created_at", (biz_sn,))
        return self.select(f"origin IN ({_marks(origins)}) AND biz_type IN"
                           f" ({_marks(biz_types)}) AND biz_sn=? ORDER BY created_at",
                           (*origins, *biz_types, biz_sn))

    def by_msg(self, receiver: str, origin: str, msg_id: str) -> Record | None:
        found = self.select("receiver=? AND msg_id=? AND origin=? ORDER BY created_at DESC",
                            (receiver, msg_id, origin))  # the newest, should a MsgId recur
        return found[0] if found else None

    def open(self, state: str) -> list[Record]:
        """(the partial index ``record_open`` holds them)"""
        if state not in OPEN_STATES:
            raise ValueError(f"{state} is not an open state")
        return self.select("state IN ('PENDING', 'REVERSING') AND state=?", (state,))

    def of_wallet(self, wallet_id: str, biz_types: tuple[str, ...],
                  states: tuple[str, ...], created_after: float | None = None) -> list[Record]:
        after = "" if created_after is None else " AND created_at > ?"
        return self.select(f"wallet_id=? AND biz_type IN ({_marks(biz_types)}) AND state IN"
                           f" ({_marks(states)}){after}",
                           (wallet_id, *biz_types, *states,
                            *(() if created_after is None else (created_after,))))

    def of_types(self, biz_types: tuple[str, ...], states: tuple[str, ...]) -> list[Record]:
        return self.select(f"biz_type IN ({_marks(biz_types)}) AND state IN ({_marks(states)})"
                           " ORDER BY created_at", (*biz_types, *states))

    def referring(self, original: Key, biz_type: str | None = None) -> list[Record]:
        where = "orig_from=? AND orig_type=? AND orig_biz_sn=?"
        if biz_type is None:
            return self.select(where + " ORDER BY created_at", original)
        return self.select(where + " AND biz_type=? ORDER BY created_at", (*original, biz_type))

    @classmethod
    def same_bizsn_query(cls, biz_sn: str, biz_types: tuple[str, ...],
                         parties: tuple[str, str], trade_date: str) -> Query:
        return cls._query(
            f"origin IN (?,?) AND biz_type IN ({_marks(biz_types)}) AND biz_sn=? AND receiver"
            " IN (?,?) AND trade_date=? LIMIT 1",
            (*parties, *biz_types, biz_sn, *parties, trade_date))

    def same_bizsn_between(self, biz_sn: str, biz_types: tuple[str, ...],
                           parties: tuple[str, str], trade_date: str) -> Record | None:
        found = [Record(*r) for r in self._uow.read(
            *self.same_bizsn_query(biz_sn, biz_types, parties, trade_date))]
        return found[0] if found else None

    def of_day(self, trade_date: str, parties: tuple[str, str],
               biz_types: tuple[str, ...]) -> list[Record]:
        from .sqlite.eod import LISTED_SQL  # loaded when a day is read

        return self.select(
            f"trade_date=? AND biz_type IN ({_marks(biz_types)}) AND {LISTED_SQL} AND"
            " ((origin=? AND receiver=?) OR (origin=? AND receiver=?)) ORDER BY created_at",
            (trade_date, *biz_types, parties[0], parties[1], parties[1], parties[0]))

    def asked_again(self, key: Key, receiver: str, msg_id: str, now: float) -> None:
        self._uow.write("INSERT INTO asked_again (receiver, origin, msg_id, biz_type,"
                        " biz_sn, at) VALUES (?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                        (receiver, key[0], msg_id, key[1], key[2], now))

    def by_repeat(self, receiver: str, origin: str, msg_id: str) -> Record | None:
        found = self.select("(origin, biz_type, biz_sn) IN (SELECT origin, biz_type, biz_sn"
                            " FROM asked_again WHERE receiver=? AND origin=? AND msg_id=?)",
                            (receiver, origin, msg_id))
        return found[0] if found else None

    def insert(self, rec: Record, now: float) -> None:
        values = [*_values(rec, _RECORD_FIELDS), now, now]
        sql = _INSERT_RECORD
        if self._store_response(rec.response_xml):
            del values[_RESPONSE_AT]
            sql = _INSERT_RECORD_ANSWERED.replace("@", self._uow.last_response_id_sql)
        else:
            values[_RESPONSE_AT] = None
        self._uow.write(sql, tuple(values))

    def _store_response(self, xml: bytes | None) -> bool:
        """Keep an answer in ``response`` (the statement that follows refers to it by
        the unit of work's ``last_response_id_sql``: no round trip for the id)."""
        if xml is None:
            return False
        self._uow.write("INSERT INTO response (xml) VALUES (?)", (xml,))
        return True

    def update(self, key: Key, now: float, **changes: object) -> None:
        bad = set(changes) - UPDATABLE
        if bad:
            raise ValueError(f"record fields {sorted(bad)} cannot change")
        sets = [f"{k}=COALESCE(?, {k})" for k in changes if k != "response_xml"]
        values = [v for k, v in changes.items() if k != "response_xml"]
        if "response_xml" in changes:
            xml = changes["response_xml"]
            if self._store_response(xml if isinstance(xml, bytes) else None):
                sets.append(f"response_id={self._uow.last_response_id_sql}")
        self._uow.write(f"UPDATE record SET {', '.join([*sets, 'updated_at=?'])} WHERE"
                        " origin=? AND biz_type=? AND biz_sn=?", (*values, now, *key))


class SqlAgreements:
    """gateway.store.interfaces.AgreementStore over table ``agreement``."""

    def __init__(self, uow: Statements) -> None:
        self._uow = uow

    def insert(self, agreement: Agreement) -> None:
        values = _values(agreement, _AGREEMENT_FIELDS)
        self._uow.write(f"INSERT INTO agreement ({_AGREEMENT_COLUMNS}) VALUES"
                        f" ({_marks(values)})", values)

    def end(self, agreement_no: str, end_date: str) -> None:
        self._uow.write("UPDATE agreement SET status='ENDED', end_date=? WHERE agreement_no=?",
                        (end_date, agreement_no))

    def settle(self, broker: str, sign_biz_sn: str, status: str,
               agreement_no: str | None) -> None:
        self._uow.write("UPDATE agreement SET status=?, agreement_no=? WHERE broker=? AND"
                        " sign_biz_sn=? AND status='PENDING'",
                        (status, agreement_no, broker, sign_biz_sn))

    def find(self, *, fund_acct: str | None = None, wallet_id: str | None = None,
             active_only: bool = False) -> list[Agreement]:
        """``active_only`` keeps ACTIVE and PENDING (a sign in flight already occupies
        its account and wallet)."""
        where: list[str] = []
        args: list[object] = []
        if fund_acct is not None:
            where.append("fund_acct=?")
            args.append(fund_acct)
        if wallet_id is not None:
            where.append("wallet_id=?")
            args.append(wallet_id)
        if active_only:
            where.append("status IN ('ACTIVE', 'PENDING')")
        sql = f"SELECT {_AGREEMENT_COLUMNS} FROM agreement"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [Agreement(*r) for r in self._uow.read(sql + " ORDER BY sign_date", args)]

    def by_no(self, agreement_no: str) -> Agreement | None:
        row = self._uow.read(f"SELECT {_AGREEMENT_COLUMNS} FROM agreement WHERE"
                             " agreement_no=?", (agreement_no,)).fetchone()
        return Agreement(*row) if row else None

    @staticmethod
    def binds_query(fund_acct: str | None, wallet_id: str | None,
                    parties: tuple[str, str]) -> Query:
        a, b = parties
        return ("SELECT 1 FROM agreement WHERE wallet_id=? AND status='ACTIVE' AND fund_acct=?"
                " AND ((broker=? AND bank=?) OR (broker=? AND bank=?)) LIMIT 1",
                (wallet_id, fund_acct, a, b, b, a))

    def binds(self, fund_acct: str | None, wallet_id: str | None,
              parties: tuple[str, str]) -> bool:
        """(one indexed probe)"""
        return self._uow.read(*self.binds_query(fund_acct, wallet_id, parties)
                              ).fetchone() is not None


class SqlReversals:
    """gateway.store.interfaces.ReversalStore over tables ``reversal`` and
    ``reversal_attempt``."""

    def __init__(self, uow: Statements) -> None:
        self._uow = uow

    def _one(self, where: str, args: tuple[object, ...]) -> Reversal | None:
        row = self._uow.read(f"SELECT {_REVERSAL_COLUMNS} FROM reversal WHERE {where}",
                             args).fetchone()
        return Reversal(*row) if row else None

    def queue(self, rev: Reversal) -> None:
        values = _values(rev, _REVERSAL_FIELDS)
        self._uow.write(f"INSERT INTO reversal ({_REVERSAL_COLUMNS}) VALUES"
                        f" ({_marks(values)}) ON CONFLICT DO NOTHING", values)

    def due(self, now: float) -> list[Reversal]:
        rows = self._uow.read(f"SELECT {_REVERSAL_COLUMNS} FROM reversal WHERE"
                              " state='QUEUED' AND next_at<=? ORDER BY next_at", (now,))
        return [Reversal(*r) for r in rows]

    def of(self, original: Key) -> Reversal | None:
        return self._one("origin=? AND biz_type=? AND biz_sn=?", original)

    def by_msg(self, receiver: str, msg_id: str) -> Reversal | None:
        return self._one("receiver=? AND last_msg_id=?", (receiver, msg_id))

    def by_attempt(self, receiver: str, msg_id: str) -> Reversal | None:
        return self.by_msg(receiver, msg_id) or self._one("(origin, biz_type, biz_sn) IN (SELECT origin, biz_type, biz_sn FROM"
                         " reversal_attempt WHERE receiver=? AND msg_id=?)", (receiver, msg_id))

    def attempted(self, original: Key, receiver: str, msg_id: str, now: float,
                  **changes: object) -> None:
        self._uow.write("INSERT INTO reversal_attempt (receiver, msg_id, origin,"
                        " biz_type, biz_sn, at) VALUES (?,?,?,?,?,?)"
                        " ON CONFLICT DO NOTHING",
                        (receiver, msg_id, *original, now))
        self.update(original, last_msg_id=msg_id, **changes)

    def update(self, original: Key, **changes: object) -> None:
        sets = ", ".join(f"{k}=?" for k in changes)
        self._uow.write(f"UPDATE reversal SET {sets} WHERE origin=? AND biz_type=? AND"
                        " biz_sn=?", (*changes.values(), *original))

    def backlog(self, now: float) -> tuple[int, float]:
        count, oldest = self._uow.read(
            "SELECT count(*), min(coalesce(queued_at, next_at)) FROM reversal"
            " WHERE state='QUEUED'").fetchone()
        return int(count), (max(0.0, now - float(oldest)) if oldest is not None else 0.0)


class SqlAlerts:
    """gateway.store.interfaces.AlertStore over table ``alert``."""

    def __init__(self, uow: Statements) -> None:
        self._uow = uow

    def log(self, alert: Alert) -> None:
        self._uow.write("INSERT INTO alert (at, kind, severity, subject, text) VALUES"
                        " (?,?,?,?,?)", (alert.at, alert.kind, alert.severity, alert.subject,
                                         alert.text))

    def all(self) -> list[Alert]:
        rows = self._uow.read("SELECT at, kind, severity, subject, text FROM alert ORDER BY id")
        return [Alert(float(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4])) for r in rows]

    def counts(self) -> list[tuple[str, int]]:
        rows = self._uow.read("SELECT kind, count(*) FROM alert GROUP BY kind ORDER BY kind")
        return [(str(kind), int(n)) for kind, n in rows]

    def last(self, kind: str, subject: str) -> Alert | None:
        row = self._uow.read("SELECT at, kind, severity, subject, text FROM alert WHERE"
                             " kind=? AND subject=? ORDER BY id DESC LIMIT 1",
                             (kind, subject)).fetchone()
        return Alert(float(row[0]), str(row[1]), str(row[2]), str(row[3]),
                     str(row[4])) if row else None


class SqlSuspensions:
    """gateway.store.interfaces.SuspensionStore over table ``suspension``."""

    def __init__(self, uow: Statements) -> None:
        self._uow = uow

    def all(self) -> list[tuple[str, str, float]]:
        rows = self._uow.read("SELECT party, reason, since FROM suspension ORDER BY party")
        return [(str(r[0]), str(r[1]), float(r[2])) for r in rows]

    def put(self, party: str, reason: str, since: float) -> None:
        self._uow.write("INSERT INTO suspension (party, reason, since) VALUES (?,?,?)"
                        " ON CONFLICT (party) DO UPDATE SET reason = excluded.reason,"
                        " since = excluded.since", (party, reason, since))

    def delete(self, party: str | None = None) -> None:
        if party is None:
            self._uow.write("DELETE FROM suspension", ())
        else:
            self._uow.write("DELETE FROM suspension WHERE party=?", (party,))


_DIRECTION = ("CASE WHEN biz_type IN ('XFER.IN', 'XFER.OUT') THEN substr(biz_type, 6)"
              " WHEN biz_type = 'XFER.REVERSE' AND orig_type IN ('XFER.IN', 'XFER.OUT')"
              " THEN substr(orig_type, 6) ELSE '-' END")


class SqlMonitoring:
    """gateway.store.interfaces.MonitoringQueries over table ``record``."""

    def __init__(self, uow: Statements) -> None:
        self._uow = uow

    def business_totals(self, trade_date: str,
                        gateway: str) -> list[tuple[str, str, str, int, int]]:
        """(direction IN/OUT for transfers and their reversals, ``-`` otherwise; records
        the gateway refused itself, receiver = ``gateway``, are left out)"""
        rows = self._uow.read(
            f"SELECT biz_type, {_DIRECTION} AS direction, state, count(*),"
            " coalesce(sum(amount_fen), 0) FROM record WHERE trade_date=? AND receiver != ?"
            " GROUP BY 1, 2, 3", (trade_date, gateway))
        return [(str(t), str(d), str(s), int(n), int(a)) for t, d, s, n, a in rows]

    def business_totals_by_pair(self, trade_date: str, gateway: str,
                                ) -> list[tuple[str, str, str, str, str, int, int]]:
        rows = self._uow.read(
            f"SELECT biz_type, {_DIRECTION} AS direction, state, origin, receiver, count(*),"
            " coalesce(sum(amount_fen), 0) FROM record WHERE trade_date=? AND receiver != ?"
            " GROUP BY 1, 2, 3, 4, 5", (trade_date, gateway))
        return [(str(t), str(d), str(s), str(o), str(r), int(n), int(a))
                for t, d, s, o, r, n, a in rows]

    def transfer_totals(self, trade_date: str) -> list[tuple[str, str, str, int]]:
        """(transfers answered 0000 and not reversed since; REVERSING counts)"""
        rows = self._uow.read(
            "SELECT origin, receiver, coalesce(fund_acct, ''), sum(amount_fen) FROM record"
            " WHERE trade_date=? AND biz_type IN ('XFER.IN', 'XFER.OUT') AND result='0000'"
            " AND state IN ('SUCCEEDED', 'REVERSING') GROUP BY 1, 2, 3", (trade_date,))
        return [(str(o), str(r), str(f), int(a)) for o, r, f, a in rows]


__all__ = ["Query", "SqlAgreements", "SqlAlerts", "SqlMessages", "SqlMonitoring", "SqlRecords",
           "SqlReversals", "SqlSeenMsgIds", "SqlSuspensions", "Statements"]
