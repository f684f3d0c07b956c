"""Workflow modules import only temporalio and the standard library at top level."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parent.parent / "workflows").glob("*.py"))
# Sibling workflow modules follow the same rule, so they load inside the sandbox as they are.
ALLOWED = set(sys.stdlib_module_names) | {"temporalio", "__future__", "workflows"}


def top_level_imports(tree: ast.Module) -> list[str]:
    """Modules imported at module level, outside `with workflow.unsafe.imports_passed_through()`."""
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_module_imports_only_temporalio_and_stdlib(path: Path):
    tree = ast.parse(path.read_text())
    outside = [n for n in top_level_imports(tree) if n.split(".")[0] not in ALLOWED]
    assert outside == [], f"{path.name}: import these through imports_passed_through()"


def test_the_check_sees_a_violation():
    tree = ast.parse("import pydantic\nfrom core.models import X\nimport asyncio\n")
    names = top_level_imports(tree)
    assert [n for n in names if n.split(".")[0] not in ALLOWED] == ["pydantic", "core.models"]
