"""Hidden tests judged apart from the build they judge (an evaluation case's, activities/evals.py).

Invariant: what decides a hidden-test verdict is the base commit's test infrastructure, the
worker's own pytest configuration and the hidden tests' own results; nothing the build
delivered. So, in the fresh checkout of the delivered commit:

- every test-infrastructure file the build changed (conftest.py anywhere; sitecustomize.py,
  usercustomize.py and .pth files, which Python runs at start-up from a folder on its path;
  pytest's configuration files) is put back as the base has it, or removed where the base has
  none; the score card names each one (`Acceptance.integrity`);
- pytest reads the base's configuration from a copy the worker wrote (`-c`), not the tree's;
- the tree is read-only while the tests run: the build's code cannot rewrite a hidden test
  before pytest collects it;
- the verdict counts the hidden tests' own cases only, from the report the worker copies out
  of the run's folder: a hidden file none of whose tests ran, and a hidden test skipped, are
  failures, never passes.

What a hostile build can still do: its code runs in the pytest process when the hidden tests
import it, and code in that process can change what pytest reports (patch pytest's modules,
write the report itself). A dependency the build declares is installed into the run's
environment, so a pytest plugin it brings loads too. The base's infrastructure and the
counting close the plain routes (a conftest hook that turns failures into passes, a test
that skips itself, a collected nothing); the docs say the rest (docs/api.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from activities import paths
from activities.repository.gitcmd import GitError, git, git_bytes
from activities.testing.results import Case

RUN_AT_START = ("conftest.py", "sitecustomize.py", "usercustomize.py")
# pytest's configuration files, in the order it looks for them, and what makes one count.
CONFIGS = (
    ("pytest.ini", b""),
    (".pytest.ini", b""),
    ("pyproject.toml", b"[tool.pytest.ini_options]"),
    ("tox.ini", b"[pytest]"),
    ("setup.cfg", b"[tool:pytest]"),
)
CONFIG_BYTES = 1_000_000
# The files pytest collects tests from by default; other hidden files (a package's __init__.py,
# helpers, fixtures) are there for the tests and have no cases of their own.
TEST_MODULE = re.compile(r"^(test_.*|.*_test)\.py$")


@dataclass(frozen=True)
class Sealed:
    """How the hidden tests run: pytest's configuration (a file name and its bytes, written
    beside the run's report), and the tree read-only."""

    config: tuple[str, bytes]


def is_infrastructure(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name in RUN_AT_START or name.endswith(".pth") or any(name == c for c, _ in CONFIGS)


def seal(repo: Path, base: str) -> tuple[Sealed, list[str]]:
    """Put the base's test infrastructure back in the checkout `repo` (at the delivered commit);
    how the tests then run, and the infrastructure files the build changed."""
    listed = git(repo, "diff", "--name-only", "--no-renames", "-z", base, "HEAD", "--")
    changed = sorted(p for p in listed.split("\0") if p and is_infrastructure(p))
    for path in changed:
        before = _at(repo, base, path)
        if before is None:
            paths.unlink_beneath(repo, path)
        else:
            paths.write_beneath(repo, path, before)
    return Sealed(config=_config(repo, base)), changed


def _at(repo: Path, commit: str, path: str) -> bytes | None:
    """`path` as `commit` has it (None: it has none)."""
    try:
        return git_bytes(repo, "cat-file", "blob", f"{commit}:{path}")
    except GitError:
        return None


def _config(repo: Path, base: str) -> tuple[str, bytes]:
    """The base's pytest configuration at the repository's top (an empty one if it has none)."""
    for name, section in CONFIGS:
        text = _at(repo, base, name)
        if text is not None and len(text) <= CONFIG_BYTES and section in text:
            return name, text
    return "pytest.ini", b"[pytest]\n"


def _of(case: Case, path: str) -> bool:
    """Whether `case` is one of the test file `path`'s (pytest's report names it by the file's
    dotted name, a class of it after another dot)."""
    module, owner = path.removesuffix(".py").replace("/", "."), case.name.split("::")[0]
    return owner == module or owner.startswith(module + ".")


@dataclass(frozen=True)
class Verdict:
    passed: bool
    run: int
    failed: int
    summary: str


def verdict(found: list[Case], hidden: list[str]) -> Verdict:
    """The hidden tests' verdict from the run's cases: theirs only, each one passed, and every
    hidden test module with at least one case."""
    tests = [f for f in hidden if TEST_MODULE.match(f.rsplit("/", 1)[-1])]  # not helpers
    mine = [case for case in found if any(_of(case, f) for f in tests)]
    missing = [f for f in tests if not any(_of(case, f) for case in mine)]
    bad = [c for c in mine if c.status != "passed"]
    run = len(mine)
    if missing:
        return Verdict(False, run, len(bad), f"no test of {', '.join(missing)} ran")
    if not mine:
        return Verdict(False, 0, 0, "no hidden test ran")
    if bad:
        first = bad[0]
        why = first.message or first.status
        return Verdict(
            False, run, len(bad), f"{run - len(bad)} of {run} passed. First: {first.name}: {why}"
        )
    return Verdict(True, run, 0, f"{run} of {run} passed")
