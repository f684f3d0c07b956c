"""The project registry's activities: ask git whether a repository can be built from, make
the repository of a greenfield project, and a build's place in its project's release queue."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import WithStartWorkflowOperation, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.beat import in_thread
from activities.repository.gitcmd import GitError, create_bare, remote_head
from core.contracts import CHECK_REPOSITORY, CREATE_REPOSITORY, JOIN_RELEASE_QUEUE, Failure
from core.projects import (
    ENQUEUE,
    MEMO_KEY,
    PROJECT_WORKFLOW,
    NewRepository,
    NewRepositoryMade,
    ProjectConfig,
    ProjectStart,
    ProjectView,
    QueueJoin,
    QueuePlace,
    RepositoryCheck,
    RepositoryChecked,
    project_workflow_id,
)
from core.settings import Settings


def greenfield(settings: Settings, project_id: str) -> ProjectConfig:
    """The configuration of a project nobody registered: a bare repository under PROJECTS_DIR."""
    return ProjectConfig(repository=str(settings.projects / f"{project_id}.git"))


class ProjectActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn(name=CHECK_REPOSITORY.name)
    async def check_repository(self, check: RepositoryCheck) -> RepositoryChecked:
        """The branch's head; a repository git cannot read or a missing branch is refused
        with git's reason (not retried: registration answers a person at once)."""
        config = check.config
        try:
            head = await in_thread("git ls-remote", remote_head, config.repository, config.branch)
        except GitError as err:
            raise ApplicationError(
                f"cannot use {config.repository!r} (branch {config.branch!r}): {err.reason}",
                type=Failure.REPOSITORY_REFUSED,
                non_retryable=True,
            ) from err
        return RepositoryChecked(head=head)

    @activity.defn(name=CREATE_REPOSITORY.name)
    async def create_repository(self, new: NewRepository) -> NewRepositoryMade:
        config = greenfield(self.settings, new.project_id)
        path = self.settings.projects / f"{new.project_id}.git"
        head = await in_thread("git init --bare", create_bare, path, config.branch)
        return NewRepositoryMade(repository=config.repository, head=head)

    @activity.defn(name=JOIN_RELEASE_QUEUE.name)
    async def join_release_queue(self, join: QueueJoin) -> QueuePlace:
        """The build's place in its project's release queue. The registry is started if it
        does not run (a build started with its configuration in hand); the same ticket twice
        answers the same place, so a retried join is harmless."""
        join = join.model_copy(update={"check_seconds": self.settings.release_queue_check_seconds})
        await self._serve_registry_here(join.project_id)
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            PROJECT_WORKFLOW,
            ProjectStart(project_id=join.project_id),
            id=project_workflow_id(join.project_id),
            task_queue=self.settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"project {join.project_id}",
        )
        place: QueuePlace = await activity.client().execute_update_with_start_workflow(
            ENQUEUE, join, start_workflow_operation=start, result_type=QueuePlace
        )
        return place

    async def _serve_registry_here(self, project_id: str) -> None:
        """A registry entity runs on the task queue that started it. If that is not this
        worker's and no worker polls it any more (TEMPORAL_TASK_QUEUE was changed), nothing
        would ever answer the join: the registry is started again on this worker's queue
        with its registration (its memo), and the builds that were waiting in it join again
        as their joins are retried."""
        client = activity.client()
        ours = self.settings.temporal_task_queue
        handle = client.get_workflow_handle(project_workflow_id(project_id))
        try:
            described = await handle.describe()
        except RPCError as err:
            if err.status is RPCStatusCode.NOT_FOUND:
                return
            raise
        running = described.status is WorkflowExecutionStatus.RUNNING
        if not running or described.task_queue == ours or await _polled(described.task_queue):
            return
        view: ProjectView | None = await described.memo_value(MEMO_KEY, None, type_hint=ProjectView)
        activity.logger.warning(
            "project %s: its registry ran on task queue %r, which no worker polls; "
            "starting it again on %r",
            project_id,
            described.task_queue,
            ours,
        )
        with contextlib.suppress(RPCError):  # another join moved it first
            await handle.terminate(reason=f"moved to task queue {ours!r}: nobody polls its own")
        await client.start_workflow(
            PROJECT_WORKFLOW,
            ProjectStart(project_id=project_id, view=view),
            id=project_workflow_id(project_id),
            task_queue=ours,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            memo={MEMO_KEY: view.model_dump(mode="json")} if view else None,
            static_summary=f"project {project_id}",
        )


async def _polled(task_queue: str) -> bool:
    """Whether any worker has polled `task_queue` for workflow tasks lately."""
    client = activity.client()
    answer = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return bool(answer.pollers)


def registry(settings: Settings) -> list[Callable[..., Any]]:
    """The registry's activities, as a worker registers them."""
    projects = ProjectActivities(settings)
    return [projects.check_repository, projects.create_repository, projects.join_release_queue]
