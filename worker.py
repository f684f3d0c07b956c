"""Runs BuildWorkflow and the role activities on the task queue; stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

import typer
from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.worker import Worker

from activities.llm import ModelClient
from activities.mirror import MirrorActivities
from activities.roles import RoleActivities
from core.exit import exit_now
from core.settings import Settings, get_settings
from core.temporal import connect
from db.engine import make_engine
from db.migrate import upgrade
from workflows.build import BuildWorkflow

log = logging.getLogger("worker")


def build_worker(client: Client, task_queue: str, *, llm: ModelClient, engine: Engine) -> Worker:
    roles = RoleActivities(llm)
    mirror = MirrorActivities(engine)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[BuildWorkflow],
        activities=[*roles.all(), mirror.mirror_build],
    )


async def serve(settings: Settings) -> None:
    try:
        client = await connect(settings)
    except RuntimeError as err:
        raise SystemExit(
            f"cannot reach Temporal at {settings.temporal_address}: {err}; "
            "is it running? `make run` starts it"
        ) from err
    upgrade(settings.db_url())
    engine = make_engine(settings.db_url())
    llm = ModelClient(settings)
    worker = build_worker(client, settings.temporal_task_queue, llm=llm, engine=engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    model = "offline model" if settings.offline_model else f"model {settings.llm_model}"
    log.info(
        "worker polling %s on %s (namespace %s, %s, mirror %s)",
        settings.temporal_task_queue,
        settings.temporal_address,
        settings.temporal_namespace,
        model,
        engine.url.render_as_string(hide_password=True),
    )
    async with worker:
        await stop.wait()
        log.info("shutting down: finishing running activities")
    await llm.close()
    engine.dispose()
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
