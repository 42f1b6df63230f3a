"""PostgreSQL fixtures (loaded by conftest.py through ``pytest_plugins``).

``pg_server``: the URL of a PostgreSQL server for the whole session —
``$SBDX_TEST_POSTGRES_URL`` when set (.ci/run starts a throwaway cluster and sets it),
else a throwaway cluster of our own (tests/pgcluster.py) when the server binaries
exist, else every test that needs it skips, saying why.

``pg_url``: a fresh, empty database of that server for one test (``CREATE DATABASE``
from ``template0``), dropped after it: tests never see each other's rows.
``pg_store_url``: the same, with the gateway's PostgreSQL schema already migrated (a
copy of a template database migrated once per session).
"""
from __future__ import annotations

import itertools
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

import pgcluster

ENV = "SBDX_TEST_POSTGRES_URL"
_TEMPLATE = "sbdx_test_template"
_numbers = itertools.count(1)


def with_database(url: str, dbname: str) -> str:
    """``url`` naming database ``dbname`` instead (query parameters kept)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "dbname"]
    return urlunsplit((parts.scheme, parts.netloc, f"/{dbname}", urlencode(query),
                       parts.fragment))


def _admin(url: str, *statements: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(url, autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[test]')")
    if os.environ.get(ENV):
        yield os.environ[ENV]
        return
    if pgcluster.find_bindir() is None:
        pytest.skip(f"no PostgreSQL: set {ENV} or install Debian's `postgresql` package")
    folder = Path(tempfile.mkdtemp(prefix="sbdx-pg-"))  # /tmp: the socket path stays short
    try:
        try:
            url = pgcluster.start(folder)
        except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
            err = getattr(e, "stderr", b"") or b""
            pytest.skip(f"could not start a throwaway PostgreSQL ({e}"
                        f"{': ' + err.decode(errors='replace').strip() if err else ''});"
                        f" set {ENV} to a server's URL")
        yield url
    finally:
        pgcluster.stop(folder)


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    name = f"sbdx_test_{os.getpid()}_{next(_numbers)}"
    _admin(pg_server, f"CREATE DATABASE {name} TEMPLATE template0")
    try:
        yield with_database(pg_server, name)
    finally:
        _admin(pg_server, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> Iterator[str]:
    """A database with the gateway's schema, migrated once: the template of pg_store_url."""
    from gateway.store_pg.schema import migrate

    psycopg = pytest.importorskip("psycopg")
    name = f"{_TEMPLATE}_{os.getpid()}"
    _admin(pg_server, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name} TEMPLATE template0")
    with psycopg.connect(with_database(pg_server, name)) as conn:
        migrate(conn)
    try:
        yield name
    finally:
        _admin(pg_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def new_store_database(pg_server: str, pg_template: str) -> str:
    """A fresh database with the gateway's schema (a copy of ``pg_template``): its URL;
    :func:`drop_database` drops it.  For tests that need one per example (hypothesis)."""
    name = f"sbdx_test_{os.getpid()}_{next(_numbers)}"
    _admin(pg_server, f"CREATE DATABASE {name} TEMPLATE {pg_template}")
    return with_database(pg_server, name)


def drop_database(pg_server: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    _admin(pg_server, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def pg_store_url(pg_server: str, pg_template: str) -> Iterator[str]:
    url = new_store_database(pg_server, pg_template)
    try:
        yield url
    finally:
        drop_database(pg_server, url)


@pytest.fixture(params=["sqlite", "postgresql"])
def open_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Any]:
    """Opens the test's journal (gateway.journal.Journal) on each store: a SQLite file
    in ``tmp_path``, or a fresh migrated PostgreSQL database (``[journal] url``).  Call
    it again for a restart: the same file or database."""
    from gateway.journal import Journal

    if request.param == "sqlite":
        return lambda: Journal(tmp_path / "journal.sqlite3")
    url = request.getfixturevalue("pg_store_url")
    return lambda: Journal(url, home=tmp_path)
