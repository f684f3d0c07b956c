"""A real test run of a workspace: the project's test command in a limited subprocess; with
pytest (the default), results per test from JUnit XML. A baseline run of the build's base
commit tells failures that were already there from the build's own."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from pydantic import BaseModel

from activities import paths
from activities.repository.workspace import Workspace
from activities.sandbox.runs import Limits, run_limited
from activities.testing import environment
from core.role_io import RUN, TestFailure, TestReport

DEFAULT_COMMAND = "python -m pytest"
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


def _pytest_args(command: str) -> list[str] | None:
    """The arguments after pytest's own, if `command` runs pytest; None if it does not."""
    argv = shlex.split(command)
    if argv[:3] in (["python", "-m", "pytest"], ["python3", "-m", "pytest"]):
        return argv[3:]
    if argv[:1] == ["pytest"]:
        return argv[1:]
    return None


JUNIT = "junit.xml"
JUNIT_BYTES = 32 * 1024 * 1024  # a report larger than this is read this far (and fails to parse)


def _argv(repo: Path, out: Path, command: str, python: str) -> list[str]:
    """What to run: pytest writing a JUnit report into `out` (and the project's own
    arguments), or the project's command as it is (`python` is the run's interpreter). `out`
    is the run's new folder, so nothing in it was there before."""
    extra = _pytest_args(command)
    if extra is None:
        argv = shlex.split(command)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = python
        return argv
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={out / JUNIT}"]
    if not any(paths.exists_beneath(repo, name) for name in PYTEST_CONFIGS):
        # Keep pytest from adopting a configuration found above the workspace.
        paths.write_beneath(out, "pytest.ini", b"[pytest]\n")
        argv += ["-c", str(out / "pytest.ini"), "--rootdir", str(repo)]
    return argv + extra


def _write_log(log: Path, text: str) -> None:
    paths.write_beneath(log.parent, log.name, text.encode())


def _kept(out: Path, junit: Path) -> bool:
    """The run's JUnit report copied from its folder `out` to `junit`, where no run writes,
    read without following a link (a run may have left one in its place); whether there was
    one."""
    try:
        data = paths.read_beneath(out, JUNIT, JUNIT_BYTES)
    except paths.PathRefused:
        data = None
    if data is None:
        paths.unlink_beneath(junit.parent, junit.name)
        return False
    paths.write_beneath(junit.parent, junit.name, data)
    return True


@dataclass(frozen=True)
class SetupCommand:
    """A project's setup command, run once per workspace into an environment of its own at
    `root` before its first test run (activities/testing/environment.py)."""

    command: str
    root: Path
    network: bool = False


async def run_command(
    repo: Path,
    runs: Path,
    name: str,
    command: str,
    limits: Limits,
    beat: Callable[[str], None] | None = None,
    setup: SetupCommand | None = None,
) -> TestReport:
    """Run the test command in `repo` (after the setup command, if there is one and it has
    not run yet); reports and logs go to `runs` as `<name>.xml|.log`. `runs` is the worker's:
    the run writes its report in a new folder of its own, which the worker reads and removes."""
    junit, log = runs / f"junit-{name}.xml", runs / f"pytest-{name}.log"
    await asyncio.to_thread(runs.mkdir, parents=True, exist_ok=True)
    python, venv, ready = sys.executable, None, ""
    if setup is not None:
        made = await environment.prepare(
            repo, setup.root, setup.command, limits=limits, network=setup.network, beat=beat,
            scratch=runs,
        )  # fmt: skip
        ready = made.describe()
        if not made.ok:
            assert made.run is not None
            await asyncio.to_thread(_write_log, log, made.run.output)
            return _setup_failed(command, made, log)
        python, venv = str(made.environment.python), setup.root
    out = await asyncio.to_thread(paths.fresh, runs, f"{name}-")
    try:
        argv = await asyncio.to_thread(_argv, repo, out, command, python)
        run = await run_limited(
            argv,
            cwd=repo,
            limits=limits,
            scratch=runs,
            beat=beat,
            writable=[out],
            readonly=[venv] if venv else [],
            venv=venv,
        )
        await asyncio.to_thread(_kept, out, junit)
    finally:
        await asyncio.to_thread(paths.remove_tree, out)
    await asyncio.to_thread(_write_log, log, run.output)
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
    elif run.out_of_memory:
        failures.insert(
            0,
            TestFailure(
                test=RUN,
                message=f"the run was out of memory at its limit of {limits.memory_mb} MB "
                f"(TEST_MEMORY_MB; raise it for a suite that needs more): {_last(run.output)}",
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
        setup=ready,
    )


def _setup_failed(command: str, made: environment.Setup, log: Path) -> TestReport:
    """The report of a test run that did not start: its setup command failed."""
    assert made.run is not None
    what = made.describe()
    return TestReport(
        passed=False,
        summary=f"The setup command failed, so no tests ran: {what}.",
        tests_run=0,
        failures=[TestFailure(test=RUN, message=f"setup {what}: {setup_cause(made.run.output)}")],
        timed_out=made.run.timed_out,
        log=str(log),
        command=command,
        sandbox=made.run.sandbox,
        setup=what,
    )


async def run_tests(
    ws: Workspace,
    attempt: int,
    limits: Limits,
    beat: Callable[[str], None] | None = None,
    command: str = DEFAULT_COMMAND,
    setup: str = "",
    network: bool = False,
) -> TestReport:
    """The test command on the workspace's checked-out commit; a setup command prepares the
    workspace's environment first (once)."""
    prepared = SetupCommand(setup, ws.env, network) if setup.strip() else None
    name = f"testing-{attempt}"
    return await run_command(ws.repo, ws.runs, name, command, limits, beat, prepared)


async def baseline(
    ws: Workspace,
    base: str,
    cache: Path,
    command: str,
    limits: Limits,
    beat: Callable[[str], None] | None = None,
    setup: str = "",
    network: bool = False,
) -> Baseline:
    """The test command's results on `base`, run once per base commit and command (cached in
    `cache`), in a worktree of its own beside the build's, with an environment of its own if
    the project has a setup command (an editable install of the build's tree would test the
    build's code, not the base's)."""
    key = cache / f"{base}-{_digest(command, setup)}.json"
    if cached := await asyncio.to_thread(_read, key):
        return cached
    tree = await asyncio.to_thread(ws.add_worktree, base, "baseline")
    env = tree.with_name(f"{tree.name}-env")
    try:
        name = f"baseline-{base[:12]}"
        prepared = SetupCommand(setup, env, network) if setup.strip() else None
        report = await run_command(tree, ws.runs, name, command, limits, beat, prepared)
        junit = ws.runs / f"junit-{name}.xml"
        passed = await asyncio.to_thread(passed_tests, junit)
    finally:
        await asyncio.to_thread(ws.drop_worktree, tree)
        await asyncio.to_thread(environment.remove, env)
    result = Baseline(commit=base, report=report, passed=sorted(passed))
    if not report.timed_out:  # a slow machine's timeout says nothing about the base
        await asyncio.to_thread(_write, key, result)
    return result


def _digest(command: str, setup: str) -> str:
    key = command if not setup.strip() else f"{command}\n{setup}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


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
            text = (problem.text or "").strip()
            message = problem.get("message") or text or "failed"
            if message == "collection failure":  # pytest's words alone: say why
                errors = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
                message = f"{message}: {errors[-1] if errors else _last(text, 1)}"
            cases.append((name, message[:MESSAGE_CHARS]))
    return cases


_NETWORK_CAUSE = re.compile(
    r"SSLError|CERTIFICATE_VERIFY_FAILED|certificate verify failed|Temporary failure in name "
    r"resolution|Name or service not known|No address associated|Connection refused|"
    r"NewConnectionError|ProxyError"
)


def setup_cause(output: str) -> str:
    """Why a setup failed, from its output: pip's first `ERROR:` line, and the TLS, resolver or
    connection error behind it when one was printed (pip's retries say it, its last error
    may not); not the decoration at the output's end. Else its last lines."""
    lines = [line.strip() for line in output.splitlines()]
    error = next((line for line in lines if line.startswith("ERROR:")), "")
    network = next((line for line in lines if _NETWORK_CAUSE.search(line)), "")
    if network and network != error:
        cause = f"{error} (because: {network})" if error else network
    else:
        cause = error
    return cause[:MESSAGE_CHARS] if cause else _last(output)


def _failed_tests(failures: list[TestFailure]) -> int:
    return sum(1 for f in failures if f.test != RUN)


def _last(output: str, lines: int = 5) -> str:
    return " | ".join(line for line in output.strip().splitlines()[-lines:])[:MESSAGE_CHARS]
