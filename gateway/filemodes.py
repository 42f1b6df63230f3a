"""Owner-only files and folders (PROTOCOL §9: regular files under ``data/`` are created
0600, folders 0700, like ``keys/``).

Two layers.  Every ``gateway`` command runs with umask 077 (``cli.main``), so nothing
it creates is readable by another local user even where a library forgets.  And every
place that creates a file or folder of ours names the mode itself (these helpers), so
library use — tests, an embedding program — is owner-only too.  SQLite gives a
database's ``-wal``, ``-shm`` and ``-journal`` the mode of the database file (it
fchmods them to match, whatever the umask), so creating the database file 0600 before
SQLite opens it covers them.

A database found wider than that (made by an older version), with its side files and
— when it is a home's ``data/`` folder — its folder, is narrowed when it is opened:
group and other bits removed.  A warning says what changed; if it
could not be (not ours), the warning says what to run.  Any other folder a database
sits in (a test's temporary folder, say) is the caller's and left alone.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

#: The process umask of every ``gateway`` command.
UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
#: The folder of a home that holds its databases (PROTOCOL §9).
DATA_DIR = "data"
#: Files SQLite keeps beside a database (WAL mode, rollback journal).
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parent 0700; an existing folder is left as is."""
    missing: list[Path] = []
    p = Path(path)
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, DIR_MODE)
        except FileExistsError:  # made meanwhile by another process
            pass
    return Path(path)


def narrow(path: Path) -> str | None:
    """Remove the group and other bits of an existing ``path``.

    Returns a line for a warning saying what changed (or what to run, when it could
    not be changed), None when it already was owner-only."""
    try:
        old = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    if not old & 0o077:
        return None
    new = old & ~0o077
    try:
        os.chmod(path, new)
    except OSError as exc:
        return (f"{path} is {old:04o}, readable by other local users, and could not be "
                f"narrowed ({exc.strerror}): run chmod go= {path}")
    return f"{path} was {old:04o}, narrowed to {new:04o} (owner-only, PROTOCOL §9)"


def private_database(path: Path) -> list[str]:
    """Make ``path`` ready for ``sqlite3.connect``: its folder 0700 (created if
    missing), the file created 0600 if missing (an empty file is an empty database).

    The database and its side files found wider are narrowed, and so is the folder
    when it is a home's ``data/``; each change is logged as a warning and returned."""
    path = Path(path)
    private_dir(path.parent)
    changed = [narrow(path.parent) if path.parent.name == DATA_DIR else None]
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)  # never truncates
    os.close(fd)
    changed += [narrow(p) for p in (path, *(Path(f"{path}{s}") for s in SQLITE_SIDE_FILES))]
    lines = [line for line in changed if line]
    for line in lines:
        log.warning("%s", line)
    return lines


def create_private(path: Path, *, dir_fd: int | None = None) -> int:
    """Open a new or existing file for writing (truncated), created 0600; the fd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    return os.open(path, flags, FILE_MODE, dir_fd=dir_fd)
