"""Helpers the tests share: requests, starting and watching builds, a worker in the test's
process or as its own, the scripts run as a user runs them, recorded histories."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from temporalio.client import Client, WorkflowHandle

from activities.model.llm import ModelClient
from client.builds import start_build
from core.build_io import BuildOptions, BuildRequest, BuildResult, BuildStatus, Requirements
from core.events import stored
from core.mirror import BuildEvent
from core.releases import Released
from core.settings import Settings
from serving.assembly import build_worker
from workflows.build import BuildWorkflow
from workflows.evals import EvalWorkflow
from workflows.project import ProjectWorkflow

ROOT = Path(__file__).resolve().parent.parent


def env_for(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TEMPORAL_"))}
    env.update(
        TEMPORAL_ADDRESS=settings.temporal_address,
        TEMPORAL_TASK_QUEUE=settings.temporal_task_queue,
        DATABASE_URL=settings.db_url(),
        ROLE_INITIAL_RETRY_SECONDS="0.1",
        COLUMNS="200",
        WORKER_METRICS_ADDRESS="off",  # tests that scrape a worker give it a free port
        WORKER_NICE=str(settings.worker_nice),
    )
    return env


async def spawn_worker(
    settings: Settings, cwd: Path, *, stderr: Any = asyncio.subprocess.DEVNULL, **env: str
) -> asyncio.subprocess.Process:
    """worker.py as its own process, run in `cwd` (away from the checkout's .env)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "worker.py"),
        cwd=cwd,
        env=env_for(settings) | env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=stderr,
    )


async def run(script: str, *args: str, settings: Settings, cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / script),
        *args,
        cwd=cwd,  # away from the checkout, so no developer .env is read
        env=env_for(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


HISTORY_DIR = Path(__file__).parent / "histories"
# The folder this code's histories are recorded into. Bump it after a workflow change (guarded
# by a patch) and record anew; the older folders stay as they are, so replay proves the change
# safe for builds that started before it.
HISTORY_VERSION = "v10"
# Histories of the project registry (ProjectWorkflow), replayed beside the builds'.
REGISTRY_HISTORIES = "registry"
# Histories of evaluation suite runs (EvalWorkflow).
EVAL_HISTORIES = "evals"


@asynccontextmanager
async def running_worker(
    client: Client,
    settings: Settings,
    engine: Engine,
    llm: ModelClient | None = None,
    workflows: Sequence[type] = (BuildWorkflow, ProjectWorkflow, EvalWorkflow),
) -> AsyncIterator[ModelClient]:
    """A worker on the settings' task queue, with the offline model unless `llm` is given."""
    llm = llm or ModelClient(settings)
    async with build_worker(client, settings, llm=llm, engine=engine, workflows=workflows):
        yield llm
    await llm.close()


def make_request(
    requirements: Requirements | None = None, project: str | None = None, **options: object
) -> BuildRequest:
    """A build of `project` (default: a project of its own, so builds of one test never
    deliver into each other's repository unless the test says so)."""
    return BuildRequest(
        project_id=project or f"p-{uuid.uuid4().hex[:10]}",
        build_id=f"t{uuid.uuid4().hex[:12]}",
        user_id="pytest",
        requirements=requirements or {"feature": "Dark mode", "priority": "high"},
        options=BuildOptions.model_validate(
            {"policy": {"initial_interval_seconds": 0.1, "max_attempts": 3}, **options}
        ),
    )


async def start(client: Client, settings: Settings, request: BuildRequest) -> WorkflowHandle:
    return await start_build(client, settings, request)


async def save_history(handle: WorkflowHandle, name: str, folder: str = HISTORY_VERSION) -> None:
    """With RECORD_HISTORIES=1, keep this run's history for the replay test, in the current
    version's folder (a build's) or in `folder`; a history already there is never rewritten."""
    if os.environ.get("RECORD_HISTORIES") != "1":
        return
    path = HISTORY_DIR / folder / f"{name}.json"
    if path.exists():
        return
    history = await handle.fetch_history()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(history.to_json())


async def status_of(handle: WorkflowHandle) -> BuildStatus:
    status: BuildStatus = await handle.query(BuildWorkflow.status)
    return status


async def wait_until(
    handle: WorkflowHandle, check: Callable[[BuildStatus], bool], seconds: float = 60
) -> BuildStatus:
    """Poll the status query until `check` holds (a build is observed only through queries).
    `seconds` guards against a hang, not a slow run: the suite runs two processes per core,
    and a build with retries that takes 7 s alone takes three times that beside the others."""
    async with asyncio.timeout(seconds):
        while not check(status := await status_of(handle)):  # noqa: ASYNC110 (queries poll)
            await asyncio.sleep(0.05)
    return status


def model_client_with(settings: Settings, handler: Callable[..., object]) -> ModelClient:
    """A ModelClient whose HTTP transport is `handler`: the real SDK against a scripted endpoint."""
    import httpx2

    llm = ModelClient(settings)
    llm.client = llm.client.with_options(
        http_client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler))  # type: ignore[arg-type]
    )
    return llm


def fields(event: BuildEvent) -> dict[str, Any]:
    """An event's payload as the mirror stores it (JSON fields by name), for assertions."""
    return dict(stored(event.data))


def release_of(result: BuildResult) -> Released:
    """The release a COMPLETE build made (a test's build that made none fails here)."""
    assert result.release is not None, f"build {result.build_id} released nothing"
    return result.release
