"""The failure kinds the workflow branches on are declared once, in core/contracts.py
(`Failure`): every ApplicationError the product raises names its kind through it, never as a
string or a Python class name, and every branch on a kind compares with it. So renaming an
exception class, or mistyping a kind, cannot silently change what a build does."""

from __future__ import annotations

import ast
from pathlib import Path

from activities.repository.edits import AttemptRefused
from core.contracts import REFUSED_ATTEMPTS, Failure

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ["core", "db", "activities", "workflows", "client", "serving", "cli", "api"]
ENTRY_POINTS = ["worker.py", "starter.py", "devstack.py"]
KINDS = {kind.value for kind in Failure}


def product_modules() -> list[Path]:
    paths = [p for package in PRODUCT for p in sorted((ROOT / package).rglob("*.py"))]
    return paths + [ROOT / name for name in ENTRY_POINTS]


def parsed() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in product_modules()]


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


def test_no_kind_is_spelled_as_a_string_outside_its_declaration():
    """A kind written as a string (a raise's `type="..."`, a branch's `== "..."`, a tuple of
    names) escapes the declaration: each must go through `Failure`."""
    spelled = [
        f"{where(path, node)}: {node.value!r}"
        for path, tree in parsed()
        if path != ROOT / "core" / "contracts.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in KINDS and not in_all(tree, node)
    ]
    assert not spelled, "kinds spelled as strings: " + "; ".join(spelled)


def in_all(tree: ast.Module, constant: ast.Constant) -> bool:
    """Whether `constant` is a name in the module's `__all__` (a re-export, not a kind)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return any(c is constant for c in ast.walk(node.value))
    return False


def test_every_application_error_names_its_kind_through_failure():
    """Every raise carries a kind, and none is computed from a class name or a literal: a
    `Failure` member, or the kind of the error it passes on (`err.kind`, `err.type`)."""
    wrong: list[str] = []
    raised = 0
    for path, tree in parsed():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and called(node) == "ApplicationError"):
                continue
            raised += 1
            kind = next((k.value for k in node.keywords if k.arg == "type"), None)
            if kind is None:
                wrong.append(f"{where(path, node)}: no type=")
                continue
            for part in ast.walk(kind):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    wrong.append(f"{where(path, node)}: a string {part.value!r}")
                if isinstance(part, ast.Attribute) and part.attr == "__name__":
                    wrong.append(f"{where(path, node)}: a class name")
            if not names_a_kind(kind, tree):
                wrong.append(f"{where(path, node)}: {ast.unparse(kind)} is not a Failure")
    assert raised >= 15, "the scan sees the product's raises"
    assert not wrong, "; ".join(wrong)


def called(node: ast.Call) -> str:
    func = node.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def names_a_kind(kind: ast.expr, tree: ast.Module) -> bool:
    """`Failure.X`, a conditional between such, a pass-through (`x.kind`, `x.type`), or a
    local name assigned only such values in the module."""
    if isinstance(kind, ast.Attribute):
        base = kind.value
        return (isinstance(base, ast.Name) and base.id == "Failure") or kind.attr in {
            "kind",
            "type",
        }
    if isinstance(kind, ast.IfExp):
        return names_a_kind(kind.body, tree) and names_a_kind(kind.orelse, tree)
    if isinstance(kind, ast.Name):
        values = [
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == kind.id for t in node.targets)
        ]
        return bool(values) and all(names_a_kind(v, tree) for v in values)
    return False


def test_every_kind_is_raised_or_branched_on_somewhere():
    """No kind declared and never used: a member no code names is a kind nothing raises."""
    named = {
        node.attr
        for path, tree in parsed()
        if path != ROOT / "core" / "contracts.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "Failure"
    }
    assert {kind.name for kind in Failure} - named == set()


def test_each_refused_attempt_carries_its_own_kind_and_the_workflow_asks_again_for_each():
    family = [AttemptRefused]
    for cls in family:
        family += cls.__subclasses__()
    kinds = [cls.kind for cls in family]
    assert len(set(kinds)) == len(family), "each refusal has its own kind"
    assert set(kinds) == REFUSED_ATTEMPTS


def test_a_kind_is_its_recorded_value_whatever_the_class_is_called():
    """Recorded histories carry these strings; the workflow compares them with the members."""
    assert Failure("UnsafePath") is Failure.UNSAFE_PATH
    assert Failure.MIRROR_REFUSED.value == "MirrorRefused"

    class Renamed(AttemptRefused.__subclasses__()[0]):  # type: ignore[misc]
        """A class renamed (or subclassed) keeps the kind its family declares."""

    assert Renamed("x").kind in REFUSED_ATTEMPTS
