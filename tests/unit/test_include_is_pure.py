"""``include/`` is the pure core: it must never import Airflow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

INCLUDE = Path(__file__).resolve().parents[2] / "include"
MODULES = sorted(INCLUDE.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(INCLUDE)))
def test_no_module_in_include_imports_airflow(module: Path) -> None:
    tree = ast.parse(module.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not [name for name in imported if name == "airflow" or name.startswith("airflow.")]


def test_the_include_tree_is_not_empty() -> None:
    assert len(MODULES) > 10
