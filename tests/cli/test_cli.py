"""The entry points as a person runs them: starter.py and worker.py in their own processes."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from core.build_io import BuildStatus
from core.settings import Settings
from tests.helpers import ROOT, env_for, fields, make_request, run, start, wait_until
from workflows.build import BuildWorkflow

pytestmark = pytest.mark.slow  # starter.py and worker.py as processes of their own


# A host that refuses namespaces (a container runtime's default): in a user namespace of its
# own that may make no more of them, and with no capabilities, bwrap cannot start.
NO_NAMESPACES = (
    "unshare", "--user", "--map-root-user", "sh", "-c",
    'echo 0 > /proc/sys/user/max_user_namespaces && '
    'exec setpriv --bounding-set=-all --inh-caps=-all "$@"', "sh",
)  # fmt: skip


async def worker_process(
    settings: Settings, tmp_path: Path, *wrapper: str, **env: str
) -> asyncio.subprocess.Process:
    """worker.py as a process of its own (run by `wrapper`, if given), its output on one
    pipe."""
    return await asyncio.create_subprocess_exec(
        *wrapper,
        sys.executable,
        str(ROOT / "worker.py"),
        cwd=tmp_path,
        env={**env_for(settings), **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


def fresh() -> str:
    """A project of the build's own: a project's registry runs on the task queue that first
    started it, and every test has a task queue of its own."""
    return f"cli-{uuid.uuid4().hex[:8]}"


@pytest.mark.usefixtures("worker")
async def test_start_follows_to_complete_and_exits_0(settings: Settings, tmp_path: Path):
    build = f"cli{uuid.uuid4().hex[:8]}"
    code, out = await run(
        "starter.py",
        "start",
        "-p",
        fresh(),
        "-r",
        '{"feature": "Dark mode", "priority": "high"}',
        "--build-id",
        build,
        "--simulate",
        "tests_fail_once",
        settings=settings,
        cwd=tmp_path,
    )
    assert code == 0, out
    assert f"workflow id build-{build}" in out
    assert f"http://localhost:8233/namespaces/default/workflows/build-{build}" in out
    assert "loop   tests failed: tests.test_dark_mode::test_toggle_twice_restores" in out
    assert f"build {build} COMPLETE" in out

    code, out = await run("starter.py", "compare", build, "--json", settings=settings, cwd=tmp_path)
    assert code == 0, out
    (card,) = json.loads(out)
    assert (card["build_id"], card["outcome"], card["loop_backs"]) == (
        build,
        "complete",
        {"tests failed": 1},
    )
    assert card["roles"]["code_writer"]["calls"] == 2
    code, out = await run("starter.py", "compare", build, settings=settings, cwd=tmp_path)
    assert code == 0 and "score cards" in out and "tests failed" in out, out
    code, out = await run("starter.py", "compare", build, "nosuch", settings=settings, cwd=tmp_path)
    assert code == 1 and "the mirror has no build build-nosuch" in out, out

    code, out = await run(
        "starter.py",
        "start",
        "-p",
        fresh(),
        "-r",
        "again",
        "--build-id",
        build,
        settings=settings,
        cwd=tmp_path,
    )
    assert code == 1 and "already exists" in out


@pytest.mark.usefixtures("worker")
async def test_failed_build_exits_1_with_the_reason(settings: Settings, tmp_path: Path):
    code, out = await run(
        "starter.py",
        "start",
        "-p",
        fresh(),
        "-r",
        "Export to CSV",
        "--simulate",
        "tests_always_fail",
        "--max-retries",
        "1",
        settings=settings,
        cwd=tmp_path,
    )
    assert code == 1, out
    assert "FAILED" in out and "retries exhausted" in out


async def started(handle: WorkflowHandle) -> bool:
    try:
        await handle.describe()
    except RPCError as err:
        if err.status is RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


@pytest.mark.usefixtures("worker")
async def test_steer_a_gated_build_from_the_command_line(
    client: Client, settings: Settings, tmp_path: Path
):
    build = f"cli{uuid.uuid4().hex[:8]}"
    args = (
        "start",
        "-p",
        fresh(),
        "-r",
        "Dark mode",
        "--build-id",
        build,
        "--gate",
        "handoff_to_tester",
        "--wait",  # through the gate: the approval below comes from another process
    )
    following = asyncio.create_task(run("starter.py", *args, settings=settings, cwd=tmp_path))
    handle = client.get_workflow_handle_for(BuildWorkflow.run, f"build-{build}")
    for _ in range(150):  # the follower's process starts the build
        if await started(handle):
            break
        await asyncio.sleep(0.2)
    await wait_until(handle, lambda s: s.waiting_for is not None)

    code, out = await run("starter.py", "status", build, "--json", settings=settings, cwd=tmp_path)
    assert code == 0
    status = BuildStatus.model_validate(json.loads(out))
    assert status.waiting_for == "approval at handoff_to_tester" and status.progress == 40
    code, out = await run("starter.py", "status", build, settings=settings, cwd=tmp_path)
    assert code == 0 and f"starter.py approve {build}" in out  # what to type, said
    usage = out[out.index("model usage per role") :]
    assert re.search(r"q_assistant\s+│\s+2\s+│\s+2\s+│\s+[\d,]+\s+│\s+[\d,]+\s+│\s+\$0\.", usage)
    assert re.search(r"code_writer\s+│\s+1\s+│", usage) and ".0 " not in usage

    code, out = await run(
        "starter.py",
        "rollback",
        build,
        "--to",
        "verification",
        "-m",
        "x",
        settings=settings,
        cwd=tmp_path,
    )
    assert code == 1 and "refused: cannot roll back forward" in out
    # Following without --wait returns at the gate, with what goes on, and an exit code of its own.
    code, out = await run("starter.py", "follow", build, settings=settings, cwd=tmp_path)
    assert code == 3 and f"waits for you: starter.py approve {build}" in out, out
    assert f"starter.py follow {build}" in out

    code, out = await run(
        "starter.py", "approve", f"build-{build}", settings=settings, cwd=tmp_path
    )
    assert code == 0 and "approve accepted: handoff_to_tester -> testing" in out
    await handle.result()
    code, out = await following
    assert code == 0 and f"build {build} started" in out
    assert out.count(f"waiting for you: starter.py approve {build}") == 1, out

    code, out = await run(
        "starter.py", "retry", build, "-m", "late", settings=settings, cwd=tmp_path
    )
    assert code == 1 and "has finished" in out
    code, out = await run("starter.py", "events", build, settings=settings, cwd=tmp_path)
    assert code == 0 and "approved gate=handoff_to_tester" in out
    assert re.search(r"done   released v\d+\.\d+\.0 \([0-9a-f]{10} on the branch\)", out), out
    assert "open   " in out and f"working on build/{build}" in out


async def test_bad_input_gets_a_clear_error(settings: Settings, tmp_path: Path):
    code, out = await run(
        "starter.py", "start", "-p", fresh(), "-r", "  ", settings=settings, cwd=tmp_path
    )
    assert code == 2 and "requirements must not be empty" in out
    code, out = await run(
        "starter.py",
        "start",
        "-p",
        fresh(),
        "-r",
        "x",
        "--gate",
        "testing",
        settings=settings,
        cwd=tmp_path,
    )
    words = " ".join(out.split())  # the gates that exist, named
    assert code == 2 and "'testing' is not one of 'handoff_to_coder', 'handoff_to_tester'" in words
    code, out = await run("starter.py", "status", "nope-123", settings=settings, cwd=tmp_path)
    assert code == 1 and "no build nope-123" in out
    # A refused value is one sentence naming the field and its rule in words.
    args = ("start", "-p", "Not a project!", "-r", "x", "--build-id", "x y", "--max-retries", "-1")
    code, out = await run("starter.py", *args, settings=settings, cwd=tmp_path)
    words = " ".join(out.split())
    assert code == 2 and "max_retries must be greater than or equal to 0 (-1 given)" in words
    code, out = await run("starter.py", *args[:-2], settings=settings, cwd=tmp_path)
    words = " ".join(out.split())
    assert code == 2 and "project_id takes letters, digits" in words and "('x y' given)" in words
    assert "pydantic" not in words and "^[" not in words and "validation error for" not in words
    # The same rules at every door, and nothing started when input is refused.
    code, out = await run("starter.py", "project", "add", "Bad Name!", "/x", settings=settings,
                          cwd=tmp_path)  # fmt: skip
    words = " ".join(out.split())
    assert code == 2 and "'Bad Name!': a project id is letters, digits" in words, out
    code, out = await run("starter.py", "model-output", "nosuch1", settings=settings, cwd=tmp_path)
    assert code == 1 and "no build nosuch1" in out and "Traceback" not in out, out


async def start_without_following(settings: Settings, tmp_path: Path) -> tuple[int, str]:
    """`starter.py start --no-follow` of a build of a project of its own; exit code, output."""
    args = ("start", "-p", fresh(), "-r", "x", "--no-follow")
    return await run("starter.py", *args, settings=settings, cwd=tmp_path)


async def test_start_without_a_worker_warns_and_returns(settings: Settings, tmp_path: Path):
    code, out = await start_without_following(settings, tmp_path)
    assert code == 0 and "started" in out
    assert f"no worker polls task queue {settings.temporal_task_queue}" in out


@pytest.mark.usefixtures("worker")
async def test_start_with_a_worker_does_not_warn(settings: Settings, tmp_path: Path):
    code, out = await start_without_following(settings, tmp_path)
    assert code == 0 and "no worker" not in out


async def test_help_for_every_command(settings: Settings, tmp_path: Path):
    commands = ("start", "follow", "status", "events", "retry", "rollback", "approve", "top-up",
                "abort")  # fmt: skip
    helps = await asyncio.gather(  # at once: each is an interpreter's start-up, mostly waiting
        *(run("starter.py", c, "--help", settings=settings, cwd=tmp_path) for c in commands),
        run("worker.py", "--help", settings=settings, cwd=tmp_path),
        run("api/__main__.py", "--help", settings=settings, cwd=tmp_path),
    )
    for command, (code, out) in zip(commands, helps, strict=False):
        assert code == 0 and "Usage" in out, (command, out)
    code, out = helps[-2]
    assert code == 0 and "SIGTERM" in out
    code, out = helps[-1]
    assert code == 0 and "OpenAPI page at /docs" in out and "API_PORT" in out


async def test_worker_runs_builds_and_stops_cleanly_on_sigterm(
    client: Client, settings: Settings, tmp_path: Path
):
    proc = await worker_process(settings, tmp_path)
    try:
        handle = await start(client, settings, make_request())
        async with asyncio.timeout(60):
            result = await handle.result()
        assert result.state.value == "complete"
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    log = out.decode()
    assert proc.returncode == 0, log
    assert re.search(rf"worker-{proc.pid}@\S+ polling ", log) and "worker stopped" in log
    expected = {"auto": "bubblewrap", "bubblewrap": "bubblewrap", "landlock": "landlock"}
    assert f"sandbox (SANDBOX={settings.sandbox}): {expected[settings.sandbox]} " in log


async def test_without_namespaces_the_worker_falls_back_to_landlock_and_builds(
    client: Client, settings: Settings, tmp_path: Path
):
    proc = await worker_process(settings, tmp_path, *NO_NAMESPACES, SANDBOX="auto")
    try:
        handle = await start(client, settings, make_request(project=fresh()))
        async with asyncio.timeout(90):
            result = await handle.result()
        assert result.state.value == "complete"
        events = await handle.query(BuildWorkflow.event_log)
        [tested] = [e for e in events if e.event_type.value == "role_call" and e.state.value ==
                    "testing"]  # fmt: skip
        assert fields(tested)["sandbox"].startswith("landlock ABI ")
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            out, _ = await proc.communicate()
    log = out.decode()
    assert proc.returncode == 0, log
    assert "sandbox (SANDBOX=auto): landlock ABI " in log


async def test_the_worker_refuses_to_start_without_the_sandbox_it_was_told_to_use(
    settings: Settings, tmp_path: Path
):
    proc = await worker_process(settings, tmp_path, *NO_NAMESPACES, SANDBOX="bubblewrap")
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode == 1, out
    assert "SANDBOX=bubblewrap: bwrap cannot make its namespaces here: " in out.decode()


async def test_start_follows_until_a_worker_appears(
    client: Client, settings: Settings, engine, tmp_path: Path
):

    from tests.helpers import running_worker

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "starter.py"),
        "start",
        "-p",
        fresh(),
        "-r",
        "Dark mode",
        cwd=tmp_path,
        env=env_for(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    seen = b""
    async with asyncio.timeout(60):  # the build waits for a worker; the starter keeps following
        while b"no worker polls task queue" not in seen:
            line = await proc.stdout.readline()
            assert line, f"the starter ended early: {seen.decode()}"
            seen += line
    assert proc.returncode is None
    async with running_worker(client, settings, engine), asyncio.timeout(60):
        rest, _ = await proc.communicate()
    assert proc.returncode == 0, (seen + rest).decode()
    assert "COMPLETE" in rest.decode()


async def test_unreachable_temporal_is_one_clear_line(settings: Settings, tmp_path: Path):
    nowhere = settings.model_copy(update={"temporal_address": "127.0.0.1:1"})
    for script, args in (("starter.py", ("status", "b1")), ("worker.py", ())):
        code, out = await run(script, *args, settings=nowhere, cwd=tmp_path)
        assert code == 1, out
        assert "cannot reach Temporal at 127.0.0.1:1" in out and "Traceback" not in out


def test_a_test_runs_event_line_says_its_counts_and_its_environment():
    from datetime import UTC, datetime

    from cli.follow import event_line
    from core.events import RoleCalled
    from core.mirror import BuildEvent
    from core.reports import TestCounts
    from core.states import BuildState

    counts = TestCounts(passed=1991, failed=1, errors=0, pre_existing=2, skipped=25)
    made = "environment 514e from the setup command `x`: reused (no setup ran)"
    data = RoleCalled(model="m", prompt_version="p/1", attempt=1, prompt_tokens=700,
                      completion_tokens=26, latency_ms=1511, tests=counts,
                      environment=made)  # fmt: skip
    event = BuildEvent(seq=13, state=BuildState.TESTING, triggered_by="test_auditor", data=data,
                       timestamp=datetime.now(UTC))  # fmt: skip
    assert event_line(event) == (
        "call   test_auditor attempt 1 (700+26 tokens, 1511 ms); tests 1,994 run: 1,991 "
        "passed, 1 failed, 2 pre-existing, 0 errors, 25 skipped; environment reused (no setup ran)"
    )


async def test_a_final_status_query_a_worker_failed_once_is_asked_again(
    monkeypatch: pytest.MonkeyPatch,
):
    """On a starved machine, a query that replays an ended build can pass the SDK's 2 s
    deadlock limit (WorkflowQueryFailedError); `start` printed a traceback and exited 1 for a
    build that had completed."""
    from temporalio.client import WorkflowQueryFailedError

    from cli import follow
    from cli.follow import _final_status
    from client.errors import NoAnswer

    monkeypatch.setattr(follow, "FINAL_QUERY_WAIT", 0.0)

    done = object()  # the status the worker answers

    class Flaky:
        def __init__(self, failures: int) -> None:
            self.failures = failures

        async def query(self, *_: object) -> object:
            if self.failures:
                self.failures -= 1
                raise WorkflowQueryFailedError("Potential deadlock detected")
            return done

    assert await _final_status(Flaky(1)) == done  # type: ignore[arg-type]
    with pytest.raises(NoAnswer, match="Potential deadlock detected"):
        await _final_status(Flaky(99))  # type: ignore[arg-type]
