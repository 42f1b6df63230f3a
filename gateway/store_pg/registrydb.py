"""The §9 peer registry in the shared PostgreSQL store (PROTOCOL §12).

With PostgreSQL the registry document (what ``keys/peers.json`` holds for a SQLite
gateway, gateway/registry.py's ``dump``/``parse`` format) lives in table
``peer_registry``: one row, a revision that grows by one per change.  A ``peer``
command reads the document and its revision, changes it, and writes it back only if
the revision is still the one it read (compare-and-set); a lost race is reported, and
the command is run again.  Each gateway polls the revision (a cheap read) and reloads
the document when it moved, as ``RegistryWatch`` does with the file today.
"""
from __future__ import annotations

from dataclasses import dataclass

from .leasedb import Connection


@dataclass(frozen=True, slots=True)
class RegistryDocument:
    revision: int  #: 0: no registry stored yet
    document: bytes


class RegistryChanged(RuntimeError):
    """The registry changed since it was read (another ``peer`` command, or the other
    gateway's operator): nothing was written; read it again and redo the change."""


def load(conn: Connection) -> RegistryDocument | None:
    """The stored registry, None if none was stored yet."""
    row = conn.execute("SELECT revision, document FROM peer_registry WHERE id = 1").fetchone()
    _end(conn)
    return RegistryDocument(int(row[0]), bytes(row[1])) if row else None


def revision(conn: Connection) -> int:
    """The stored revision (0: none yet): what a gateway polls."""
    row = conn.execute("SELECT revision FROM peer_registry WHERE id = 1").fetchone()
    _end(conn)
    return int(row[0]) if row else 0


def store(conn: Connection, read_revision: int, document: bytes) -> int:
    """Write ``document`` as the next revision if the stored one is still
    ``read_revision`` (0: none stored yet); the new revision.  RegistryChanged if not."""
    if read_revision == 0:
        row = conn.execute("INSERT INTO peer_registry (id, revision, document) VALUES"
                           " (1, 1, %s) ON CONFLICT (id) DO NOTHING RETURNING revision",
                           (document,)).fetchone()
    else:
        row = conn.execute("UPDATE peer_registry SET revision = revision + 1, document = %s,"
                           " updated_at = now() WHERE id = 1 AND revision = %s"
                           " RETURNING revision", (document, read_revision)).fetchone()
    _end(conn)
    if row is None:
        raise RegistryChanged(f"the peer registry changed since revision {read_revision}"
                              " was read: run the command again")
    return int(row[0])


def _end(conn: Connection) -> None:
    if not conn.autocommit:
        conn.commit()
