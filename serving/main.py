"""The worker process (worker.py runs it): it chooses its sandbox, waits for its database, serves
its metrics, polls the task queue with the workflows and activities of serving/assembly.py and
runs the reconciler, until SIGINT or SIGTERM; then it finishes its running activities."""

from __future__ import annotations

import asyncio
import logging
import signal

import typer
from sqlalchemy.exc import OperationalError

from activities.model import probe
from activities.model.answers import open_store
from activities.model.llm import ModelClient
from activities.sandbox import cgroups, isolation
from core.settings import Settings, get_settings
from core.telemetry import flush_traces, setup_logging, tracing_interceptors, worker_runtime
from core.temporal import connect
from db.engine import make_engine
from db.migrate import upgrade
from serving.assembly import build_worker, lower_priority, worker_identity
from serving.reconcile import reconcile_forever
from workflows.metrics import HISTOGRAM_BUCKETS

log = logging.getLogger("worker")


def choose_sandbox(settings: Settings) -> None:
    """The sandbox of generated code, probed at start: the worker says which, and refuses to
    start when the one SANDBOX names (or, for auto, every one) does not work here."""
    try:
        sandbox = isolation.configured(settings)
    except isolation.SandboxUnavailable as err:
        raise SystemExit(f"SANDBOX={settings.sandbox}: {err}") from err
    if sandbox.kind == "none":
        log.warning("SANDBOX=none: generated code runs unconfined, as this worker's user")
    else:
        log.info("sandbox (SANDBOX=%s): %s", settings.sandbox, sandbox.describe())
    if swept := cgroups.sweep():  # what a killed worker's runs left
        log.info("removed %d empty run cgroups left by a stopped worker", swept)


DATABASE_WAIT_MAX_SECONDS = 30.0


async def database_ready(settings: Settings) -> None:
    """The mirror's database migrated; while it cannot be reached, wait and try again (each
    wait twice the last, up to 30 s), saying why: a worker started before its database comes
    up when the database does."""
    delay = 1.0
    while True:
        try:
            await asyncio.to_thread(upgrade, settings.db_url())
            return
        except OperationalError as err:
            reason = str(err.orig or err).strip().splitlines()[0]
            log.warning("mirror database unavailable (%s); trying again in %.0fs", reason, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, DATABASE_WAIT_MAX_SECONDS)


async def serve(settings: Settings) -> None:
    choose_sandbox(settings)
    try:
        runtime = worker_runtime(settings, HISTOGRAM_BUCKETS)
    except Exception as err:  # the runtime's own error names the address
        raise SystemExit(
            f"cannot serve metrics at WORKER_METRICS_ADDRESS={settings.worker_metrics_address}: "
            f"{err}; choose a free address, or set it to off to serve none"
        ) from err
    try:
        client = await connect(
            settings, runtime=runtime, interceptors=tracing_interceptors(settings, "qao-worker")
        )
    except RuntimeError as err:
        raise SystemExit(
            f"cannot reach Temporal at {settings.temporal_address}: {err}; "
            "is it running? `make run` starts it"
        ) from err
    await database_ready(settings)
    engine = make_engine(settings.db_url())
    store = open_store(settings, engine)
    if pruned := await asyncio.to_thread(store.prune, settings.answer_retention_days):
        log.info("removed the kept answers of %d builds older than %g days", pruned,
                 settings.answer_retention_days)  # fmt: skip
    llm = ModelClient(settings, store)  # one store, on the mirror's engine where it is there
    identity = worker_identity()
    niceness = lower_priority(settings)
    worker = build_worker(client, settings, llm=llm, engine=engine, identity=identity)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    model = "offline model" if settings.offline_model else f"model {settings.llm_model}"
    log.info(
        "%s polling %s on %s (namespace %s, %s, mirror %s, nice %d)",
        identity,
        settings.temporal_task_queue,
        settings.temporal_address,
        settings.temporal_namespace,
        model,
        engine.url.render_as_string(hide_password=True),
        niceness,
    )
    if runtime is not None:
        log.info("metrics at http://%s/metrics", settings.worker_metrics_address)
    reconciler = (
        asyncio.create_task(reconcile_forever(client, engine, settings.mirror_reconcile_seconds))
        if settings.mirror_reconcile_seconds
        else None
    )
    # Beside polling, not before it: a slow model must not hold up builds that need no call.
    checked = (
        asyncio.create_task(probe.check_at_start(llm))
        if settings.llm_probe_at_start and not settings.offline_model
        else None
    )
    async with worker:
        await stop.wait()
        for task in (reconciler, checked):
            if task is not None:
                task.cancel()
        log.info("shutting down: finishing running activities")
    await llm.close()
    engine.dispose()
    flush_traces()
    log.info("worker stopped")


def main(
    task_queue: str = typer.Option(None, help="Task queue (default: TEMPORAL_TASK_QUEUE)."),
    metrics_address: str = typer.Option(
        None, help="host:port of the Prometheus endpoint; 'off' for none (WORKER_METRICS_ADDRESS)."
    ),
) -> None:
    """Run the build worker until SIGINT or SIGTERM. Run several to share the builds."""
    settings = get_settings()
    update: dict[str, str] = {}
    if task_queue:
        update["temporal_task_queue"] = task_queue
    if metrics_address is not None:
        update["worker_metrics_address"] = metrics_address
    settings = settings.model_copy(update=update)
    setup_logging(settings)
    asyncio.run(serve(settings))
