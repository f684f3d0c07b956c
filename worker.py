"""Runs BuildWorkflow and the role activities on the task queue; stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

import typer
from temporalio.client import Client
from temporalio.worker import Worker

from activities.llm import ModelClient
from activities.roles import RoleActivities
from core.exit import exit_now
from core.settings import Settings, get_settings
from core.temporal import connect
from workflows.build import BuildWorkflow

log = logging.getLogger("worker")


def build_worker(client: Client, llm: ModelClient, task_queue: str) -> Worker:
    roles = RoleActivities(llm)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[BuildWorkflow],
        activities=roles.all(),
    )


async def serve(settings: Settings) -> None:
    try:
        client = await connect(settings)
    except RuntimeError as err:
        raise SystemExit(
            f"cannot reach Temporal at {settings.temporal_address}: {err}; "
            "is it running? `make run` starts it"
        ) from err
    llm = ModelClient(settings)
    worker = build_worker(client, llm, settings.temporal_task_queue)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    model = "offline model" if settings.offline_model else f"model {settings.llm_model}"
    log.info(
        "worker polling %s on %s (namespace %s, %s)",
        settings.temporal_task_queue,
        settings.temporal_address,
        settings.temporal_namespace,
        model,
    )
    async with worker:
        await stop.wait()
        log.info("shutting down: finishing running activities")
    await llm.close()
    log.info("worker stopped")


def main(
    task_queue: str = typer.Option(None, help="Task queue (default: TEMPORAL_TASK_QUEUE)."),
) -> None:
    """Run the build worker until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per model call is noise
    settings = get_settings()
    if task_queue:
        settings = settings.model_copy(update={"temporal_task_queue": task_queue})
    asyncio.run(serve(settings))


if __name__ == "__main__":
    exit_now(typer.run, main)
