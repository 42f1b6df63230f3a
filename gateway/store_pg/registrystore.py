"""The §9 peer registry kept in the shared PostgreSQL store (PROTOCOL §12).

The document is gateway/store_pg/registrydb.py's one row; its revision is the version
the key store compares.  The first reader of a database without a registry stores
this home's ``keys/peers.json`` (as ``initial`` gives it) as revision 1; a command
writes revision n+1 only if n is still the stored one, else it is refused with "run
the command again".  One autocommitted connection, opened on first use (migrating the
schema, as the journal does); a broken one is reopened at the next use.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any

import psycopg

from ..registry import RegistryRefusal
from . import registrydb
from .leasedb import Connection, bound_statements
from .schema import migrate

log = logging.getLogger(__name__)

#: Seconds a connection attempt may take (the server polls on a worker thread).
CONNECT_TIMEOUT = 5
#: Seconds a statement may take by default (``[journal] statement_timeout_seconds``).
STATEMENT_TIMEOUT = 10.0


class PgRegistry:
    """The registry document in PostgreSQL, with compare-and-set writes."""

    remote = True

    def __init__(self, url: str, initial: Callable[[], bytes]) -> None:
        self.url = url
        self.where = "the peer registry in PostgreSQL ([journal] url)"
        self._initial = initial
        self._conn: Connection | None = None
        self._revision = 0  # the revision last seen
        #: [journal] statement_timeout_seconds (``serve`` sets it; see bound())
        self.statement_timeout = STATEMENT_TIMEOUT

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            try:
                conn: Connection = psycopg.connect(self.url, autocommit=True,
                                                   connect_timeout=CONNECT_TIMEOUT)
            except psycopg.Error as exc:
                raise RegistryRefusal(
                    f"{self.where} is unreachable ({_first_line(exc)}): check [journal] url"
                    " in gateway.toml and the database, then run the command again") from None
            try:
                migrate(conn)  # as the journal does: a peer command may come first
            except (psycopg.Error, ValueError) as exc:
                conn.close()
                raise RegistryRefusal(
                    f"{self.where}: the schema could not be brought up to date "
                    f"({_first_line(exc)}): check the user's rights to create tables, or "
                    "run the newer gateway") from None
            bound_statements(conn, self.statement_timeout)  # a hung database: an error
            self._conn = conn
        return self._conn

    def bound(self, seconds: float) -> None:
        """``[journal] statement_timeout_seconds`` for this registry's statements: a
        poll never holds its worker thread (and so a stop) on a hung database."""
        self.statement_timeout = seconds
        if self._conn is not None and not self._conn.closed:
            bound_statements(self._conn, seconds)

    def _run(self, action: Callable[[Connection], Any]) -> Any:
        conn = self._connection()
        try:
            return action(conn)
        except psycopg.OperationalError as exc:
            conn.close()
            raise RegistryRefusal(
                f"{self.where} could not be read or written ({_first_line(exc)}): check "
                "the database, then run the command again") from None

    def version(self, fresh: bool) -> Hashable:
        if fresh:
            self.poll()
        return self._revision

    def poll(self) -> None:
        self._revision = int(self._run(registrydb.revision))

    def read(self) -> tuple[Hashable, bytes | None]:
        doc = self._run(registrydb.load)
        if doc is None:
            doc = self._import()
        self._revision = doc.revision
        return doc.revision, doc.document

    def _import(self) -> registrydb.RegistryDocument:
        """No registry stored yet: this home's ``keys/peers.json`` becomes revision 1
        (unless another gateway or command stored one first: that one is read)."""
        document = self._initial()
        try:
            revision = self._run(lambda conn: registrydb.store(conn, 0, document))
        except registrydb.RegistryChanged:
            stored = self._run(registrydb.load)
            assert stored is not None
            return stored  # type: ignore[no-any-return]
        log.warning("the peer registry is kept in PostgreSQL from now on: imported this "
                    "home's keys/peers.json as revision %d", revision)
        return registrydb.RegistryDocument(int(revision), document)

    def write(self, read_version: Hashable, document: bytes) -> None:
        assert isinstance(read_version, int)
        try:
            self._revision = int(self._run(
                lambda conn: registrydb.store(conn, read_version, document)))
        except registrydb.RegistryChanged as exc:
            raise RegistryRefusal(f"{exc} (another peer command, on this home or the "
                                  "other gateway's, changed it meanwhile)") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
