"""The journal's side of PROTOCOL §11 retention (gateway/retention.py), on SQLite.

:class:`SqliteRetentionQueries` implements gateway.store.interfaces.RetentionQueries
over a :class:`~gateway.store.sqlite.SqliteStore`: the gateway's own (deletes join the
turn's transaction) or a read-only one the retention job opens on its thread with
:func:`open_reader`.  Retention is SQLite's only: the month files are local files, and
two gateways on PostgreSQL would split the evidence between two machines (config.py
refuses ``retention_days`` with a postgresql url).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..interfaces import Key, RetentionQueries, Store
from ..model import StoredMessage
from . import SqliteStore

#: The columns of an evidence row (table ``message``), in order; the month files keep
#: the same (gateway/store/sqlite/monthfiles.py).
MESSAGE_COLUMNS = tuple(f.name for f in fields(StoredMessage))
_SELECT_MESSAGES = (f"SELECT {', '.join(MESSAGE_COLUMNS)} FROM message WHERE id > ?"
                    " ORDER BY id LIMIT ?")
#: SQLite's bound-parameter limit is 999 in old builds: delete in parts of this.
_DELETE_PART = 500


def message_of(row: Sequence[Any]) -> StoredMessage:
    """A ``message`` row (every column, in order) as the model's value."""
    ident, at, direction, session, party, msg_type, msg_id, ref_id, envelope, xml = row
    return StoredMessage(int(ident), float(at), str(direction), str(session), party,
                         msg_type, msg_id, ref_id, bytes(envelope), bytes(xml))


class SqliteRetentionQueries:
    """Retention's statements over ``store``'s connection; :meth:`close` closes the
    store only when ``owned`` (a reader opened by :func:`open_reader`)."""

    def __init__(self, store: SqliteStore, *, owned: bool = False) -> None:
        self._store = store
        self._uow = store.uow
        self._owned = owned

    def messages_after(self, after_id: int, limit: int) -> list[StoredMessage]:
        return [message_of(r) for r in self._uow.read(_SELECT_MESSAGES, (after_id, limit))]

    def last_message_id(self) -> int:
        return int(self._uow.read("SELECT coalesce(max(id), 0) FROM message").fetchone()[0])

    def delete_messages(self, ids: Sequence[int]) -> int:
        deleted = 0
        for start in range(0, len(ids), _DELETE_PART):
            part = tuple(ids[start:start + _DELETE_PART])
            marks = ",".join("?" * len(part))
            deleted += self._uow.write(f"DELETE FROM message WHERE id IN ({marks})",
                                       part).rowcount
        return deleted

    def record_settled(self, key: Key) -> tuple[str, float] | None:
        row = self._uow.read("SELECT state, updated_at FROM record WHERE origin=? AND"
                             " biz_type=? AND biz_sn=?", key).fetchone()
        return (str(row[0]), float(row[1])) if row else None

    def record_of_answer(self, receiver: str, origin: str, msg_id: str) -> Key | None:
        row = self._uow.read("SELECT origin, biz_type, biz_sn FROM record WHERE receiver=?"
                             " AND msg_id=? AND origin=? LIMIT 1",
                             (receiver, msg_id, origin)).fetchone()
        return (str(row[0]), str(row[1]), str(row[2])) if row else None

    def reversal_original(self, receiver: str, reversal_sn: str) -> Key | None:
        row = self._uow.read("SELECT origin, biz_type, biz_sn FROM reversal WHERE"
                             " receiver=? AND reversal_sn=? LIMIT 1",
                             (receiver, reversal_sn)).fetchone()
        return (str(row[0]), str(row[1]), str(row[2])) if row else None

    def close(self) -> None:
        if self._owned:
            self._store.close()


def retention_queries(store: Store) -> RetentionQueries:
    """Retention's queries over the gateway's own ``store``; ValueError (saying what to
    do) unless it is the SQLite journal."""
    if not isinstance(store, SqliteStore):
        raise ValueError("[journal] retention_days works with the SQLite journal only: set"
                         " it to 0 with a postgresql:// url")
    return SqliteRetentionQueries(store)


def open_reader(path: Path) -> RetentionQueries:
    """A read-only connection of its own to the journal file ``path`` (the retention
    job's, on its thread), closed with the queries."""
    return SqliteRetentionQueries(SqliteStore(path, read_only=True), owned=True)


def _conforms(queries: SqliteRetentionQueries) -> RetentionQueries:
    """mypy holds the SQLite queries to the interface (never called)."""
    return queries
