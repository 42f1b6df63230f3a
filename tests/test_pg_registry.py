"""§9/§12: the peer registry as one shared document with compare-and-set
(gateway/store_pg/registrydb.py) on a real throwaway PostgreSQL."""
from __future__ import annotations

import pytest

psycopg = pytest.importorskip("psycopg")

from gateway.registry import dump, parse  # noqa: E402
from gateway.store_pg import registrydb  # noqa: E402
from gateway.store_pg.leasedb import holder_id  # noqa: E402


def test_the_registry_is_stored_once_then_changed_only_from_the_revision_read(
        pg_store_url: str) -> None:
    with psycopg.connect(pg_store_url) as a, psycopg.connect(pg_store_url) as b:
        assert registrydb.load(a) is None and registrydb.revision(a) == 0
        empty = dump({})
        assert registrydb.store(a, 0, empty) == 1
        with pytest.raises(registrydb.RegistryChanged, match="run the command again"):
            registrydb.store(b, 0, b"other")  # both started from "nothing stored"
        seen_a, seen_b = registrydb.load(a), registrydb.load(b)
        assert seen_a == seen_b == registrydb.RegistryDocument(1, empty)
        assert registrydb.store(a, 1, b"changed by A") == 2
        with pytest.raises(registrydb.RegistryChanged):
            registrydb.store(b, 1, b"changed by B")  # B read revision 1: A won
        assert registrydb.revision(b) == 2
        assert registrydb.load(b) == registrydb.RegistryDocument(2, b"changed by A")
        assert parse(seen_a.document, lambda party: b"") == {}  # a registry document


def test_holder_ids_differ_between_processes_and_restarts() -> None:
    first, second = holder_id(), holder_id()
    assert first != second and first.rsplit(":", 1)[0] == second.rsplit(":", 1)[0]
