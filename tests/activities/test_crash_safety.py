"""What a killed or cancelled activity leaves behind: no test run still going beside its retry,
no half-made workspace that fails every retry (found by `python -m chaos kill-worker`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

from activities.repository.workspace import GIT_ENV, Workspace
from activities.sandbox.runs import Limits, run_limited


def running(marker: str) -> list[int]:
    """The host's live processes whose command line holds `marker` (a sandboxed run has pids
    of its own namespace, so a run is found by what it runs, not by the pid it sees)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() not in (entry / "cmdline").read_bytes():
                continue
            if (entry / "stat").read_text().split()[2] != "Z":  # a zombie is dead too
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def until_gone(marker: str, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not running(marker):
            return True
        await asyncio.sleep(0.05)
    return False


def sleeper(started: Path) -> str:
    """A run that says it started, then sleeps; its text is unique, so it can be found."""
    return (
        f"import time; open({str(started)!r}, 'w').write('started'); "
        f"time.sleep(60)  # {uuid.uuid4().hex}"
    )


async def test_a_cancelled_run_takes_its_process_group_with_it(tmp_path: Path):
    pid_file = tmp_path / "pid"
    script = sleeper(pid_file)
    run = asyncio.create_task(
        run_limited(
            [sys.executable, "-c", script], cwd=tmp_path, limits=Limits(60, 256), scratch=tmp_path
        )
    )
    async with asyncio.timeout(10):
        while not pid_file.exists() or not pid_file.read_text():  # noqa: ASYNC110 (a file)
            await asyncio.sleep(0.05)
    assert running(script)
    run.cancel()  # what a heartbeat timeout or a cancelled build does to the activity
    with contextlib.suppress(asyncio.CancelledError):
        await run
    assert await until_gone(script), "the test run outlived its cancelled activity"


def test_a_run_dies_with_a_killed_worker(tmp_path: Path):
    """kill -9 of the worker process: its test run does not go on beside the retry."""
    pid_file = tmp_path / "pid"
    child = sleeper(pid_file)
    worker = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from activities.sandbox.runs import Limits, run_limited
        asyncio.run(run_limited([sys.executable, "-c", {child!r}], cwd=Path({str(tmp_path)!r}),
                                limits=Limits(60, 256), scratch=Path({str(tmp_path)!r})))
    """)
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", worker], cwd=root)
    try:
        deadline = time.monotonic() + 20
        while (not pid_file.exists() or not pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running(child)
    finally:
        proc.kill()  # SIGKILL: no cleanup code of the worker runs
        proc.wait()
    assert asyncio.run(until_gone(child)), "the test run outlived its killed worker"


def test_a_workspace_half_made_by_a_killed_worker_is_made_again(tmp_path: Path):
    ws = Workspace(tmp_path / "build")
    # What the old code left when killed between `git init` and the first commit.
    ws.repo.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(ws.repo)], check=True, env=GIT_ENV)
    first = ws.checkout(None)
    assert ws.head() == first and ws.git("log", "--format=%s") == "workspace created"


def test_creating_a_workspace_leaves_no_staging_folder_and_is_idempotent(tmp_path: Path):
    ws = Workspace(tmp_path / "build")
    ws.repo.mkdir(parents=True)  # an empty folder left by a crash is replaced
    ws.ensure()
    first = ws.head()
    ws.ensure()
    assert ws.head() == first
    assert sorted(p.name for p in ws.root.iterdir()) == ["repo", "runs"]
