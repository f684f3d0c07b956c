"""Every field of a build's state is changed by its owner only (core/build_data.py names
them): an assignment, augmented or item assignment, deletion or mutating call on a field,
anywhere in core/ or workflows/, is in its owner's module. core/rules.py and core/views.py
own nothing, so they change nothing.

The state is reached as `data` (`self.data`), a part as `data.<part>` or a local name bound
to it in the same function; a part's own methods change it through `self`, in its module."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.budget import BudgetLedger
from core.build_data import BuildData, CodeState, QueueState, Steering

ROOT = Path(__file__).resolve().parents[2]
PARTS: dict[str, type] = {"code": CodeState, "queue": QueueState, "steering": Steering,
                          "budget": BudgetLedger}  # fmt: skip
OWNERS: dict[type, str] = {
    BuildData: "workflows/build.py",
    CodeState: "workflows/code.py",
    QueueState: "workflows/turn.py",
    Steering: "workflows/messages.py",
    BudgetLedger: "core/budget.py",
}
MUTATORS = {"append", "extend", "insert", "remove", "pop", "clear", "update", "setdefault",
            "add", "discard", "sort", "reverse", "popitem"}  # fmt: skip


def _part_of(receiver: ast.expr, aliases: dict[str, type]) -> type | None:
    """Which part of the state `receiver` is: BuildData for `data`/`self.data`, a part for
    `data.<part>` or a name bound to one; None for anything else."""
    if isinstance(receiver, ast.Name):
        return BuildData if receiver.id == "data" else aliases.get(receiver.id)
    if isinstance(receiver, ast.Attribute):
        if receiver.attr == "data":
            return BuildData
        if receiver.attr in PARTS and _part_of(receiver.value, aliases) is BuildData:
            return PARTS[receiver.attr]
    return None


def _changed(target: ast.expr) -> ast.Attribute | None:
    """The attribute a write target changes: `x.f`, `x.f[k]`, `x.f[k][j]` -> `x.f`."""
    while isinstance(target, ast.Subscript):
        target = target.value
    return target if isinstance(target, ast.Attribute) else None


def _flat(targets: list[ast.expr]) -> Iterator[ast.expr]:
    for target in targets:
        if isinstance(target, ast.Tuple | ast.List):
            yield from _flat(target.elts)
        else:
            yield target


def writes(tree: ast.AST) -> Iterator[tuple[type, str, int]]:
    """(part, field, line) of every write to a field of the build's state in `tree`."""
    scopes: list[ast.AST] = [
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    for scope in scopes or [tree]:
        aliases: dict[str, type] = {}
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                name, value = node.targets[0], node.value
                if isinstance(name, ast.Name) and (part := _part_of(value, {})) in OWNERS:
                    aliases[name.id] = part  # type: ignore[assignment]
        for node in ast.walk(scope):
            calls = False
            if isinstance(node, ast.Assign):
                targets = list(_flat(node.targets))
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            elif isinstance(node, ast.Delete):
                targets = node.targets
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                targets, calls = ([node.func.value] if node.func.attr in MUTATORS else []), True
            else:
                continue
            for target in targets:
                changed = _changed(target)
                if changed is None or (part := _part_of(changed.value, aliases)) is None:
                    continue
                if calls and part is BuildData and changed.attr in PARTS:
                    continue  # a part's own method: its owner's code
                yield part, changed.attr, node.lineno


def test_the_detector_sees_every_kind_of_write_and_only_those():
    code = """
def f(self, data):
    data.code.head = 1
    self.data.code.commit_at['x'] = 2
    self.data.loop_backs += 1
    self.data.steering.guidance.append('g')
    queue = self.data.queue
    queue.turn, b = 1, 2
    del data.budget.usage['r']
    self.data.budget.add('role', None)
    self.turn = object()
    task.head = 'x'
"""
    found = sorted(writes(ast.parse(code)), key=lambda write: write[2])
    assert found == [
        (CodeState, "head", 3), (CodeState, "commit_at", 4), (BuildData, "loop_backs", 5),
        (Steering, "guidance", 6), (QueueState, "turn", 8), (BudgetLedger, "usage", 9),
    ]  # fmt: skip


def modules() -> list[Path]:
    return sorted(p for folder in ("core", "workflows") for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_build_state_is_changed_only_by_its_owners(path: Path):
    here = str(path.relative_to(ROOT))
    strays = [
        f"{here}:{line} changes {part.__name__}.{name}, which {OWNERS[part]} owns"
        for part, name, line in set(writes(ast.parse(path.read_text())))
        if OWNERS[part] != here
    ]
    assert not strays, "\n".join(sorted(strays))
