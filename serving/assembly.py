"""The worker that serves builds: BuildWorkflow and the activities of its contract, with their
clients built once (the model client, the mirror's engine)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from temporalio.client import Client
from temporalio.worker import Worker

from activities.evals import EvalActivities
from activities.mirror import MirrorActivities
from activities.model.llm import ModelClient
from activities.projects import registry
from activities.repository import gitcmd
from activities.roles import RoleActivities
from core.settings import Settings
from workflows.build import BuildWorkflow
from workflows.evals import EvalWorkflow
from workflows.project import ProjectWorkflow


def lower_priority(settings: Settings) -> int:
    """Lower this worker process's CPU priority by WORKER_NICE: on a shared machine the API
    answers a person within its targets while builds run (bench: API p99 with 50 builds
    running). The niceness now."""
    return os.nice(settings.worker_nice)


def worker_identity() -> str:
    """Who ran a task, as the Web UI and histories show it: host and process."""
    return f"worker-{os.getpid()}@{socket.gethostname()}"


def activities(llm: ModelClient, engine: Engine) -> list[Callable[..., Any]]:
    """The implementations of every activity contract (core/contracts.py)."""
    mirror = MirrorActivities(engine)
    roles = RoleActivities(llm, mirror=mirror)
    evals = EvalActivities(llm.settings, engine)
    return [*roles.all(), mirror.mirror_build, *registry(llm.settings), *evals.all()]


def build_worker(
    client: Client,
    settings: Settings,
    *,
    llm: ModelClient,
    engine: Engine,
    identity: str | None = None,
    workflows: Sequence[type] = (BuildWorkflow, ProjectWorkflow, EvalWorkflow),
) -> Worker:
    """The worker; its git reads repository tokens from the settings' credential store."""
    gitcmd.use_credentials(settings.git_credentials)
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=list(workflows),
        activities=activities(llm, engine),
        identity=identity,
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.worker_max_concurrent_workflow_tasks,
        max_task_queue_activities_per_second=settings.worker_activities_per_second,
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_shutdown_grace_seconds),
    )
