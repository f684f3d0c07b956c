"""A real test run of a workspace: pytest in a limited subprocess, results from JUnit XML."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

from activities.sandbox import Limits, run_limited
from activities.workspace import Workspace
from core.role_io import TestFailure, TestReport

PYTEST_CONFIGS = ("pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini")
MAX_FAILURES = 20
MESSAGE_CHARS = 500
# pytest's exit codes that are not "some tests failed" (1): say what happened instead.
EXIT_MEANINGS = {
    2: "the run was interrupted",
    3: "pytest hit an internal error",
    4: "pytest could not be started as asked (bad arguments or configuration)",
    5: "no tests were collected",
}


def _pytest_argv(ws: Workspace, junit: Path) -> list[str]:
    ws.runs.mkdir(parents=True, exist_ok=True)
    junit.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    if not any((ws.repo / name).exists() for name in PYTEST_CONFIGS):
        # Keep pytest from adopting a configuration found above the workspace.
        empty = ws.runs / "pytest.ini"
        empty.write_text("[pytest]\n")
        argv += ["-c", str(empty), "--rootdir", str(ws.repo)]
    return argv


async def run_tests(
    ws: Workspace, attempt: int, limits: Limits, beat: Callable[[str], None] | None = None
) -> TestReport:
    junit = ws.runs / f"junit-testing-{attempt}.xml"
    log = ws.runs / f"pytest-testing-{attempt}.log"
    argv = await asyncio.to_thread(_pytest_argv, ws, junit)
    run = await run_limited(argv, cwd=ws.repo, limits=limits, home=ws.runs / "home", beat=beat)
    await asyncio.to_thread(log.write_text, run.output)
    tests, failures = await asyncio.to_thread(parse_junit, junit)
    if run.timed_out:
        failures.insert(
            0,
            TestFailure(
                test="(test run)",
                message=f"killed at the {limits.wall_seconds:.0f}s time limit: a test hangs "
                "or is too slow",
            ),
        )
    elif run.returncode in EXIT_MEANINGS or (run.returncode != 0 and not failures):
        meaning = EXIT_MEANINGS.get(run.returncode, f"pytest exited {run.returncode}")
        failures.append(TestFailure(test="(test run)", message=f"{meaning}: {_last(run.output)}"))
    passed = not failures and tests > 0 and run.ok
    summary = f"{tests - _failed_tests(failures)} of {tests} tests passed in {run.seconds:.1f}s."
    if run.timed_out:
        summary = f"Test run killed after {limits.wall_seconds:.0f}s. {summary}"
    return TestReport(
        passed=passed,
        summary=summary,
        tests_run=tests,
        failures=failures[:MAX_FAILURES],
        timed_out=run.timed_out,
        junit=str(junit) if tests else None,
        log=str(log),
    )


def parse_junit(path: Path) -> tuple[int, list[TestFailure]]:
    """Tests run, and one TestFailure per failed or erroring test case."""
    if not path.exists():
        return 0, []
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return 0, []
    tests = 0
    failures: list[TestFailure] = []
    for case in root.iter("testcase"):
        if case.find("skipped") is not None:
            continue
        tests += 1
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
            message = problem.get("message") or (problem.text or "").strip()
            failures.append(TestFailure(test=name, message=message[:MESSAGE_CHARS]))
    return tests, failures


def _failed_tests(failures: list[TestFailure]) -> int:
    return sum(1 for f in failures if f.test != "(test run)")


def _last(output: str, lines: int = 5) -> str:
    return " | ".join(line for line in output.strip().splitlines()[-lines:])[:MESSAGE_CHARS]
