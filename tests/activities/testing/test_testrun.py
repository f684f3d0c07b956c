"""The project's own test command decides, measured against its base: failures that were
there already do not count, a test that passed there and fails now is a regression."""

from __future__ import annotations

from pathlib import Path

import pytest

from activities.repository.workspace import Remote, Workspace
from activities.sandbox import cgroups
from activities.sandbox.runs import Limits
from activities.testing.checks import introduced
from activities.testing.results import compare
from activities.testing.testrun import baseline, run_tests
from core.role_io import SourceFile
from tests.git_projects import APP, APP_TEST, make_project

LIMITS = Limits(60, 1024)
BROKEN = """def test_already_broken():
    assert 1 == 2
"""


def _workspace(tmp_path: Path, files: dict[str, str]) -> tuple[Workspace, str]:
    remote = make_project(tmp_path, files)
    ws = Workspace(tmp_path / "ws", Remote(str(remote), "main", "b1"))
    return ws, ws.open()


async def test_failures_already_on_the_base_do_not_count(tmp_path: Path) -> None:
    files = {"app.py": APP, "tests/test_app.py": APP_TEST, "tests/test_old.py": BROKEN}
    ws, base = _workspace(tmp_path, files)
    test = "def test_new():\n    assert True\n"
    ws.write([SourceFile(path="tests/test_new.py", content=test)], "attempt 1")
    report = await run_tests(ws, 1, LIMITS)
    assert not report.passed and [f.test for f in report.failures] == [
        "tests.test_old::test_already_broken"
    ]
    cache = tmp_path / "cache"
    measured = compare(report, await baseline(ws, base, cache, "python -m pytest", LIMITS))
    assert measured.passed and measured.failures == [] and measured.regressions == []
    assert [f.test for f in measured.pre_existing] == ["tests.test_old::test_already_broken"]
    assert "1 failed on the base already" in measured.summary
    assert measured.baseline is not None and measured.baseline.startswith(base[:10])
    assert not list(ws.root.glob("baseline-*"))  # its worktree is gone
    # Cached per base commit and command: asked again, nothing runs.
    (log,) = ws.runs.glob("pytest-baseline-*.log")
    log.unlink()
    again = await baseline(ws, base, cache, "python -m pytest", LIMITS)
    assert again.passed == ["tests.test_app::test_greet"] and not log.exists()


async def test_a_test_that_passed_on_the_base_and_fails_now_is_a_regression(
    tmp_path: Path,
) -> None:
    ws, base = _workspace(tmp_path, {"app.py": APP, "tests/test_app.py": APP_TEST})
    broken = APP.replace('f"Hello, {name}!"', 'f"Bye, {name}!"')
    ws.write([SourceFile(path="app.py", content=broken)], "attempt 1")
    report = await run_tests(ws, 1, LIMITS)
    measured = compare(report, await baseline(ws, base, tmp_path / "c", "python -m pytest", LIMITS))
    assert not measured.passed and measured.regressions == ["tests.test_app::test_greet"]
    assert measured.failures[0].message.startswith("regression (it passed on the base): ")


async def test_the_projects_own_command_runs_and_its_exit_status_decides(tmp_path: Path) -> None:
    ws, _ = _workspace(tmp_path, {"check.py": "import sys\nsys.exit(len(sys.argv) - 1)\n"})
    ok = await run_tests(ws, 1, LIMITS, command="python check.py")
    assert ok.passed and ok.command == "python check.py" and "exited 0" in ok.summary
    failing = await run_tests(ws, 2, LIMITS, command="python check.py one two")
    assert not failing.passed and failing.failures[0].test == "(test run)"
    assert "`python check.py one two` exited 2" in failing.failures[0].message
    narrowed = await run_tests(ws, 3, LIMITS, command="python -m pytest -k nothing")
    assert not narrowed.passed and "no tests were collected" in narrowed.failures[0].message


def test_static_checks_count_only_what_the_build_introduced() -> None:
    before = "tests/test_old.py:2:12: PLR0133 Two constants compared\nFound 1 error."
    moved = "tests/test_old.py:4:12: PLR0133 Two constants compared\nFound 1 error."
    assert introduced(moved, before) == "ok"  # the same problem, moved down by an edit
    new = moved + "\nfeature.py:1:1: F401 `os` imported but unused\nFound 2 errors."
    assert introduced(new, before) == "feature.py:1:1: F401 `os` imported but unused"
    assert introduced("ok", before) == "ok"
    assert introduced("feature.py:1:1: F401 `os` imported but unused", "ok") != "ok"


RESERVES = """import mmap


def test_reserves_much_and_uses_little():
    reserved = mmap.mmap(-1, 3 * 1024**3)  # address space, never touched
    reserved[:4] = b"used"
    assert reserved[:4] == b"used"
"""
USES_TOO_MUCH = """def test_uses_more_than_it_may():
    held = bytearray(600 * 1024**2)
    assert len(held)
"""


async def test_memory_is_held_by_what_a_run_uses_and_running_out_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a memory cgroup, a suite that reserves much address space and uses little runs,
    and one that uses more than its limit is killed and told so by name; without one (the
    rlimit on address space), the reservation alone fails, and says so too."""
    if not any("memory" in place.controls for place in cgroups.places()):
        pytest.skip("no memory cgroup can be made here")
    files = {"tests/test_reserves.py": RESERVES, "tests/test_too_much.py": USES_TOO_MUCH}
    ws, _ = _workspace(tmp_path, files)
    limits = Limits(60, 512)
    report = await run_tests(ws, 1, limits)
    assert "512 MB of memory (a memory cgroup" in report.sandbox
    assert [f.test for f in report.failures][:1] == ["(test run)"], report.failures
    assert "out of memory at its limit of 512 MB (TEST_MEMORY_MB" in report.failures[0].message
    assert "killed for memory" in report.failures[0].message
    ws.write([SourceFile(path="tests/test_too_much.py", content="")], "attempt 2")
    fits = await run_tests(ws, 2, limits)
    assert fits.passed and "MB used at most)" in fits.sandbox, fits.sandbox
    monkeypatch.setattr(cgroups, "make", lambda processes, memory: None)
    rlimited = await run_tests(ws, 3, limits)
    assert not rlimited.passed and "address space per process" in rlimited.sandbox
    assert "TEST_MEMORY_MB" in rlimited.failures[0].message
