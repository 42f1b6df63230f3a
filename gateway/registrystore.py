"""Where the §9 peer registry document is kept (PROTOCOL §12).

A SQLite gateway keeps it in ``keys/peers.json`` (written whole, renamed into place);
a gateway whose ``[journal] url`` is PostgreSQL keeps it in the shared store
(gateway/store_pg/registrystore.py), so both gateways of a pair see one registry.  The
key store (gateway/keystore.py) reads and writes the document through one of these;
the document's format is gateway/registry.py's ``dump``/``parse`` either way.
"""
from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Protocol

from .config import CONFIG_FILE, is_postgresql


class RegistryStore(Protocol):
    #: Where it is, for messages.
    where: str
    #: True if reading its version is a round trip (the server polls it off the hot path).
    remote: bool

    def version(self, fresh: bool) -> Hashable:
        """What changes whenever the document is replaced.  A remote store asks again
        only if ``fresh``, else answers with the version it last saw (:meth:`poll`)."""
        ...

    def poll(self) -> None:
        """Ask the store for its version now (a remote one; a file has nothing to do)."""
        ...

    def read(self) -> tuple[Hashable, bytes | None]:
        """The document and its version (None: no registry yet)."""
        ...

    def write(self, read_version: Hashable, document: bytes) -> None:
        """Replace the document read at ``read_version`` (RegistryRefusal, saying to run
        the command again, if another command replaced it meanwhile)."""
        ...


class FileRegistry:
    """``keys/peers.json``: one stat is its version; written to a temporary file that is
    renamed over it (the key store's lock keeps two commands apart)."""

    remote = False

    def __init__(self, path: Path, write: Callable[[Path, bytes], None]) -> None:
        self.path = path
        self.where = str(path)
        self._path = os.fspath(path)
        self._write = write

    def version(self, fresh: bool) -> Hashable:
        return _stamp(self._path)

    def poll(self) -> None:
        return None

    def read(self) -> tuple[Hashable, bytes | None]:
        stamp = _stamp(self._path)
        try:
            return stamp, self.path.read_bytes()
        except FileNotFoundError:
            return stamp, None

    def write(self, read_version: Hashable, document: bytes) -> None:
        self._write(self.path, document)


def home_registry_url(home: Path) -> str | None:
    """``HOME/gateway.toml``'s ``[journal] url`` if it names PostgreSQL, else None (the
    file registry).  Only that one key is read: the rest of the file is checked, and a
    broken file reported, by the commands that use it."""
    try:
        data = tomllib.loads((home / CONFIG_FILE).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    journal = data.get("journal")
    url = journal.get("url") if isinstance(journal, dict) else None
    return url if isinstance(url, str) and is_postgresql(url) else None


def _stamp(path: str) -> tuple[int, int, int]:
    """A file's identity and version: a rename puts a new inode in place."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (0, 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size)
