"""The bench's own stack: a dev server, a worker process answering with a recorded build,
and the runs it measures (one build, one bare workflow)."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle

from activities.model.llm import ModelClient
from activities.repository.gitcmd import create_bare
from bench.bare import BareWorkflow
from bench.engine import BARE_QUEUE_SUFFIX, record
from bench.figures import log
from bench.variants import WITHOUT_REPOSITORY
from client.builds import BuildHandle, start_build
from core.build_io import BuildOptions, BuildRequest
from core.projects import ProjectConfig
from core.settings import Settings
from core.temporal import connect
from db.engine import make_engine
from db.migrate import upgrade
from devtools.devserver import DevServer
from devtools.processes import child_env, free_port, log_tail, tied
from serving.assembly import build_worker

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Scale:
    latency_samples: int
    throughput_builds: int
    in_flight: int
    concurrent_builds: int
    api_seconds: float
    api_builds: int
    model_latency: float  # seconds each model answer takes while builds are in flight


FULL = Scale(
    latency_samples=100,
    throughput_builds=200,
    in_flight=50,
    concurrent_builds=200,
    api_seconds=10,
    api_builds=50,
    model_latency=2.0,
)
QUICK = Scale(
    latency_samples=4,
    throughput_builds=6,
    in_flight=3,
    concurrent_builds=6,
    api_seconds=1.5,
    api_builds=3,
    model_latency=0.3,  # the quick run checks the script works: its figures are noise anyway
)


PROJECTS = 16


class Bench:
    def __init__(self, folder: Path, scale: Scale, database_url: str | None = None) -> None:
        self.folder = folder
        self.scale = scale
        self.server = DevServer(
            db_file=folder / "temporal.db", port=free_port(), headless=True, tied=True
        )
        self.settings = Settings(
            _env_file=None,
            data_dir=folder / "data",
            database_url=database_url or f"sqlite:///{folder / 'mirror.db'}",
            openai_api_key=None,
            temporal_task_queue="bench",
            worker_metrics_address="",
        )
        self.recording = folder / "recording.json"
        self.client: Client
        self.worker: asyncio.subprocess.Process | None = None
        self.payload = ""
        self.started = 0

    # --- set-up ----------------------------------------------------------------------------

    async def start(self) -> None:
        log("starting the dev server")
        await asyncio.to_thread(self.server.start)
        self.settings = self.settings.model_copy(update={"temporal_address": self.server.address})
        upgrade(self.settings.db_url())
        create_bare(self.settings.projects / "bench.git", "main")
        self.client = await connect(self.settings)

    async def record_a_real_build(self) -> int:
        """One build with the real roles; returns its number of role calls."""
        log("recording one real build (offline model, real subprocesses)")
        settings = self.settings.model_copy(update={"temporal_task_queue": "bench-record"})
        llm = ModelClient(settings)
        engine = make_engine(settings.db_url())
        async with build_worker(self.client, settings, llm=llm, engine=engine):
            handle = await start_build(self.client, settings, self.request("bench-record"))
            await handle.result()
        await llm.close()
        engine.dispose()
        recording = await record(handle)
        self.recording.write_text(json.dumps(recording))
        sizes = [len(json.dumps(r["result"])) for r in recording]
        self.payload = "x" * int(sum(sizes) / len(sizes))  # bare steps carry as much
        return len(recording)

    def request(self, project: str | None = None) -> BuildRequest:
        """A build of one of PROJECTS projects in turn: a project's releases queue behind
        each other, as they would with builds of a few projects in flight."""
        self.started += 1
        return BuildRequest(
            project_id=project or f"bench-{self.started % PROJECTS}",
            build_id=f"b{uuid.uuid4().hex[:12]}",
            user_id="bench",
            requirements={"feature": "Dark mode", "priority": "high"},
            options=BuildOptions(policy=self.settings.role_policy()),
            # Registered: a start is one RPC, as with any project a person registered.
            project=ProjectConfig(repository=str(self.settings.projects / "bench.git")),
        )

    async def start_worker(self, latency: float, max_activities: int) -> None:
        await self.stop_worker()
        env = child_env(
            self.settings,
            WORKER_MAX_CONCURRENT_ACTIVITIES=str(max_activities),
            WORKER_MAX_CONCURRENT_WORKFLOW_TASKS=str(max_activities),
        )
        with (self.folder / "worker.log").open("ab") as out:
            self.worker = await asyncio.create_subprocess_exec(
                *tied([sys.executable, "-m", "bench.engine"]),
                "--recording", str(self.recording), "--latency", str(latency),
                cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=out,
            )  # fmt: skip
        # Ready once a bare workflow runs; a worker that exits first stops the bench at once.
        ready = asyncio.ensure_future(self.run_bare(1))
        exited = asyncio.ensure_future(self.worker.wait())
        await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            raise SystemExit(
                f"the bench's worker exited at start with {self.worker.returncode}: "
                + log_tail(self.folder / "worker.log")
            )
        exited.cancel()

    async def stop_worker(self) -> None:
        if self.worker is not None and self.worker.returncode is None:
            self.worker.terminate()
            await self.worker.wait()
        self.worker = None

    # --- one build, one bare workflow ------------------------------------------------------

    async def run_build(self) -> BuildHandle:
        handle = await start_build(self.client, self.settings, self.request())
        await handle.result()
        return handle

    async def run_build_without_repository(self) -> None:
        request = self.request()
        await self.client.execute_workflow(
            WITHOUT_REPOSITORY,
            request,
            id=request.workflow_id,
            task_queue=self.settings.temporal_task_queue,
        )

    async def run_bare(self, steps: int, upsert: bool = False) -> WorkflowHandle[Any, int]:
        handle = await self.client.start_workflow(
            BareWorkflow.run,
            args=[steps, self.payload, upsert],
            id=f"bare-{uuid.uuid4().hex[:12]}",
            task_queue=self.settings.temporal_task_queue + BARE_QUEUE_SUFFIX,
        )
        await handle.result()
        return handle
