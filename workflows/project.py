"""ProjectWorkflow: the registry entry of one project, a long-lived entity (id `project-<id>`).

It holds the project's configuration. `configure` replaces it once git has confirmed the
repository and branch can be read (a refusal stores nothing); the `greenfield` signal gives a
project nobody registered a repository the system makes, so greenfield builds work and build
on each other. The registration is also kept in the workflow's memo, so clients read it from
Temporal without waiting for a worker (a build can be started while none runs).

It also holds the project's release queue. A build ready to deliver joins (`enqueue`), in
order of arrival. One that finds nobody ahead holds the turn with the update's answer; one
behind others is signalled (`release_turn`) when its turn comes. The holder keeps the turn
while it re-tests a moved base or resolves a conflict, and `leave`s when it has landed, ended
or been sent back by a person. While others wait, the holder is signalled again every
`check_seconds`: a build that is gone (terminated) cannot take the signal and is dropped.
The entity continues as new when Temporal suggests it, carrying its state.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from core.build_io import CallOptions
    from core.contracts import CHECK_REPOSITORY, CREATE_REPOSITORY, Failure
    from core.projects import (
        ENQUEUE,
        MEMO_KEY,
        PROJECT_WORKFLOW,
        NewRepository,
        ProjectConfig,
        ProjectStart,
        ProjectView,
        QueueJoin,
        QueueLeave,
        QueuePlace,
        ReleaseTurn,
        RepositoryCheck,
    )
    from workflows.calls import execute

GIT_TIMEOUT = timedelta(seconds=120)
CHECK = CallOptions(GIT_TIMEOUT, RetryPolicy(maximum_attempts=1))  # a person waits for it
CREATE = CallOptions(GIT_TIMEOUT, RetryPolicy(maximum_attempts=5))
# A build that joins an empty queue holds the turn with the enqueue update's answer.
GRANT_ON_ENQUEUE_PATCH = "grant-on-enqueue"


@workflow.defn(name=PROJECT_WORKFLOW)
class ProjectWorkflow:
    @workflow.init
    def __init__(self, start: ProjectStart) -> None:
        self.project_id = start.project_id
        self.view = start.view
        self.queue = list(start.queue)
        self.granted = start.granted
        self.lock = asyncio.Lock()  # one change at a time: each awaits git

    @workflow.run
    async def run(self, start: ProjectStart) -> None:
        self._publish()
        while not self._may_continue_as_new():
            if self.queue and self.queue[0] != self.granted:
                await self._grant(self.queue[0])
            else:
                await self._wait_for_change()
        workflow.continue_as_new(
            ProjectStart(
                project_id=self.project_id,
                view=self.view,
                queue=self.queue,
                granted=self.granted,
            )
        )

    async def _wait_for_change(self) -> None:
        """Until the queue's head changes, or it is time to continue as new. While others
        wait, the holder is signalled again every check_seconds: is it still there?"""
        waiting = len(self.queue) > 1

        def changed() -> bool:
            head_changed = bool(self.queue and self.queue[0] != self.granted)
            checks_change = (len(self.queue) > 1) != waiting  # they start or end
            return head_changed or checks_change or self._may_continue_as_new()

        try:
            await workflow.wait_condition(
                changed,
                timeout=timedelta(seconds=self.queue[0].check_seconds) if waiting else None,
            )
        except TimeoutError:
            await self._grant(self.queue[0])

    def _may_continue_as_new(self) -> bool:
        return workflow.info().is_continue_as_new_suggested() and workflow.all_handlers_finished()

    async def _grant(self, head: QueueJoin) -> None:
        """Tell the head of the queue it holds the turn; a build that is gone is dropped."""
        build = workflow.get_external_workflow_handle(head.workflow_id)
        try:
            await build.signal("release_turn", ReleaseTurn(ticket=head.ticket))
        except FailureError as err:
            workflow.logger.warning(
                "project %s: build %s left the release queue (%s)",
                self.project_id,
                head.build_id,
                err,
            )
            self._remove(head.workflow_id, head.ticket)
            return
        self.granted = head

    @workflow.query
    def project(self) -> ProjectView | None:
        return self.view

    @workflow.update(name=ENQUEUE)
    def enqueue(self, join: QueueJoin) -> QueuePlace:
        """A build's place in the release queue, in order of arrival (the same ticket twice
        keeps its place; a build's new ticket replaces its old one)."""
        if not any(self._is(e, join.workflow_id, join.ticket) for e in self.queue):
            self.queue = [e for e in self.queue if e.workflow_id != join.workflow_id]
            self.queue.append(join)
            self._publish()
        place = next(i for i, e in enumerate(self.queue) if e.workflow_id == join.workflow_id)
        granted = place == 0 and workflow.patched(GRANT_ON_ENQUEUE_PATCH)
        if granted:  # nobody ahead: the answer is the grant, a signal round trip less
            self.granted = self.queue[0]
        return QueuePlace(ahead=[e.build_id for e in self.queue[:place]], granted=granted)

    @workflow.signal
    def leave(self, leave: QueueLeave) -> None:
        """A build gives up its place or its turn."""
        self._remove(leave.workflow_id, leave.ticket)

    @workflow.query
    def release_queue(self) -> list[str]:
        return [e.build_id for e in self.queue]

    def _remove(self, workflow_id: str, ticket: int) -> None:
        kept = [e for e in self.queue if not self._is(e, workflow_id, ticket)]
        if len(kept) != len(self.queue):
            self.queue = kept
            self._publish()

    @staticmethod
    def _is(entry: QueueJoin, workflow_id: str, ticket: int) -> bool:
        return entry.workflow_id == workflow_id and entry.ticket == ticket

    @workflow.update
    async def configure(self, config: ProjectConfig) -> ProjectView:
        """Register or change the project; git's refusal fails the update, nothing changes."""
        async with self.lock:
            try:
                checked = await execute(
                    CHECK_REPOSITORY,
                    RepositoryCheck(project_id=self.project_id, config=config),
                    CHECK,
                    summary=f"check {config.repository}",
                )
            except ActivityError as err:
                cause = getattr(err.cause, "message", None) or str(err)
                raise ApplicationError(cause, type=Failure.REPOSITORY_REFUSED) from err
            self.view = ProjectView(project_id=self.project_id, config=config, head=checked.head)
            self._publish()
            return self.view

    @workflow.signal
    async def greenfield(self) -> None:
        """A build started for a project nobody registered: give it a new repository."""
        async with self.lock:
            if self.view is None:
                made = await execute(
                    CREATE_REPOSITORY,
                    NewRepository(project_id=self.project_id),
                    CREATE,
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
            self.view.release_queue = [e.build_id for e in self.queue]
            workflow.upsert_memo({MEMO_KEY: self.view.model_dump(mode="json")})
