"""A real test run of a workspace: the project's test command in a limited subprocess; with
pytest (the default), results per test from JUnit XML. A baseline run of the build's base
commit tells failures that were already there from the build's own."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

from pydantic import BaseModel

from activities.sandbox import Limits, run_limited
from activities.workspace import Workspace
from core.role_io import TestFailure, TestReport

DEFAULT_COMMAND = "python -m pytest"
PYTEST_CONFIGS = ("pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini")
MAX_FAILURES = 20
MESSAGE_CHARS = 500
RUN = "(test run)"  # the name of a failure of the run itself, not of one test
# pytest's exit codes that are not "some tests failed" (1): say what happened instead.
EXIT_MEANINGS = {
    2: "the run was interrupted",
    3: "pytest hit an internal error",
    4: "pytest could not be started as asked (bad arguments or configuration)",
    5: "no tests were collected",
}


def _pytest_args(command: str) -> list[str] | None:
    """The arguments after pytest's own, if `command` runs pytest; None if it does not."""
    argv = shlex.split(command)
    if argv[:3] in (["python", "-m", "pytest"], ["python3", "-m", "pytest"]):
        return argv[3:]
    if argv[:1] == ["pytest"]:
        return argv[1:]
    return None


def _argv(repo: Path, runs: Path, junit: Path, command: str) -> list[str]:
    """What to run: pytest with a JUnit report (and the project's own arguments), or the
    project's command as it is (`python` is this interpreter)."""
    runs.mkdir(parents=True, exist_ok=True)
    junit.unlink(missing_ok=True)
    extra = _pytest_args(command)
    if extra is None:
        argv = shlex.split(command)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        return argv
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    if not any((repo / name).exists() for name in PYTEST_CONFIGS):
        # Keep pytest from adopting a configuration found above the workspace.
        empty = runs / "pytest.ini"
        empty.write_text("[pytest]\n")
        argv += ["-c", str(empty), "--rootdir", str(repo)]
    return argv + extra


async def run_command(
    repo: Path,
    runs: Path,
    name: str,
    command: str,
    limits: Limits,
    beat: Callable[[str], None] | None = None,
) -> TestReport:
    """Run the test command in `repo`; reports and logs go to `runs` as `<name>.xml|.log`."""
    junit, log = runs / f"junit-{name}.xml", runs / f"pytest-{name}.log"
    argv = await asyncio.to_thread(_argv, repo, runs, junit, command)
    run = await run_limited(
        argv, cwd=repo, limits=limits, home=runs / "home", beat=beat, writable=[runs]
    )
    await asyncio.to_thread(log.write_text, run.output)
    tests, failures = await asyncio.to_thread(parse_junit, junit)
    pytest = _pytest_args(command) is not None
    if run.timed_out:
        failures.insert(
            0,
            TestFailure(
                test=RUN,
                message=f"killed at the {limits.wall_seconds:.0f}s time limit: a test hangs "
                "or is too slow",
            ),
        )
    elif pytest and (run.returncode in EXIT_MEANINGS or (run.returncode != 0 and not failures)):
        meaning = EXIT_MEANINGS.get(run.returncode, f"pytest exited {run.returncode}")
        failures.append(TestFailure(test=RUN, message=f"{meaning}: {_last(run.output)}"))
    elif not pytest and run.returncode != 0:
        failures.append(
            TestFailure(
                test=RUN, message=f"`{command}` exited {run.returncode}: {_last(run.output)}"
            )
        )
    passed = not failures and run.ok and (tests > 0 or not pytest)
    summary = (
        f"{tests - _failed_tests(failures)} of {tests} tests passed in {run.seconds:.1f}s."
        if pytest
        else f"`{command}` exited {run.returncode} in {run.seconds:.1f}s."
    )
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
        command=command,
        sandbox=run.sandbox,
    )


async def run_tests(
    ws: Workspace,
    attempt: int,
    limits: Limits,
    beat: Callable[[str], None] | None = None,
    command: str = DEFAULT_COMMAND,
) -> TestReport:
    return await run_command(ws.repo, ws.runs, f"testing-{attempt}", command, limits, beat)


async def baseline(
    ws: Workspace,
    base: str,
    cache: Path,
    command: str,
    limits: Limits,
    beat: Callable[[str], None] | None = None,
) -> Baseline:
    """The test command's results on `base`, run once per base commit and command (cached in
    `cache`), in a worktree of its own beside the build's."""
    key = cache / f"{base}-{hashlib.sha256(command.encode()).hexdigest()[:12]}.json"
    if cached := await asyncio.to_thread(_read, key):
        return cached
    tree = await asyncio.to_thread(ws.add_worktree, base, "baseline")
    try:
        name = f"baseline-{base[:12]}"
        report = await run_command(tree, ws.runs, name, command, limits, beat)
        junit = ws.runs / f"junit-{name}.xml"
        passed = await asyncio.to_thread(passed_tests, junit)
    finally:
        await asyncio.to_thread(ws.drop_worktree, tree)
    result = Baseline(commit=base, report=report, passed=sorted(passed))
    if not report.timed_out:  # a slow machine's timeout says nothing about the base
        await asyncio.to_thread(_write, key, result)
    return result


def _read(key: Path) -> Baseline | None:
    return Baseline.model_validate_json(key.read_text()) if key.exists() else None


def _write(key: Path, result: Baseline) -> None:
    key.parent.mkdir(parents=True, exist_ok=True)
    tmp = key.with_name(f"{key.name}.{os.getpid()}.tmp")
    tmp.write_text(result.model_dump_json())
    tmp.replace(key)  # atomic: a reader sees the whole file or none


class Baseline(BaseModel):
    """A run of the test command on a build's base: its report, and the tests that passed."""

    commit: str
    report: TestReport
    passed: list[str]


def compare(report: TestReport, base: Baseline) -> TestReport:
    """The build's report with the failures that were there on the base already set apart
    (they do not fail the build), and each test that passed on the base and fails now named
    a regression."""
    failed_before = {f.test for f in base.report.failures if f.test != RUN}
    passed_before = set(base.passed)
    pre = [f for f in report.failures if f.test in failed_before]
    own = [f for f in report.failures if f.test not in failed_before]
    regressions = []
    for failure in own:
        if failure.test in passed_before:
            failure.message = f"regression (it passed on the base): {failure.message}"
            regressions.append(failure.test)
    summary = report.summary
    if pre:
        summary += f" {len(pre)} failed on the base already (not counted)."
    if regressions:
        summary += f" {len(regressions)} regressed: {', '.join(regressions[:5])}."
    return report.model_copy(
        update={
            "passed": not own and report.tests_run > 0 and not report.timed_out,
            "failures": own,
            "pre_existing": pre,
            "regressions": regressions,
            "summary": summary,
            "baseline": f"{base.commit[:10]}: {base.report.summary}",
        }
    )


def is_pytest(command: str) -> bool:
    return _pytest_args(command) is not None


def parse_junit(path: Path) -> tuple[int, list[TestFailure]]:
    """Tests run, and one TestFailure per failed or erroring test case."""
    cases = _cases(path)
    failures = [TestFailure(test=name, message=message) for name, message in cases if message]
    return len(cases), failures


def passed_tests(path: Path) -> set[str]:
    return {name for name, message in _cases(path) if message is None}


def _cases(path: Path) -> list[tuple[str, str | None]]:
    """Each test case that ran: its name, and its failure's message (None: it passed)."""
    if not path.exists():
        return []
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return []
    cases: list[tuple[str, str | None]] = []
    for case in root.iter("testcase"):
        if case.find("skipped") is not None:
            continue
        name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is None:
            cases.append((name, None))
        else:
            message = problem.get("message") or (problem.text or "").strip() or "failed"
            cases.append((name, message[:MESSAGE_CHARS]))
    return cases


def _failed_tests(failures: list[TestFailure]) -> int:
    return sum(1 for f in failures if f.test != RUN)


def _last(output: str, lines: int = 5) -> str:
    return " | ".join(line for line in output.strip().splitlines()[-lines:])[:MESSAGE_CHARS]
