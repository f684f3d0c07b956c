"""The embedded stack behind `make run`: up, a build through it, status, down."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest

from activities.repository.gitcmd import git
from devtools.processes import free_port, port_open
from tests.helpers import ROOT


@pytest.mark.slow
async def test_up_runs_server_ui_and_worker_then_down_stops_them(tmp_path: Path):
    import asyncio
    import sys

    port, ui_port, api_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TEMPORAL_"))}
    env |= {
        "DATA_DIR": str(tmp_path / "data"),
        "TEMPORAL_PORT": str(port),
        "TEMPORAL_UI_PORT": str(ui_port),
        # No TEMPORAL_ADDRESS: TEMPORAL_PORT is where every client goes.
        "TEMPORAL_TASK_QUEUE": "devstack-test",
        "API_PORT": str(api_port),
        "COLUMNS": "200",
    }

    async def run(*args: str) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(120):
            out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    devstack, starter = str(ROOT / "devstack.py"), str(ROOT / "starter.py")
    try:
        code, out = await run(devstack, "up")
        assert code == 0, out
        assert "worker started" in out and port_open(port) and port_open(ui_port)
        # The Web UI's address is the port it was started on (TEMPORAL_UI_URL unset).
        assert f"Temporal Web UI http://localhost:{ui_port}\n" in out, out
        assert "  Generated code  runs in bubblewrap " in out or "runs in landlock ABI " in out, out
        assert "API started" in out and f"http://localhost:{api_port}/docs" in out
        assert (tmp_path / "data" / "temporal.db").exists()

        code, out = await run(starter, "start", "-r", "Dark mode", "--simulate", "tests_fail_once")
        assert code == 0, out
        assert f"http://localhost:{ui_port}/namespaces/default/workflows/build-" in out
        assert "COMPLETE" in out
        build = re.search(r"workflow id (build-\w+)", out)
        assert build is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
            assert (await http.get("/readyz")).json()["status"] == "ready"
            status = (await http.get(f"/api/workflows/{build.group(1)}/status")).json()
            assert status["current_state"] == "complete" and status["loop_backs"] == 1

        code, out = await run(devstack, "demo")
        assert code == 0, out
        remote = tmp_path / "data" / "examples" / "inventory.git"
        tags = git(remote, "tag", "--list", "v*").split()
        assert tags == ["v0.1.0", "v0.2.0"], out
        assert "tag: v0.1.0" in out and "tag: v0.2.0" in out and "Merge main into build/" in out
        assert out.count("complete: released v0.") == 2
        current = tmp_path / "data" / "releases" / "inventory" / "current"
        assert {"inventory.py", "dark_mode.py", "audit_log.py"} <= {
            p.name for p in current.iterdir()
        }

        code, out = await run(devstack, "up")  # again: finds both running, starts nothing
        assert code == 0 and "already running" in out

        code, out = await run(devstack, "status")
        assert "temporal: running" in out and "worker: running" in out and "api: running" in out
        # Every address printed comes from the settings: here the ports this test moved.
        assert f"http://localhost:{ui_port}" in out and f"localhost:{port}" in out
        assert f"http://localhost:{api_port}/docs" in out
    finally:
        code, out = await run(devstack, "down")
    assert code == 0 and "worker: stopped" in out and "temporal: stopped" in out
    assert "api: stopped" in out
    assert not port_open(port) and not port_open(ui_port) and not port_open(api_port)
    code, out = await run(devstack, "status")
    assert "temporal: not running" in out and "worker: not running" in out
    assert "api: not running" in out


def _alive(pid: int) -> bool:
    """Running, not gone and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _orphan_after_its_parent_is_killed(argv_code: str, wait: float) -> tuple[int, bool]:
    """A parent starts `sleep 300` (through `argv_code`), then is killed with SIGKILL: the
    child's pid, and whether the child still runs `wait` seconds later."""
    import subprocess
    import sys
    import time

    script = (
        "import subprocess, sys\n"
        "from devtools.processes import tied\n"
        f"child = subprocess.Popen({argv_code})\n"
        "print(child.pid, flush=True)\n"
        "child.wait()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0] != b"sleep":
        assert time.monotonic() < deadline, "the child never started sleep"
        time.sleep(0.02)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + wait
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    return child, _alive(child)


def test_a_tied_child_stops_when_its_parent_is_killed():
    """What keeps the bench's and drills' workers, API and dev server from outliving a runner
    killed by hand (they held ports and broke later runs)."""
    child, alive = _orphan_after_its_parent_is_killed("tied(['sleep', '300'])", 10)
    assert not alive
    child, alive = _orphan_after_its_parent_is_killed("['sleep', '300']", 1)  # untied: stays
    try:
        assert alive
    finally:
        os.kill(child, 9)
