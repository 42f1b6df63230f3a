"""Which journal an end-of-day command reads: ``[journal] url`` of the home's
gateway.toml (PROTOCOL §8, §12).

``sqlite:///PATH`` (the default, ``sqlite:///data/journal.sqlite3``): the SQLite file,
relative to the home; ``postgresql://…``: the shared PostgreSQL journal of an
active/standby pair, read as it is (any gateway home of the pair may run end of day:
the commands only read the business, and journal their alerts as a tool, unfenced).
"""
from __future__ import annotations

from pathlib import Path

from gateway.config import ConfigError, load
from gateway.store import StoreUnavailable, sqlite_path

#: A journal as the end-of-day code names it: the SQLite file, or a postgresql:// url.
JournalRef = Path | str


def journal_of(home: Path) -> JournalRef:
    """The journal of ``home``: its SQLite file, or its ``postgresql://`` url.
    :class:`StoreUnavailable` saying what to fix when gateway.toml cannot be read."""
    try:
        url = load(Path(home)).journal_url
        path = sqlite_path(url, Path(home))
    except (ConfigError, ValueError) as exc:
        raise StoreUnavailable(f"the journal cannot be named: {exc}; fix gateway.toml's "
                               "[journal] url (docs/operations.md)") from None
    return url if path is None else path
