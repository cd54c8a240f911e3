"""pytest's private names come in through pytest_expire/pytest_internals.py alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest_expire
from pytest_expire import pytest_internals

PACKAGE = Path(pytest_expire.__file__).parent


def _private_imports(path: Path) -> list[str]:
    """The ``_pytest`` modules that the file at ``path`` imports, wherever in it."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.split(".")[0] == "_pytest"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "_pytest":
            found.append(str(node.module))
    return found


def test_no_other_module_imports_pytests_private_modules() -> None:
    gateway = Path(pytest_internals.__file__)
    assert _private_imports(gateway), "the check finds nothing: it would pass on any module"
    elsewhere = {
        str(path.relative_to(PACKAGE)): imports
        for path in PACKAGE.rglob("*.py")
        if path != gateway and (imports := _private_imports(path))
    }
    assert elsewhere == {}
