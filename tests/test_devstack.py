"""The embedded stack behind `make run`: up, a build through it, status, down."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx

from devstack import free_port, port_open
from tests.test_cli import ROOT


async def test_up_runs_server_ui_and_worker_then_down_stops_them(tmp_path: Path):
    import asyncio
    import sys

    port, ui_port, api_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TEMPORAL_"))}
    env |= {
        "DATA_DIR": str(tmp_path / "data"),
        "TEMPORAL_PORT": str(port),
        "TEMPORAL_UI_PORT": str(ui_port),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
        "TEMPORAL_UI_URL": f"http://127.0.0.1:{ui_port}",
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
        assert "API started" in out and f"http://localhost:{api_port}/docs" in out
        assert (tmp_path / "data" / "temporal.db").exists()

        code, out = await run(starter, "start", "-r", "Dark mode", "--simulate", "tests_fail_once")
        assert code == 0, out
        assert f"http://127.0.0.1:{ui_port}/namespaces/default/workflows/build-" in out
        assert "COMPLETE" in out
        build = re.search(r"workflow id (build-\w+)", out)
        assert build is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
            assert (await http.get("/readyz")).json()["status"] == "ready"
            status = (await http.get(f"/api/workflows/{build.group(1)}/status")).json()
            assert status["current_state"] == "complete" and status["loop_backs"] == 1

        code, out = await run(devstack, "up")  # again: finds both running, starts nothing
        assert code == 0 and "already running" in out

        code, out = await run(devstack, "status")
        assert "temporal: running" in out and "worker: running" in out and "api: running" in out
    finally:
        code, out = await run(devstack, "down")
    assert code == 0 and "worker: stopped" in out and "temporal: stopped" in out
    assert "api: stopped" in out
    assert not port_open(port) and not port_open(ui_port) and not port_open(api_port)
    code, out = await run(devstack, "status")
    assert "temporal: not running" in out and "worker: not running" in out
    assert "api: not running" in out
