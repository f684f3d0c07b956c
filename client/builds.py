"""Client-side operations on builds, shared by starter.py and the API: start, steer, ask.

Every refusal is a BuildError subclass (client/errors.py) whose message a person can act on;
the CLI prints it, the API maps its kind to an HTTP status.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.workflow import UpdateMethodMultiParam

from client.errors import (
    NO_ANSWER,
    BuildError,
    BuildExists,
    BuildFinished,
    BuildNotFound,
    CommandRefused,
    NoAnswer,
)
from client.projects import greenfield, registered
from core.attributes import of_project
from core.build_io import (
    BuildOptions,
    BuildRequest,
    BuildResult,
    Requirements,
    StartOptions,
    build_id_from,
    workflow_id_for,
)
from core.settings import Settings
from db import crud
from db.engine import make_engine
from db.kept import answers_kept
from workflows.build import BuildWorkflow

# How long a caller waits for Temporal to describe a build.
DESCRIBE_TIMEOUT = timedelta(seconds=10)
# A build's handle: its queries, signals and updates typed by BuildWorkflow, its result a
# BuildResult.
BuildHandle = WorkflowHandle[BuildWorkflow, BuildResult]
ArgT = TypeVar("ArgT")
AnswerT = TypeVar("AnswerT")


def new_request(
    settings: Settings,
    project_id: str,
    requirements: Requirements,
    options: StartOptions,
    *,
    build_id: str | None = None,
    user_id: str,
) -> BuildRequest:
    """A build request: a person's choices, and the settings for the rest (timeouts and
    retries, the budget, how long a pause waits); a random build id unless one is given."""
    max_retries = settings.build_max_retries if options.max_retries is None else options.max_retries
    return BuildRequest(
        project_id=project_id,
        build_id=build_id or secrets.token_hex(4),
        user_id=user_id,
        requirements=requirements,
        options=BuildOptions(
            max_retries=max_retries,
            approval_gates=options.approval_gates,
            simulate=options.simulate,
            policy=settings.role_policy(),
            budget=settings.budget(options.max_tokens, options.max_cost_usd),
            attention_wait_seconds=settings.attention_wait_seconds,
            approval_wait_seconds=settings.approval_wait_seconds,
            bump=options.bump,
        ),
    )


log = logging.getLogger("client")


@functools.cache
def _engine(url: str) -> Engine:
    return make_engine(url)


def used_before(settings: Settings, build_id: str, *, prefix: bool = False) -> str | None:
    """Where the build id (`prefix`: any id it begins) was used before, in words (None:
    nowhere). The mirror and the kept answers remember ids that Temporal forgets once a closed
    build's retention ends; a build under a used id would mix its answers with the old one's,
    and a re-run of the old one would replay them. While the mirror's database is down: None,
    said in the log (Temporal still refuses the ids it remembers)."""
    engine = _engine(settings.db_url())
    try:
        with Session(engine) as session:
            row = crud.first_build(session, build_id, prefix=prefix)
        if row is not None:
            when = f"{row.created_at:%Y-%m-%d %H:%M} UTC"
            return f"the mirror has build {row.build_id} ({row.current_state}, started {when})"
        if not prefix and answers_kept(settings, engine, build_id):
            return "model answers are kept under it"
    except SQLAlchemyError as err:
        log.warning("build id %s not checked against the mirror: %s", build_id, err)
    return None


USED_CHECK_SECONDS = 5.0


async def checked(settings: Settings, build_id: str, *, prefix: bool = False) -> str | None:
    """used_before, waited for at most USED_CHECK_SECONDS (a database that does not answer
    holds no start back: Temporal still refuses the ids it remembers)."""
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(used_before, settings, build_id, prefix=prefix), USED_CHECK_SECONDS
        )
    except TimeoutError:
        log.warning("build id %s not checked: the mirror's database did not answer", build_id)
        return None


async def start_build(client: Client, settings: Settings, request: BuildRequest) -> BuildHandle:
    """Start a build on its project's registration (a project nobody registered gets a
    greenfield repository); a build id used before (by a running build, or one Temporal has
    forgotten but the mirror or the kept answers remember) is refused, never run twice."""
    if (used := await checked(settings, request.build_id)) is not None:
        raise BuildExists(
            f"build {request.build_id} already exists: {used}; choose another build id"
        )
    if request.project is None:
        if (view := await registered(client, request.project_id)) is not None:
            request = request.model_copy(update={"project": view.config})
        else:
            await greenfield(client, settings, request.project_id)
    try:
        return await client.start_workflow(
            BuildWorkflow.run,
            request,
            id=request.workflow_id,
            task_queue=settings.temporal_task_queue,
            execution_timeout=timedelta(seconds=settings.build_execution_timeout_seconds)
            if settings.build_execution_timeout_seconds
            else None,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=of_project(request.project_id),
            static_summary=f"{request.project_id}: build {request.build_id}",
        )
    except WorkflowAlreadyStartedError as err:
        raise BuildExists(
            f"build {request.build_id} already exists; choose another build id"
        ) from err
    except RPCError as err:
        raise refusal(request.workflow_id, err) from err


async def has_worker(client: Client, settings: Settings) -> bool:
    """Whether any worker has polled the task queue for workflow tasks lately."""
    answer = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=settings.temporal_namespace,
            task_queue=TaskQueue(name=settings.temporal_task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return len(answer.pollers) > 0


def handle_for(client: Client, build: str) -> BuildHandle:
    """The typed handle of a build given by build id or workflow id."""
    return client.get_workflow_handle_for(BuildWorkflow.run, workflow_id_for(build_id_from(build)))


async def query(
    handle: BuildHandle,
    query: Callable[..., AnswerT],
    *args: Any,
    rpc_timeout: timedelta | None = None,
) -> AnswerT:
    try:
        return await handle.query(query, *args, rpc_timeout=rpc_timeout)
    except RPCError as err:
        raise refusal(handle.id, err) from err


async def update(
    handle: BuildHandle,
    update: UpdateMethodMultiParam[[BuildWorkflow, ArgT], AnswerT],
    arg: ArgT,
    *,
    rpc_timeout: timedelta | None = None,
) -> AnswerT:
    """Run a validated update: its answer, or refused with the workflow's reason."""
    try:
        return await handle.execute_update(update, arg, rpc_timeout=rpc_timeout)
    except WorkflowUpdateFailedError as err:
        raise CommandRefused(str(getattr(err.cause, "message", err.cause))) from err
    except WorkflowUpdateRPCTimeoutOrCancelledError as err:
        raise NoAnswer(_no_answer(handle.id)) from err
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND and await _closed(handle):
            # The build ended as the update arrived: the server's words for that vary.
            raise BuildFinished(
                f"build {build_id_from(handle.id)} has finished; it takes no more commands"
            ) from err
        raise refusal(handle.id, err) from err


async def _closed(handle: BuildHandle) -> bool:
    """Whether the build's workflow exists and has ended."""
    try:
        described = await handle.describe(rpc_timeout=DESCRIBE_TIMEOUT)
    except RPCError:
        return False
    return described.status not in (None, WorkflowExecutionStatus.RUNNING)


def refusal(workflow_id: str, err: RPCError) -> BuildError:
    """The BuildError an RPC failure about one build means."""
    build = build_id_from(workflow_id)
    # The server answers NOT_FOUND for a finished workflow too; its message tells them apart.
    if "already completed" in err.message:
        return BuildFinished(f"build {build} has finished; it takes no more commands")
    if err.status == RPCStatusCode.NOT_FOUND:
        return BuildNotFound(f"no build {build} (workflow {workflow_id})")
    if err.status in NO_ANSWER or "Timeout expired" in err.message:
        return NoAnswer(_no_answer(workflow_id))
    return BuildError(err.message)


def _no_answer(workflow_id: str) -> str:
    return (
        f"no worker answered for build {build_id_from(workflow_id)} in time; "
        "is a worker polling its task queue? (`make run` starts one)"
    )


async def describe(handle: BuildHandle) -> WorkflowExecutionDescription:
    try:
        return await handle.describe(rpc_timeout=DESCRIBE_TIMEOUT)
    except RPCError as err:
        raise refusal(handle.id, err) from err
