"""A build's turn to deliver into its project: the project's release queue (workflows/
project.py) as the build sees it. A composed part of BuildWorkflow.

The build joins when it reaches DEPLOYMENT. With nobody ahead, the registry's answer gives it
the turn; otherwise it waits until the registry signals that its ticket holds the turn. It
keeps the turn while it re-tests a merged base or resolves a conflict (so a busy project
cannot starve it), and leaves when it has delivered, ended, or paused for a person; a later
DEPLOYMENT joins again with a new ticket.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from core.build_data import BuildData
    from core.build_io import BuildRequest, CallOptions
    from core.contracts import JOIN_RELEASE_QUEUE
    from core.events import ReleaseQueued, TurnTaken
    from core.outcomes import Actor
    from core.projects import QueueJoin, QueueLeave, ReleaseTurn, project_workflow_id
    from workflows.calls import execute
    from workflows.records import BuildRecords

# Retried until Temporal answers.
JOIN = CallOptions(timedelta(seconds=60), RetryPolicy(maximum_interval=timedelta(seconds=30)))


class BuildTurn:
    def __init__(self, request: BuildRequest, data: BuildData, records: BuildRecords) -> None:
        self.request = request
        self.data = data
        self.records = records

    async def take(self) -> None:
        """Hold the project's release turn, waiting for it in order of arrival; returns
        early when a person's command is pending (the caller applies it)."""
        queue = self.data.queue
        if queue.turn == "holding":
            return
        queue.ticket += 1
        queue.turn = "waiting"  # before the join: the grant may arrive with its answer
        join = QueueJoin(
            project_id=self.request.project_id,
            workflow_id=workflow.info().workflow_id,
            build_id=self.request.build_id,
            ticket=queue.ticket,
        )
        place = await execute(
            JOIN_RELEASE_QUEUE,
            join,
            JOIN,
            summary=f"join {self.request.project_id}'s release queue",
        )
        queue.ahead = place.ahead
        if place.granted and queue.turn == "waiting":  # nobody ahead: the answer is the grant
            queue.turn = "holding"
        self.records.emit(ReleaseQueued(ahead=place.ahead, ticket=queue.ticket), Actor.SYSTEM)
        self.records.show()
        queued_at = workflow.now()
        # First in the queue, the grant is on its way. Behind others, the wait may be long:
        # the mirror shows it, and what happens meanwhile (rejected signals) as it happens.
        behind = bool(place.ahead)
        while self._waiting():
            if behind:
                await self.records.mirror()
            await workflow.wait_condition(
                lambda: not self._waiting() or (behind and self.records.unmirrored())
            )
        if queue.turn == "holding":
            waited = (workflow.now() - queued_at).total_seconds()
            self.records.emit(TurnTaken(waited_seconds=round(waited, 3)), Actor.SYSTEM)
        queue.ahead = []
        self.records.show()

    def _waiting(self) -> bool:
        return self.data.queue.turn == "waiting" and self.data.steering.pending is None

    def granted(self, turn: ReleaseTurn) -> None:
        """The registry's signal: this ticket holds the turn (a stale or repeated one is
        ignored; the registry repeats it to see the build still runs)."""
        queue = self.data.queue
        if queue.turn == "waiting" and turn.ticket == queue.ticket:
            queue.turn = "holding"

    async def leave(self) -> None:
        """Give up the build's place or turn; the next build's turn comes."""
        queue = self.data.queue
        if queue.turn is None:
            return
        queue.turn = None
        queue.ahead = []
        project = workflow.get_external_workflow_handle(
            project_workflow_id(self.request.project_id)
        )
        try:
            await project.signal(
                "leave",
                QueueLeave(workflow_id=workflow.info().workflow_id, ticket=queue.ticket),
            )
        except FailureError as err:  # the registry is gone: there is no queue to leave
            workflow.logger.warning(
                "build %s: leaving the release queue: %s", self.request.build_id, err
            )
