"""Child processes of the bench, the drills and the tests: ports, logs, environments, and a
launcher that ties a child's life to its parent's."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from asyncio.subprocess import Process
from pathlib import Path

from core.settings import Settings

# A child that must not outlive the process that started it (the bench's and the drills' workers,
# API and dev server) is started through this launcher. It asks Linux to send it SIGTERM when its
# parent dies (PR_SET_PDEATHSIG, kept across exec), then execs the command, so a runner killed by
# hand leaves no children holding ports. The request belongs to the thread that started the
# child: start tied children from the main thread or a thread that lives as long (asyncio's
# executor does).
TIED_LAUNCHER = """
import ctypes, os, signal, sys
if sys.platform == "linux":
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    if os.getppid() != int(sys.argv[1]):  # the parent died before the request was made
        sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def tied(argv: list[str]) -> list[str]:
    """argv, run so that it gets SIGTERM when this process dies, however it dies."""
    return [sys.executable, "-c", TIED_LAUNCHER, str(os.getpid()), *argv]


def log_tail(path: Path, lines: int = 3) -> str:
    """The last lines of a child's log, on one line (for a message about why it stopped)."""
    text = path.read_text(errors="replace").strip() if path.exists() else ""
    return " | ".join(line.strip() for line in text.splitlines()[-lines:]) or "no output"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(
    port: int,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    host: str = "127.0.0.1",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open within {timeout:.0f}s")


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """A worker's or API's environment for a tool's own stack: this process's, less any Temporal
    or model settings of the developer's, plus the stack's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "OPENAI_"))}
    return (
        env
        | {
            "TEMPORAL_ADDRESS": settings.temporal_address,
            "TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
            "DATABASE_URL": settings.db_url(),
            "DATA_DIR": str(settings.data_dir),
            "LOG_LEVEL": "WARNING",
        }
        | extra
    )


async def api_process(settings: Settings, cwd: Path, **extra: str) -> tuple[Process, int]:
    """`python -m api` for a tool's stack, on a free port, once it listens."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *tied([sys.executable, "-m", "api"]), cwd=cwd,
        env=child_env(settings, API_PORT=str(port), **extra),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.to_thread(wait_for_port, port, 60, None)
    return proc, port
