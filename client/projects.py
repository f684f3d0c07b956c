"""Client-side operations on projects, shared by starter.py and the API: register, look up,
list. The registry is one entity workflow per project (workflows/project.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecution,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from client.credentials import keep_credentials
from client.errors import NO_ANSWER, BuildError, NoAnswer
from core.projects import (
    MEMO_KEY,
    ProjectConfig,
    ProjectStart,
    ProjectView,
    project_workflow_id,
    split_credentials,
)
from core.settings import Settings
from workflows.project import ProjectWorkflow

LIST_QUERY = "WorkflowType = 'ProjectWorkflow' AND ExecutionStatus = 'Running'"
LIST_LIMIT = 1000


class ProjectError(BuildError):
    pass


class ProjectRefused(ProjectError):
    """git could not read the repository or branch; nothing was stored."""


class ProjectNotFound(ProjectError):
    pass


def _start(
    settings: Settings, project_id: str
) -> WithStartWorkflowOperation[ProjectWorkflow, None]:
    return WithStartWorkflowOperation(
        ProjectWorkflow.run,
        args=[ProjectStart(project_id=project_id)],
        id=project_workflow_id(project_id),
        task_queue=settings.temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"project {project_id}",
    )


async def put_project(
    client: Client, settings: Settings, project_id: str, config: ProjectConfig
) -> ProjectView:
    """Register or change a project; refused with git's reason if it cannot be read. A token
    in an http(s) repository URL goes to git's credential store (settings.git_credentials),
    and the registration holds the URL without it."""
    repository, url = split_credentials(config.repository)
    store, before = settings.git_credentials, None
    if url is not None:
        before = await asyncio.to_thread(keep_credentials, store, repository, url)
        config = config.model_copy(update={"repository": repository})
    try:
        with _answers(project_id):
            return await client.execute_update_with_start_workflow(
                ProjectWorkflow.configure,
                config,
                start_workflow_operation=_start(settings, project_id),
                rpc_timeout=_timeout(settings),
            )
    except ProjectError:
        if url is not None:  # refused: the store holds what it held
            await asyncio.to_thread(keep_credentials, store, repository, before)
        raise


async def registered(client: Client, project_id: str) -> ProjectView | None:
    """The project's registration as Temporal holds it (no worker needed), or None."""
    handle = client.get_workflow_handle(project_workflow_id(project_id))
    try:
        description = await handle.describe(rpc_timeout=timedelta(seconds=10))
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        if err.status in NO_ANSWER:
            raise NoAnswer(f"Temporal did not answer for project {project_id!r}") from err
        raise ProjectError(err.message) from err
    return await _view_of(description)


async def _view_of(execution: WorkflowExecution) -> ProjectView | None:
    view: ProjectView | None = await execution.memo_value(MEMO_KEY, None, type_hint=ProjectView)
    return view


async def greenfield(client: Client, settings: Settings, project_id: str) -> None:
    """Register a greenfield repository for a project nobody registered (a signal: it needs
    no worker now, and does nothing if the project is registered meanwhile)."""
    await client.start_workflow(
        ProjectWorkflow.run,
        ProjectStart(project_id=project_id),
        id=project_workflow_id(project_id),
        task_queue=settings.temporal_task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=f"project {project_id}",
        start_signal="greenfield",
    )


def _timeout(settings: Settings) -> timedelta:
    """Registration waits for git: at least a minute."""
    return timedelta(seconds=max(settings.command_timeout_seconds, 60))


@contextmanager
def _answers(project_id: str) -> Iterator[None]:
    """The registry's refusals as ProjectErrors."""
    try:
        yield
    except WorkflowUpdateFailedError as err:
        raise ProjectRefused(str(getattr(err.cause, "message", err.cause))) from err
    except WorkflowUpdateRPCTimeoutOrCancelledError as err:
        raise NoAnswer(_no_answer(project_id)) from err
    except RPCError as err:
        if err.status in NO_ANSWER:
            raise NoAnswer(_no_answer(project_id)) from err
        raise ProjectError(err.message) from err


async def get_project(client: Client, project_id: str) -> ProjectView:
    view = await registered(client, project_id)
    if view is None:  # never registered, or a registration git refused
        raise ProjectNotFound(f"no project {project_id!r}")
    return view


async def list_projects(client: Client) -> list[ProjectView]:
    """Every registered project, by id."""
    views = []
    async for execution in client.list_workflows(LIST_QUERY, limit=LIST_LIMIT):
        if (view := await _view_of(execution)) is not None:
            views.append(view)
    return sorted(views, key=lambda v: v.project_id)


def _no_answer(project_id: str) -> str:
    return (
        f"no worker answered for project {project_id!r} in time; "
        "is a worker polling its task queue? (`make run` starts one)"
    )
