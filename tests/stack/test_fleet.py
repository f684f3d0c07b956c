"""Several worker processes on one task queue, against the real dev server: they share the builds,
one can die mid-build and the others finish its builds, each serves Prometheus metrics, and
every log line of a build names it."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from activities.repository.gitcmd import create_bare
from core.build_io import BuildRequest, RolePolicy
from core.projects import ProjectConfig
from core.settings import Settings
from core.states import BuildState
from devtools.processes import free_port, wait_for_port
from tests.helpers import make_request, spawn_worker, start, status_of
from tests.stack.test_durability import assert_clean_log
from workflows.build import BuildWorkflow

pytestmark = pytest.mark.slow  # worker processes of their own


@dataclass
class WorkerProcess:
    proc: asyncio.subprocess.Process
    metrics_port: int
    log: Path

    @property
    def identity_prefix(self) -> str:
        return f"worker-{self.proc.pid}@"

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def log_lines(self) -> list[dict[str, object]]:
        # Every line must be one JSON object: json.loads fails the test otherwise.
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@asynccontextmanager
async def workers(
    settings: Settings, folder: Path, count: int, latency: float
) -> AsyncIterator[list[WorkerProcess]]:
    """`count` worker processes sharing one data folder (workspaces, releases), as replicas do."""
    started: list[WorkerProcess] = []
    try:
        for n in range(count):
            port = free_port()
            log = folder / f"worker{n}.log"
            with log.open("wb") as out:
                proc = await spawn_worker(
                    settings,
                    folder,
                    stderr=out,
                    OFFLINE_MODEL_LATENCY_SECONDS=str(latency),
                    DATA_DIR=str(folder / "data"),
                    LOG_FORMAT="json",
                    WORKER_METRICS_ADDRESS=f"127.0.0.1:{port}",
                )
            started.append(WorkerProcess(proc, port, log))
        for w in started:
            await asyncio.to_thread(wait_for_port, w.metrics_port, 60)
        yield started
    finally:
        for w in started:
            if w.proc.returncode is None:
                w.proc.send_signal(signal.SIGTERM)
        for w in started:
            async with asyncio.timeout(30):
                await w.proc.wait()


async def until_all_poll(fleet: list[WorkerProcess]) -> None:
    """Wait until every worker polls for workflow and activity tasks (its own poller gauge: the
    server's describe shows only the pollers one partition saw lately)."""

    def polling(w: WorkerProcess) -> bool:
        scrape = w.metrics()
        kinds = {
            dict(labels).get("poller_type")
            for (name, labels), value in scrape.items()
            if name == "temporal_num_pollers" and value > 0
        }
        return {"workflow_task", "activity_task"} <= kinds

    async with asyncio.timeout(30):
        while not all(polling(w) for w in fleet):  # noqa: ASYNC110 (polls another process)
            await asyncio.sleep(0.2)


async def identities(handle: WorkflowHandle) -> Counter[str]:
    """Which worker started each activity attempt and completed each workflow task."""
    seen: Counter[str] = Counter()
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            seen[event.activity_task_started_event_attributes.identity] += 1
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            seen[event.workflow_task_completed_event_attributes.identity] += 1
    return seen


def total(samples: list[dict], name: str, **labels: str) -> float:
    """A metric summed over the workers' scrapes (and over labels not given)."""
    return sum(
        float(value)
        for scrape in samples
        for (metric, pairs), value in scrape.items()
        if metric == name and all(dict(pairs).get(k) == v for k, v in labels.items())
    )


async def test_two_workers_share_builds_serve_metrics_and_log_build_ids(
    client: Client, settings: Settings, engine, tmp_path: Path
):
    async with workers(settings, tmp_path, count=2, latency=0.2) as fleet:
        await until_all_poll(fleet)
        # Started together, so both workers poll while the first workflow tasks arrive.
        requests = [with_repository(make_request(), tmp_path) for _ in range(4)]
        handles = await asyncio.gather(*(start(client, settings, r) for r in requests))
        async with asyncio.timeout(150):
            results = await asyncio.gather(*(h.result() for h in handles))
        statuses = [await status_of(h) for h in handles]
        scrapes = [w.metrics() for w in fleet]
        seen: Counter[str] = Counter()
        for h in handles:
            seen += await identities(h)
            assert_clean_log(await h.query(BuildWorkflow.event_log, 0), engine, h.id)

    assert all(r.state is BuildState.COMPLETE for r in results)
    # Both processes executed work of these builds.
    for w in fleet:
        assert any(i.startswith(w.identity_prefix) for i in seen), (w.identity_prefix, seen)

    # Build metrics from both workers add up to exactly what the builds did.
    assert total(scrapes, "qao_builds_started_total") == 4
    assert total(scrapes, "qao_builds_finished_total", state="complete") == 4
    assert total(scrapes, "qao_state_entered_total", state="deployment") == 4
    tokens = sum(s.tokens for s in statuses)
    assert tokens > 0 and total(scrapes, "qao_model_tokens_total") == tokens
    calls = sum(sum(r.attempts.values()) for r in results)
    assert total(scrapes, "qao_model_call_cost_usd_count") == calls
    assert total(scrapes, "qao_phase_duration_seconds_count", state="implementation") == 4
    # The SDK's own runtime metrics are there too.
    assert total(scrapes, "temporal_workflow_completed_total") == 4
    assert total(scrapes, "temporal_activity_execution_latency_count") >= calls

    # Every line is JSON; every line a build's activity or workflow wrote names that build.
    builds = {r.build_id for r in results}
    for w in fleet:
        lines = w.log_lines()
        assert lines and all({"workflow_id", "build_id", "message"} <= set(x) for x in lines)
        about = [x for x in lines if x["build_id"] != "-"]
        assert {x["build_id"] for x in about} <= builds
        assert all(x["workflow_id"] == f"build-{x['build_id']}" for x in about)
    transitions = [x for w in fleet for x in w.log_lines() if " -> " in str(x["message"])]
    assert {x["build_id"] for x in transitions} == builds


def with_repository(request: BuildRequest, folder: Path) -> BuildRequest:
    """The request of a build whose project is registered already (a repository of its own):
    starting it is one RPC, and the workers' tasks are the builds' alone."""
    remote = folder / "repos" / f"{request.project_id}.git"
    create_bare(remote, "main")
    return request.model_copy(update={"project": ProjectConfig(repository=str(remote))})


MODEL_CALLS = {"q_assistant", "code_writer", "test_auditor", "verification_overseer"}


async def test_a_killed_worker_leaves_its_builds_to_the_others(
    client: Client, settings: Settings, engine, tmp_path: Path
):

    async with workers(settings, tmp_path, count=2, latency=1.0) as fleet:
        victim, survivor = fleet
        await until_all_poll(fleet)
        handles = []
        for _ in range(4):
            request = with_repository(make_request(), tmp_path)
            # Recovery comes from the heartbeat timeout, not from start-to-close.
            request.options.policy = RolePolicy(
                start_to_close_seconds=120, heartbeat_seconds=2, initial_interval_seconds=0.1
            )
            handles.append(await start(client, settings, request))

        async def running_on_victim() -> WorkflowHandle | None:
            for h in handles:
                described = await h.describe()
                for pending in described.raw_description.pending_activities:
                    # A model call (1 s here), not a quick git step that could end before
                    # the kill lands.
                    slow = pending.activity_type.name in MODEL_CALLS
                    if slow and pending.last_worker_identity.startswith(victim.identity_prefix):
                        return h
            return None

        async with asyncio.timeout(60):
            while (interrupted := await running_on_victim()) is None:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        victim.proc.send_signal(signal.SIGKILL)
        await victim.proc.wait()

        async with asyncio.timeout(150):
            results = await asyncio.gather(*(h.result() for h in handles))
        retried_by_survivor = False
        async for event in interrupted.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                attrs = event.activity_task_started_event_attributes
                if attrs.attempt >= 2 and attrs.identity.startswith(survivor.identity_prefix):
                    retried_by_survivor = True
        # Nothing lost, nothing doubled: each state once, the mirror equal to the events.
        for h in handles:
            assert_clean_log(await h.query(BuildWorkflow.event_log, 0), engine, h.id)

    assert all(r.state is BuildState.COMPLETE for r in results)
    assert retried_by_survivor, "the survivor should have retried the victim's activity"
