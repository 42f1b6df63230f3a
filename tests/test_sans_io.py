"""The sans-IO core imports nothing from Twisted (STYLE.md, docs/architecture.md).

Checked on the source (AST), directly and through every gateway module the core
imports, so a Twisted import cannot creep in one hop away either.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
CORE = ("framing", "envelope", "message", "catalog", "mac", "signature", "kex", "keyring",
        "fieldcrypto", "replay", "verification", "errors", "records", "rules", "bookdate")


def _module_path(name: str) -> Path:
    """``gateway.x.y`` -> its source file."""
    parts = name.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports(name: str) -> set[str]:
    """Absolute names of everything module ``name`` imports (relative ones resolved)."""
    path = _module_path(name)
    tree = ast.parse(path.read_text("utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names
                         if _module_path(f"{target}.{alias.name}").exists()
                         and target.startswith("gateway"))
    return found


def _is_twisted(name: str) -> bool:
    return name == "twisted" or name.startswith("twisted.")


def _closure(start: str) -> dict[str, set[str]]:
    """``start`` and every gateway module it reaches: module -> its imports."""
    seen: dict[str, set[str]] = {}
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen or not _module_path(name).exists():
            continue
        seen[name] = _imports(name)
        todo.extend(i for i in seen[name] if i == "gateway" or i.startswith("gateway."))
    return seen


@pytest.mark.parametrize("module", CORE)
def test_core_module_imports_nothing_from_twisted(module: str) -> None:
    imports = _imports(f"gateway.{module}")
    assert imports, "the AST walk found no imports at all"
    assert sorted(i for i in imports if _is_twisted(i)) == []


@pytest.mark.parametrize("module", CORE)
def test_nor_do_the_gateway_modules_it_imports(module: str) -> None:
    reached = _closure(f"gateway.{module}")
    offenders = {m: sorted(i for i in imps if _is_twisted(i)) for m, imps in reached.items()}
    assert {m: i for m, i in offenders.items() if i} == {}


def test_the_check_sees_the_edge_module_import_twisted() -> None:
    """The walk is not blind: server.py, the Twisted edge, is caught."""
    assert any(_is_twisted(i) for i in _imports("gateway.server"))


def test_importing_the_core_loads_no_twisted() -> None:
    code = ("import sys\n"
            + "".join(f"import gateway.{m}\n" for m in CORE)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] == 'twisted'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
