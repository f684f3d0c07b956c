"""Imports run one way: core < db < activities < workflows < client < serving < cli < api and
the entry points (worker.py, starter.py, devstack.py). Nothing imports an entry point; the
product never imports the tools (devtools, bench, chaos, tests). Workflow modules import only
temporalio and the standard library at top level, the rest passed through the sandbox."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The product's layers, lowest first: a module imports its own layer and the ones before it.
LAYERS = ["core", "db", "activities", "workflows", "client", "serving", "cli", "api"]
ENTRY_POINTS = {"worker", "starter", "devstack", "api.__main__"}
TOOLS = {"devtools", "bench", "chaos", "tests"}
OURS = set(LAYERS) | {e.split(".")[0] for e in ENTRY_POINTS} | TOOLS


def imports(tree: ast.Module, *, top_level_only: bool = False) -> list[str]:
    """The modules a module imports (all of them, or only those at its top level, outside
    `with workflow.unsafe.imports_passed_through()` blocks)."""
    nodes = tree.body if top_level_only else ast.walk(tree)
    names: list[str] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def sources() -> list[Path]:
    paths = [ROOT / f"{name}.py" for name in ("worker", "starter", "devstack")]
    for package in [*LAYERS, *sorted(TOOLS)]:
        paths += sorted((ROOT / package).rglob("*.py"))
    return [p for p in paths if "migrations" not in p.parts or p.name == "env.py"]


def layer(module: str) -> int | None:
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def violations(importer: str, imported: list[str]) -> list[str]:
    """What `importer` may not import: an entry point, a tool (from the product), or a higher
    layer than its own."""
    found = []
    for name in imported:
        if name.split(".")[0] not in OURS:
            continue
        if name in ENTRY_POINTS or name.split(".")[0] in ("worker", "starter", "devstack"):
            found.append(f"{importer} imports the entry point {name}")
        elif importer in ENTRY_POINTS or importer.split(".")[0] in TOOLS:
            continue  # the top: anything but an entry point
        elif name.split(".")[0] in TOOLS:
            found.append(f"{importer} imports the tool {name}")
        elif (mine := layer(importer)) is not None and (theirs := layer(name) or 0) > mine:
            found.append(f"{importer} ({LAYERS[mine]}) imports {name} ({LAYERS[theirs]})")
    return found


@pytest.mark.parametrize("path", sources(), ids=module_name)
def test_imports_run_one_way(path: Path):
    module = module_name(path)
    assert violations(module, imports(ast.parse(path.read_text()))) == []


def test_the_check_sees_each_kind_of_violation():
    assert violations("core.rules", ["workflows.build", "core.states", "json"]) == [
        "core.rules (core) imports workflows.build (workflows)"
    ]
    assert violations("bench.engine", ["worker"]) == ["bench.engine imports the entry point worker"]
    assert violations("api.main", ["devtools.processes"]) == [
        "api.main imports the tool devtools.processes"
    ]
    assert violations("tests.conftest", ["serving.assembly", "activities.model.llm"]) == []
    assert violations("starter", ["client.builds", "api.schemas"]) == []


# Inside activities/: the helpers every part shares, then the packages by mechanism, then the
# activities the worker registers. A room imports its own modules and rooms of lower floors
# only: model, sandbox and repository know nothing of each other.
ACTIVITY_FLOORS = {
    "beat": 0, "paths": 0,
    "model": 1, "sandbox": 1, "repository": 1,
    "testing": 2, "delivery": 2,
    "mirror": 3, "projects": 3,
    "roles": 4, "evals": 4,
}  # fmt: skip


def activity_rooms(tree: ast.Module) -> list[str]:
    """The rooms of activities/ a module imports (`from activities import paths` -> paths,
    `from activities.sandbox.runs import Limits` -> sandbox)."""
    rooms = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "activities":
                rooms += [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            rooms += [a.name.split(".")[1] for a in node.names if a.name.startswith("activities.")]
    return rooms


def room_violations(importer: str, rooms: list[str]) -> list[str]:
    mine = importer.split(".")[1]
    return [
        f"{importer} ({mine}, floor {ACTIVITY_FLOORS[mine]}) imports activities.{room} "
        f"(floor {ACTIVITY_FLOORS[room]})"
        for room in rooms
        if room != mine and ACTIVITY_FLOORS[room] >= ACTIVITY_FLOORS[mine]
    ]


ACTIVITY_MODULES = [
    p for p in sorted((ROOT / "activities").rglob("*.py")) if p.name != "__init__.py"
]


def test_every_room_of_activities_has_a_floor():
    rooms = {module_name(p).split(".")[1] for p in ACTIVITY_MODULES}
    assert rooms == set(ACTIVITY_FLOORS)


@pytest.mark.parametrize("path", ACTIVITY_MODULES, ids=module_name)
def test_activities_rooms_import_only_lower_floors(path: Path):
    module = module_name(path)
    assert room_violations(module, activity_rooms(ast.parse(path.read_text()))) == []


def test_the_room_check_sees_a_sibling_and_an_upward_import():
    tree = ast.parse(
        "from activities import paths\n"
        "from activities.repository.workspace import Workspace\n"
        "from activities import roles, beat\n"
        "import activities.sandbox.runs\n"
    )
    rooms = activity_rooms(tree)
    assert rooms == ["paths", "repository", "roles", "beat", "sandbox"]
    assert room_violations("activities.model.llm", rooms) == [
        "activities.model.llm (model, floor 1) imports activities.repository (floor 1)",
        "activities.model.llm (model, floor 1) imports activities.roles (floor 4)",
        "activities.model.llm (model, floor 1) imports activities.sandbox (floor 1)",
    ]
    assert room_violations("activities.roles", rooms) == []


def test_the_api_process_loads_no_activity_code():
    """The API reaches builds through client/ and workflows/ (typed handles), never the role
    activities, their openai client or their sandbox."""
    code = (
        "import sys, api.main\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'activities', 'openai'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr


WORKFLOW_MODULES = sorted((ROOT / "workflows").glob("*.py"))
# What the sandbox imports again for every build: at top level only the standard library and
# temporalio; everything else is passed through, imported once per worker.
SANDBOXED = set(sys.stdlib_module_names) | {"__future__", "temporalio"}


@pytest.mark.parametrize("path", WORKFLOW_MODULES, ids=lambda p: p.name)
def test_workflow_modules_import_only_temporalio_and_the_standard_library(path: Path):
    tree = ast.parse(path.read_text())
    outside = [n for n in imports(tree, top_level_only=True) if n.split(".")[0] not in SANDBOXED]
    assert outside == [], f"{path.name}: import these through imports_passed_through()"


def test_the_sandbox_check_sees_a_violation():
    tree = ast.parse("import pydantic\nfrom core.build_io import X\nimport asyncio\n")
    names = imports(tree, top_level_only=True)
    assert [n for n in names if n.split(".")[0] not in SANDBOXED] == ["pydantic", "core.build_io"]


# Builtins the lint's banned-api cannot name: I/O a workflow must leave to activities.
IO_BUILTINS = {"open", "print", "input", "exec", "eval", "breakpoint"}


def builtin_io_calls(tree: ast.Module) -> list[str]:
    return sorted(
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in IO_BUILTINS
    )


@pytest.mark.parametrize("path", WORKFLOW_MODULES, ids=lambda p: p.name)
def test_workflow_modules_call_no_io_builtins(path: Path):
    assert builtin_io_calls(ast.parse(path.read_text())) == []


def test_the_builtin_check_sees_open():
    tree = ast.parse("def f():\n    with open('x') as f:\n        print(f.read())\n")
    assert builtin_io_calls(tree) == ["open", "print"]


def declared(extra: str | None = None) -> set[str]:
    """The distributions pyproject.toml declares (with an extra: its dependencies too)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    if extra:
        specs += project["optional-dependencies"][extra]
    return {re.split(r"[\[<>=!~;\s]", spec, maxsplit=1)[0].lower() for spec in specs}


def third_party_imports(paths: list[Path]) -> dict[str, set[str]]:
    """Distribution -> the modules of ours that import it."""
    distributions = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in paths:
        for name in imports(ast.parse(path.read_text())):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in OURS:
                continue
            for dist in distributions.get(top, [top]):
                found.setdefault(dist.lower().replace("_", "-"), set()).add(module_name(path))
    return found


def test_every_package_the_code_imports_is_declared():
    product = [p for p in sources() if p.relative_to(ROOT).parts[0] not in TOOLS]
    tools = [p for p in sources() if p.relative_to(ROOT).parts[0] in TOOLS]

    def normal(names: set[str]) -> set[str]:
        return {n.replace("_", "-") for n in names}

    missing = {d: m for d, m in third_party_imports(product).items() if d not in normal(declared())}
    # The tools may use the dev extra, and the real local model's (devtools/local_model.py).
    for_tools = normal(declared("dev") | declared("local-model"))
    missing |= {d: m for d, m in third_party_imports(tools).items() if d not in for_tools}
    # opentelemetry's namespace package maps to each of its distributions; one is enough.
    missing = {d: m for d, m in missing.items() if not d.startswith("opentelemetry-")}
    assert missing == {}


def test_no_module_outside_tests_and_migrations_is_over_400_lines():
    roots = [*LAYERS, *sorted(TOOLS - {"tests"})]
    paths = [
        p for root in roots for p in (ROOT / root).rglob("*.py") if "migrations" not in p.parts
    ]
    paths += [ROOT / f"{name}.py" for name in ("worker", "starter", "devstack")]
    long = {
        str(p.relative_to(ROOT)): n for p in paths if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}, "split these by what they hold"
