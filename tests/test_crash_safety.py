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
from pathlib import Path

from activities.sandbox import Limits, run_limited
from activities.workspace import GIT_ENV, Workspace


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (its parent has not reaped it yet).
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


async def until_gone(pid: int, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_cancelled_run_takes_its_process_group_with_it(tmp_path: Path):
    pid_file = tmp_path / "pid"
    script = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    run = asyncio.create_task(
        run_limited(
            [sys.executable, "-c", script], cwd=tmp_path, limits=Limits(60, 256), home=tmp_path
        )
    )
    async with asyncio.timeout(10):
        while not pid_file.exists() or not pid_file.read_text():  # noqa: ASYNC110 (a file)
            await asyncio.sleep(0.05)
    pid = int(pid_file.read_text())
    run.cancel()  # what a heartbeat timeout or a cancelled build does to the activity
    with contextlib.suppress(asyncio.CancelledError):
        await run
    assert await until_gone(pid), "the test run outlived its cancelled activity"


def test_a_run_dies_with_a_killed_worker(tmp_path: Path):
    """kill -9 of the worker process: its test run does not go on beside the retry."""
    pid_file = tmp_path / "pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    worker = textwrap.dedent(f"""
        import asyncio, sys
        from pathlib import Path
        from activities.sandbox import Limits, run_limited
        asyncio.run(run_limited([sys.executable, "-c", {child!r}], cwd=Path({str(tmp_path)!r}),
                                limits=Limits(60, 256), home=Path({str(tmp_path)!r})))
    """)
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", worker], cwd=root)
    try:
        deadline = time.monotonic() + 20
        while (not pid_file.exists() or not pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        assert alive(pid)
    finally:
        proc.kill()  # SIGKILL: no cleanup code of the worker runs
        proc.wait()
    assert asyncio.run(until_gone(pid)), "the test run outlived its killed worker"


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
