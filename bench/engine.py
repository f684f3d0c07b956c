"""What the engine benchmark runs in its worker process.

- BuildWorkflow itself, with the real mirror (written by the role calls and by local
  activities), and role activities that write the mirror batch they carry, then return the
  results of a real build recorded beforehand (`record`) after an optional model latency: the
  engine's cost without the roles' work (no test subprocess).
- BareWorkflow (bench/bare.py), the baseline: the same number of activities in a row, returning
  payloads of the same size, and nothing else.
- BuildWithoutRepository (bench/variants.py): BuildWorkflow opening no repository, the
  baseline of what a project's repository costs the engine.

    python -m bench.engine --recording FILE [--latency 2] (a worker; settings from the env)
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.worker import Worker

from activities.mirror import MirrorActivities
from activities.projects import registry
from bench.bare import BareWorkflow, bare_step
from bench.variants import BuildWithoutRepository
from client.builds import BuildHandle
from core.contracts import OPEN_WORKSPACE, ROLE_CALLS
from core.exit import exit_now
from core.mirror import MirrorBatch
from core.settings import get_settings
from core.telemetry import setup_logging
from core.temporal import connect
from db.engine import make_engine
from serving.assembly import lower_priority
from workflows.build import BuildWorkflow
from workflows.project import ProjectWorkflow

# What the bench worker answers from the recording: the role calls and the workspace's opening.
RECORDED = {call.name for call in ROLE_CALLS.values()} | {OPEN_WORKSPACE.name}
BARE_QUEUE_SUFFIX = "-bare"


async def record(handle: BuildHandle) -> list[dict[str, Any]]:
    """A finished build's role activity results, in order, with the state each was called in:
    [{"activity": name, "state": …, "result": …}]."""
    scheduled: dict[int, tuple[str, str]] = {}
    recorded: list[dict[str, Any]] = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            task = (
                json.loads(attributes.input.payloads[0].data) if attributes.input.payloads else {}
            )
            state = str(task.get("state", "")) if isinstance(task, dict) else ""
            scheduled[event.event_id] = (attributes.activity_type.name, state)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = event.activity_task_completed_event_attributes
            name, state = scheduled[done.scheduled_event_id]
            if name in RECORDED:
                result = json.loads(done.result.payloads[0].data)
                recorded.append({"activity": name, "state": state, "result": result})
    return recorded


def recorded_activities(
    recording: list[dict[str, Any]], latency: float, mirror: MirrorActivities
) -> list[Callable[..., Any]]:
    """Role activities (and open_workspace) under their real names, answering with a recorded
    build's results in order per role and state (the Q Assistant answers its discovery at
    DISCOVERY and its plan at PLANNING; a state's second attempt answers its second result).
    Like the real ones, each first writes the mirror batch its task carries."""
    by_call: dict[str, dict[str, list[Any]]] = {}
    for entry in recording:
        by_state = by_call.setdefault(entry["activity"], {})
        by_state.setdefault(entry.get("state", ""), []).append(entry["result"])

    def make(name: str, by_state: dict[str, list[Any]]) -> Callable[..., Any]:
        @activity.defn(name=name)
        async def role(task: dict[str, Any]) -> Any:
            carried = task.get("mirror")
            batch = MirrorBatch.model_validate(carried) if carried else None
            mirrored = await mirror.carried(batch)
            if latency:
                await asyncio.sleep(latency)
            results = by_state[str(task.get("state", ""))]
            attempt = int(task.get("attempt", 1))
            return {**results[min(attempt, len(results)) - 1], "mirrored_seq": mirrored}

        return role

    return [make(name, by_state) for name, by_state in by_call.items()]


def main(
    recording: Annotated[Path, typer.Option(help="JSON written by the bench's recording run.")],
    latency: Annotated[float, typer.Option(help="Seconds each role call takes.")] = 0.0,
) -> None:
    """Run the benchmark's worker: builds on TEMPORAL_TASK_QUEUE, bare workflows on <queue>-bare."""
    settings = get_settings()
    setup_logging(settings)
    lower_priority(settings)  # as worker.py does: the API's share of the CPU is part of the test
    entries = json.loads(recording.read_text())

    async def serve() -> None:
        client = await connect(settings)
        engine = make_engine(settings.db_url())
        options: dict[str, Any] = {
            "max_concurrent_activities": settings.worker_max_concurrent_activities,
            "max_concurrent_workflow_tasks": settings.worker_max_concurrent_workflow_tasks,
        }
        mirror = MirrorActivities(engine)
        builds = Worker(
            client,
            task_queue=settings.temporal_task_queue,
            workflows=[BuildWorkflow, BuildWithoutRepository, ProjectWorkflow],
            activities=[
                *recorded_activities(entries, latency, mirror),
                mirror.mirror_build,
                *registry(settings),  # the projects' release queues
            ],
            **options,
        )
        bare = Worker(
            client,
            task_queue=settings.temporal_task_queue + BARE_QUEUE_SUFFIX,
            workflows=[BareWorkflow],
            activities=[bare_step],
            **options,
        )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        async with builds, bare:
            logging.getLogger("bench").info("bench worker ready")
            await stop.wait()
        engine.dispose()

    asyncio.run(serve())


if __name__ == "__main__":
    exit_now(typer.run, main)
