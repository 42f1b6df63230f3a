"""Issue 21's rule, pinned: nothing outside the store layer (gateway/store,
gateway/store_pg) imports a database driver or writes SQL (docs/architecture.md,
"Store layer").

Read from the source with the ast module: an import of sqlite3, psycopg (or another
driver), a call of ``.execute``/``.executemany``/``.executescript``, or a string
literal (f-strings too) that holds a SQL statement — in capitals, as the store layer
writes them: ``SELECT … FROM``, ``INSERT INTO``, ``UPDATE … SET``, ``DELETE FROM``,
``CREATE TABLE``/``INDEX``, ``ALTER TABLE``, ``DROP TABLE``, ``PRAGMA x``, ``BEGIN``
with a mode, ``ATTACH DATABASE``, ``VACUUM``, ``SAVEPOINT``.  Prose in docstrings
("the exporter's SELECT") does not match.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
STORE_LAYER = ("store", "store_pg")
DRIVERS = {"sqlite3", "psycopg", "psycopg2", "psycopg_pool", "apsw", "asyncpg"}
CURSOR_CALLS = {"execute", "executemany", "executescript"}
SQL = re.compile(
    r"\bSELECT\b[^;]*?\bFROM\s+\w"
    r"|\bINSERT\s+(?:OR\s+\w+\s+)?INTO\s+\w"
    r"|\bUPDATE\s+\w+\s+SET\b"
    r"|\bDELETE\s+FROM\s+\w"
    r"|\b(?:CREATE|ALTER|DROP)\s+(?:UNIQUE\s+)?(?:TEMP\s+)?(?:TABLE|INDEX|VIEW|TRIGGER)\b"
    r"|\bPRAGMA\s+\w+"
    r"|\bBEGIN\s+(?:IMMEDIATE|EXCLUSIVE|DEFERRED|ISOLATION|TRANSACTION)\b"
    r"|\bATTACH\s+DATABASE\b|\bVACUUM\b|\bSAVEPOINT\s+\w|\bROLLBACK\s+TO\b"
    r"|\bON\s+CONFLICT\b")


def outside_store_layer() -> list[Path]:
    found = [p for p in sorted(PACKAGE.rglob("*.py"))
             if p.relative_to(PACKAGE).parts[0] not in STORE_LAYER]
    assert len(found) > 50, found  # the walk found the package
    return found


def _strings(node: ast.AST) -> list[str]:
    """The literal text of a str constant, or of an f-string's constant parts joined
    with a placeholder (``f"SELECT {cols} FROM t"`` reads ``SELECT ? FROM t``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str)
                        else "?" for v in node.values)]
    return []


def violations(source: str, name: str) -> list[str]:
    """One line per import of a driver, cursor call and SQL string in ``source``."""
    tree = ast.parse(source, name)
    found: list[str] = []
    in_fstring: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            in_fstring.update(id(v) for v in node.values)
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in DRIVERS]
        elif isinstance(node, ast.ImportFrom) and node.module \
                and node.module.split(".")[0] in DRIVERS and not node.level:
            found.append(f"{where}: from {node.module} import …")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in CURSOR_CALLS:
            found.append(f"{where}: .{node.func.attr}(…) call")
        elif id(node) not in in_fstring:
            for text in _strings(node):
                m = SQL.search(text)
                if m:
                    found.append(f"{where}: SQL {m.group(0)!r}")
    return found


def test_nothing_outside_the_store_layer_imports_a_driver_or_writes_sql() -> None:
    problems = [line for path in outside_store_layer()
                for line in violations(path.read_text("utf-8"),
                                       str(path.relative_to(PACKAGE.parent)))]
    assert problems == [], ("outside gateway/store and gateway/store_pg (issue 21; move "
                            "it behind an interface of the store layer):\n"
                            + "\n".join(problems))


@pytest.mark.parametrize("source", [
    "import sqlite3\n",
    "import psycopg\n",
    "from psycopg import sql\n",
    "db.execute('anything')\n",
    "q = 'SELECT state, updated_at FROM record WHERE origin=?'\n",
    "q = f\"SELECT {', '.join(cols)} FROM message WHERE id > ?\"\n",
    "q = f\"DELETE FROM message WHERE id IN ({marks})\"\n",
    "q = 'INSERT OR IGNORE INTO message (id) VALUES (?)'\n",
    "q = ('UPDATE record SET state=? '\n     'WHERE origin=?')\n",
    "q = 'CREATE INDEX IF NOT EXISTS m ON message (msg_id)'\n",
    "q = 'PRAGMA journal_mode=WAL'\n",
    "q = 'BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY'\n",
])
def test_the_check_sees_each_kind(source: str) -> None:
    assert violations(source, "x.py"), source


@pytest.mark.parametrize("source", [
    '"""The exporter\'s SELECT, kept by SQLite on every write."""\n',
    "msg = 'select the records from the journal and update them'\n",
    "h.update(chunk)\n",
    "records.update(key, now)\n",
    "text = 'deleted from the journal'\n",
    "from .store.sqlite.retention import open_reader\n",
])
def test_prose_and_store_calls_pass(source: str) -> None:
    assert violations(source, "x.py") == []
