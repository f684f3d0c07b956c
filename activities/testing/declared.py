"""What a Python project declares about its environment, read from its checkout: how the
environment is made (a `Plan`: its setup command, else what it declares, else nothing but the
test runner) and the key that identifies it (the interpreter, the runner, the plan and the
content of every file that declares a dependency). Read without following a link the
repository could have planted (activities/paths.py). Blocking."""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import os
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from activities import paths

FILE_BYTES = 4 * 1024 * 1024  # a dependency file larger than this is read this far
# The files that say what a Python project depends on (at the repository's top level).
DEPENDENCY_FILES = (
    "pyproject.toml", "setup.py", "setup.cfg", "poetry.lock", "uv.lock", "pdm.lock",
    "Pipfile", "Pipfile.lock",
)  # fmt: skip
REQUIREMENTS = re.compile(r"^(?:requirements|[\w-]*requirements)[\w.-]*\.txt$")
TEST_NAMES = ("test", "tests", "testing", "dev")  # extras and dependency groups, in this order


@dataclass(frozen=True)
class Plan:
    """How a project's environment is made: `command` (run in the sandbox after the test
    runner is installed; "" installs nothing of the project's), where it comes from, and the
    files whose content keys the environment."""

    source: str
    command: str
    files: tuple[str, ...] = ()

    @property
    def installs(self) -> bool:
        return bool(self.command.strip())


def declares(name: str) -> bool:
    """Whether the file `name` (relative to the repository) is one that declares dependencies."""
    top = "/" not in name
    return (top and (name in DEPENDENCY_FILES or bool(REQUIREMENTS.match(name)))) or (
        name.startswith("requirements/") and name.endswith(".txt") and name.count("/") == 1
    )


def dependency_files(repo: Path) -> tuple[str, ...]:
    """The files of `repo` that declare its dependencies (its top level, and requirements/)."""
    found = [name for name in DEPENDENCY_FILES if _is_file(repo, name)]
    with contextlib.suppress(OSError):
        found += sorted(p.name for p in repo.iterdir() if REQUIREMENTS.match(p.name))
    folder = repo / "requirements"
    if folder.is_dir() and not folder.is_symlink():
        found += sorted(f"requirements/{p.name}" for p in folder.glob("*.txt"))
    return tuple(name for name in found if _is_file(repo, name))


def _is_file(repo: Path, name: str) -> bool:
    try:
        return paths.exists_beneath(repo, name) and not (repo / name).is_symlink()
    except paths.PathRefused:
        return False


def _read(repo: Path, name: str) -> bytes:
    try:
        return paths.read_beneath(repo, name, FILE_BYTES) or b""
    except (paths.PathRefused, OSError):
        return b""


def _toml(repo: Path, name: str) -> dict[str, object]:
    try:
        return tomllib.loads(_read(repo, name).decode(errors="replace"))
    except tomllib.TOMLDecodeError:
        return {}


def _first_test_name(names: object) -> str | None:
    if not isinstance(names, dict):
        return None
    return next((n for n in TEST_NAMES if n in names), None)


def plan(repo: Path, setup_command: str = "") -> Plan:
    """How the environment of the project checked out at `repo` is made (blocking)."""
    files = dependency_files(repo)
    if setup_command.strip():
        return Plan(f"the setup command `{setup_command}`", setup_command, files)
    steps: list[str] = []
    said: list[str] = []
    pyproject = _toml(repo, "pyproject.toml") if "pyproject.toml" in files else {}
    project = pyproject.get("project")
    project = project if isinstance(project, dict) else {}
    extras = project.get("optional-dependencies")
    extra = _first_test_name(extras)
    if "setup.cfg" in files and extra is None:
        extra = _setup_cfg_extra(repo)
    group = _first_test_name(pyproject.get("dependency-groups"))
    installable = "setup.py" in files or bool(project) or "build-system" in pyproject
    if installable:  # its own metadata too (its version, its entry points), as its CI has
        target = f".[{extra}]" if extra else "."
        steps.append(f"pip install -e {shlex.quote(target)}")
        said.append(f"{'setup.py' if 'setup.py' in files else 'pyproject.toml'}"
                    f"{f' with its [{extra}] extra' if extra else ''}")  # fmt: skip
    if group is not None:
        steps.append(f"pip install --group {shlex.quote(group)}")
        said.append(f"its dependency group {group!r}")
    requirements = [f for f in files if f.endswith(".txt") and _is_test_requirements(f)]
    for name in requirements:
        steps.append(f"pip install -r {shlex.quote(name)}")
    said += requirements
    if not steps:
        return Plan("nothing declared: pytest alone, the project's source on its path", "", files)
    return Plan(f"what the project declares ({', '.join(said)})", " && ".join(steps), files)


def _is_test_requirements(name: str) -> bool:
    """requirements.txt, and the requirements files named for tests or development."""
    base = name.rsplit("/", 1)[-1]
    return base == "requirements.txt" or any(word in base for word in ("test", "dev"))


def _setup_cfg_extra(repo: Path) -> str | None:
    parser = configparser.RawConfigParser()
    with contextlib.suppress(configparser.Error):
        parser.read_string(_read(repo, "setup.cfg").decode(errors="replace"))
    if not parser.has_section("options.extras_require"):
        return None
    return _first_test_name(dict(parser["options.extras_require"]))


def key(repo: Path, how: Plan, runner: tuple[str, ...]) -> str:
    """The environment's identity: the interpreter, the runner's wheels, the plan's command
    and the content of every file that declares a dependency."""
    digest = hashlib.sha256()
    interpreter = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    for part in (interpreter, sys.version, how.command, *runner):
        digest.update(part.encode() + b"\0")
    for name in how.files:
        digest.update(name.encode() + b"\0" + _read(repo, name) + b"\0")
    return digest.hexdigest()[:32]
