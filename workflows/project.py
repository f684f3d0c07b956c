"""ProjectWorkflow: the registry entry of one project, a long-lived entity (id `project-<id>`).

It holds the project's configuration. `configure` replaces it once git has confirmed the
repository and branch can be read (a refusal stores nothing); the `greenfield` signal gives a
project nobody registered a repository the system makes, so greenfield builds work and build
on each other. The registration is also kept in the workflow's memo, so clients read it from
Temporal without waiting for a worker (a build can be started while none runs). The entity
continues as new when Temporal suggests it, carrying its state.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from core.contracts import CHECK_REPOSITORY, CREATE_REPOSITORY
    from core.projects import (
        NewRepository,
        ProjectConfig,
        ProjectView,
        RepositoryCheck,
    )

GIT_TIMEOUT = timedelta(seconds=120)
CHECK_RETRY = RetryPolicy(maximum_attempts=1)  # a person waits for the answer
CREATE_RETRY = RetryPolicy(maximum_attempts=5)


class ProjectStart(BaseModel):
    """The entity's input: its id, and its state when it continues as new."""

    project_id: str
    view: ProjectView | None = None


MEMO_KEY = "project"


@workflow.defn(name="ProjectWorkflow")
class ProjectWorkflow:
    @workflow.init
    def __init__(self, start: ProjectStart) -> None:
        self.project_id = start.project_id
        self.view = start.view
        self.lock = asyncio.Lock()  # one change at a time: each awaits git

    @workflow.run
    async def run(self, start: ProjectStart) -> None:
        self._publish()
        await workflow.wait_condition(
            lambda: (
                workflow.info().is_continue_as_new_suggested() and workflow.all_handlers_finished()
            )
        )
        workflow.continue_as_new(ProjectStart(project_id=self.project_id, view=self.view))

    @workflow.query
    def project(self) -> ProjectView | None:
        return self.view

    @workflow.update
    async def configure(self, config: ProjectConfig) -> ProjectView:
        """Register or change the project; git's refusal fails the update, nothing changes."""
        async with self.lock:
            try:
                checked = await workflow.execute_activity(
                    CHECK_REPOSITORY.name,
                    RepositoryCheck(project_id=self.project_id, config=config),
                    result_type=CHECK_REPOSITORY.result,
                    start_to_close_timeout=GIT_TIMEOUT,
                    retry_policy=CHECK_RETRY,
                    summary=f"check {config.repository}",
                )
            except ActivityError as err:
                cause = getattr(err.cause, "message", None) or str(err)
                raise ApplicationError(cause, type="RepositoryRefused") from err
            self.view = ProjectView(project_id=self.project_id, config=config, head=checked.head)
            self._publish()
            return self.view

    @workflow.signal
    async def greenfield(self) -> None:
        """A build started for a project nobody registered: give it a new repository."""
        async with self.lock:
            if self.view is None:
                made = await workflow.execute_activity(
                    CREATE_REPOSITORY.name,
                    NewRepository(project_id=self.project_id),
                    result_type=CREATE_REPOSITORY.result,
                    start_to_close_timeout=GIT_TIMEOUT,
                    retry_policy=CREATE_RETRY,
                    summary="create the repository",
                )
                self.view = ProjectView(
                    project_id=self.project_id,
                    config=ProjectConfig(repository=made.repository),
                    created_by_system=True,
                    head=made.head,
                )
                self._publish()

    def _publish(self) -> None:
        if self.view is not None:
            workflow.upsert_memo({MEMO_KEY: self.view.model_dump(mode="json")})
