"""The house rules of ``include/`` that a reviewer would otherwise check by eye (see ../shared/STYLE.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

INCLUDE = Path(__file__).resolve().parents[2] / "include"
MODULES = sorted(INCLUDE.rglob("*.py"))
ADAPTERS = ("include.microsoft", "include.threatconnect")
MAX_LINES = 450


def _imports(module: Path) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    return imported


@pytest.mark.parametrize("module", sorted((INCLUDE / "pipeline").rglob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_no_adapter(module: Path) -> None:
    assert [name for name in _imports(module) if name.startswith(ADAPTERS)] == []


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(INCLUDE)))
def test_no_module_in_include_is_longer_than_a_newcomer_can_hold(module: Path) -> None:
    assert len(module.read_text().splitlines()) <= MAX_LINES


def test_exactly_one_function_in_include_reads_retry_after() -> None:
    readers = []
    for module in MODULES:
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                source = ast.get_source_segment(module.read_text(), node) or ""
                body = "\n".join(line for line in source.splitlines() if not line.strip().startswith("#"))
                docstring = ast.get_docstring(node) or ""
                code = body.replace(docstring, "")
                if re.search(r"""["']retry-after["']""", code, re.IGNORECASE):
                    readers.append(f"{module.relative_to(INCLUDE)}:{node.name}")
    assert readers == ["transport/retry_after.py:retry_after"]


@pytest.mark.parametrize(
    "module",
    sorted((INCLUDE / "threatconnect").rglob("*.py")) + sorted((INCLUDE / "microsoft").rglob("*.py")),
    ids=lambda p: str(p.relative_to(INCLUDE)),
)
def test_no_client_module_has_a_retry_loop_of_its_own(module: Path) -> None:
    # A retry loop is a loop that sleeps; the transport (include/transport) is the only place that may.
    tree = ast.parse(module.read_text())
    sleepy = []
    for loop in (n for n in ast.walk(tree) if isinstance(n, ast.For | ast.While)):
        for call in (n for n in ast.walk(loop) if isinstance(n, ast.Call)):
            name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
            if "sleep" in name:
                sleepy.append(loop.lineno)
    assert sleepy == []
