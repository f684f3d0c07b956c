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
from pathlib import Path

from activities import paths
from activities.repository.workspace import Workspace
from activities.sandbox.runs import Limits, run_limited
from activities.testing import environment
from activities.testing.results import (
    MAX_FAILURES,
    MESSAGE_CHARS,
    Baseline,
    cases,
    counted,
    failed_tests,
    failures_of,
    last_lines,
    passed_tests,
)
from activities.testing.sealed import Sealed
from core.reports import RUN, TestFailure, TestReport

DEFAULT_COMMAND = "python -m pytest"
PYTEST_CONFIGS = ("pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini")
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


def _argv(
    repo: Path, out: Path, command: str, python: str, sealed: Sealed | None = None
) -> list[str]:
    """What to run: pytest writing a JUnit report into `out` (and the project's own
    arguments), or the project's command as it is (`python` is the run's interpreter). `out`
    is the run's new folder, so nothing in it was there before. `sealed`: pytest reads the
    configuration it gives, not the tree's (activities/testing/sealed.py)."""
    extra = _pytest_args(command)
    if extra is None:
        argv = shlex.split(command)
        if argv and argv[0] in ("python", "python3"):
            argv[0] = python
        return argv
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={out / JUNIT}"]
    config = sealed.config if sealed else None
    if config is None and not any(paths.exists_beneath(repo, name) for name in PYTEST_CONFIGS):
        config = ("pytest.ini", b"[pytest]\n")  # not one found above the workspace
    if config is not None:
        name, text = config
        paths.write_beneath(out, name, text)
        argv += ["-c", str(out / name), "--rootdir", str(repo)]
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


async def run_command(
    repo: Path,
    runs: Path,
    name: str,
    command: str,
    limits: Limits,
    beat: Callable[[str], None] | None = None,
    request: environment.Request | None = None,
    sealed: Sealed | None = None,
) -> TestReport:
    """Run the test command in `repo`, in the project's own environment (made first if it is
    not yet, activities/testing/environment.py); reports and logs go to `runs` as
    `<name>.xml|.log`. `runs` is the worker's: the run writes its report in a new folder of
    its own, which the worker reads and removes. No `request`: the worker's own interpreter
    (a static check's run, never a project's tests). `sealed`: hidden tests' run, on the tree
    read-only (activities/testing/sealed.py)."""
    made = None
    if request is not None:
        made = await environment.prepare(repo, request, limits=limits, scratch=runs, beat=beat)
    return await run_in(repo, runs, name, command, limits, beat, made, sealed)


async def run_in(
    repo: Path,
    runs: Path,
    name: str,
    command: str,
    limits: Limits,
    beat: Callable[[str], None] | None,
    made: environment.Made | None,
    sealed: Sealed | None = None,
) -> TestReport:
    """The test command in `repo` with the environment `made` (see run_command)."""
    junit, log = runs / f"junit-{name}.xml", runs / f"pytest-{name}.log"
    await asyncio.to_thread(runs.mkdir, parents=True, exist_ok=True)
    python, venv, ready, variables = sys.executable, None, "", {}
    if made is not None:
        ready = made.describe()
        if not made.ok:
            output = made.run.output if made.run is not None else made.problem
            await asyncio.to_thread(_write_log, log, output)
            return _setup_failed(command, made, log)
        env = made.environment
        python, venv = str(env.python), env.root
        await asyncio.to_thread(env.furnish, repo)
        if path := await asyncio.to_thread(env.pythonpath, repo):
            variables["PYTHONPATH"] = path
    out = await asyncio.to_thread(paths.fresh, runs, f"{name}-")
    try:
        argv = await asyncio.to_thread(_argv, repo, out, command, python, sealed)
        run = await run_limited(
            argv,
            cwd=repo,
            limits=limits,
            scratch=runs,
            beat=beat,
            write_cwd=sealed is None,
            writable=[out],
            readonly=[venv] if venv else [],
            venv=venv,
            env=variables,
        )
        await asyncio.to_thread(_kept, out, junit)
    finally:
        await asyncio.to_thread(paths.remove_tree, out)
    await asyncio.to_thread(_write_log, log, run.output)
    found = await asyncio.to_thread(cases, junit)
    failures, counts = failures_of(found), counted(found)
    tests = counts.run
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
                f"(TEST_MEMORY_MB; raise it for a suite that needs more): {last_lines(run.output)}",
            ),
        )
    elif pytest and (run.returncode in EXIT_MEANINGS or (run.returncode != 0 and not failures)):
        meaning = EXIT_MEANINGS.get(run.returncode, f"pytest exited {run.returncode}")
        failures.append(TestFailure(test=RUN, message=f"{meaning}: {last_lines(run.output)}"))
    elif not pytest and run.returncode != 0:
        failures.append(
            TestFailure(
                test=RUN, message=f"`{command}` exited {run.returncode}: {last_lines(run.output)}"
            )
        )
    passed = not failures and run.ok and (tests > 0 or not pytest)
    summary = (
        f"{counts.passed} of {tests} tests passed in {run.seconds:.1f}s."
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
        junit=str(junit) if found else None,
        log=str(log),
        command=command,
        sandbox=run.sandbox,
        setup=ready,
        counts=counts,
    )


SETUP_HELP = (
    "This is the project's environment, not its code: no Code Writer attempt follows. What "
    "changes it: SANDBOX_SETUP_NETWORK=true on the worker (its setup then reaches the package "
    "index through the worker), the project's setup command (`starter.py project add ID REPO "
    "--setup-command '...'`, for new builds), or the package index the worker's pip is "
    "configured with."
)


def _setup_failed(command: str, made: environment.Made, log: Path) -> TestReport:
    """The report of a test run that did not start: its environment could not be made."""
    what = made.describe()
    if made.run is not None:
        network = "" if "host's network" in made.run.sandbox else "\nIt ran without network."
        cause = (
            f"{setup_cause(made.run.output)}\n--- the end of its output ---\n"
            f"{_tail(made.run.output)}{network}"
        )
    else:
        cause = made.problem
    return TestReport(
        passed=False,
        summary=f"The project's environment could not be made, so no tests ran: {what}.",
        tests_run=0,
        failures=[TestFailure(test=RUN, message=f"setup: {what}:\n{cause}\n{SETUP_HELP}")],
        timed_out=made.run.timed_out if made.run is not None else False,
        log=str(log),
        command=command,
        sandbox=made.run.sandbox if made.run is not None else "",
        setup=what,
        setup_failed=True,
    )


async def run_tests(
    ws: Workspace,
    attempt: int,
    limits: Limits,
    beat: Callable[[str], None] | None = None,
    command: str = DEFAULT_COMMAND,
    request: environment.Request | None = None,
) -> TestReport:
    """The test command on the workspace's checked-out commit, in the project's environment."""
    name = f"testing-{attempt}"
    return await run_command(ws.repo, ws.runs, name, command, limits, beat, request)


async def baseline(
    ws: Workspace,
    base: str,
    cache: Path,
    command: str,
    limits: Limits,
    beat: Callable[[str], None] | None = None,
    request: environment.Request | None = None,
) -> Baseline:
    """The test command's results on `base`, run once per base commit, command and
    environment (cached in `cache`), in a checkout of its own with its git data (a project
    versioned from its tags builds there too) and the environment of the base's own
    dependency files."""
    tree = await asyncio.to_thread(ws.clone_at, base, "baseline")
    try:
        made = None
        if request is not None:
            made = await environment.prepare(
                tree, request, limits=limits, scratch=ws.runs, beat=beat
            )
        made_key = made.environment.key if made is not None and made.ok else "none"
        key = cache / f"{base}-{_digest(command, made_key)}.json"
        if cached := await asyncio.to_thread(_read, key):
            return cached
        name = f"baseline-{base[:12]}"
        report = await run_in(tree, ws.runs, name, command, limits, beat, made)
        junit = ws.runs / f"junit-{name}.xml"
        passed = await asyncio.to_thread(passed_tests, junit)
        failed = await asyncio.to_thread(failed_tests, junit)
    finally:
        await asyncio.to_thread(paths.remove_tree, tree)
    result = Baseline(commit=base, report=report, passed=sorted(passed), failed=sorted(failed))
    if not report.timed_out and not report.setup_failed:  # neither says anything of the base
        await asyncio.to_thread(_write, key, result)
    return result


def _digest(command: str, environment_key: str) -> str:
    return hashlib.sha256(f"{command}\n{environment_key}".encode()).hexdigest()[:12]


def _read(key: Path) -> Baseline | None:
    return Baseline.model_validate_json(key.read_text()) if key.exists() else None


def _write(key: Path, result: Baseline) -> None:
    key.parent.mkdir(parents=True, exist_ok=True)
    tmp = key.with_name(f"{key.name}.{os.getpid()}.tmp")
    tmp.write_text(result.model_dump_json())
    tmp.replace(key)  # atomic: a reader sees the whole file or none


def is_pytest(command: str) -> bool:
    return _pytest_args(command) is not None


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
    return cause[:MESSAGE_CHARS] if cause else last_lines(output)


SETUP_TAIL_CHARS = 2000


def _tail(output: str, lines: int = 20) -> str:
    """The end of a setup's output, whole lines (what pip said last is why it stopped)."""
    return "\n".join(output.strip().splitlines()[-lines:])[-SETUP_TAIL_CHARS:]
