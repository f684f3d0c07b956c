"""The project registry's activities: ask git whether a repository can be built from, make
the repository of a greenfield project, and a build's place in its project's release queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError

from activities.beat import in_thread
from activities.gitcmd import GitError, create_bare, remote_head
from core.contracts import CHECK_REPOSITORY, CREATE_REPOSITORY, JOIN_RELEASE_QUEUE
from core.projects import (
    ENQUEUE,
    PROJECT_WORKFLOW,
    NewRepository,
    NewRepositoryMade,
    ProjectConfig,
    ProjectStart,
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
                type="RepositoryRefused",
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


def registry(settings: Settings) -> list[Callable[..., Any]]:
    """The registry's activities, as a worker registers them."""
    projects = ProjectActivities(settings)
    return [projects.check_repository, projects.create_repository, projects.join_release_queue]
