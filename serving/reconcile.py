"""Builds ended from outside their workflow (terminated from the Web UI or the CLI, ended by an
execution timeout) say nothing as they go: the workflow never runs again to write its mirror.
The reconciler, which every worker runs, asks Temporal about each build the mirror still calls
open and writes the ones Temporal has closed as FAILED (or CANCELLED) with what ended them. A
build reset from the Web UI runs on in a new run, which mirrors itself, so it is left alone.
Idempotent: of several workers, one writes each build, once."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.api.enums.v1 import EventType as HistoryEvent
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryReverseRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from core.states import BuildState
from db import reconciled

log = logging.getLogger("reconcile")
Status = WorkflowExecutionStatus
ENDED = {
    Status.TERMINATED: (BuildState.FAILED, "terminated from outside the build"),
    Status.TIMED_OUT: (BuildState.FAILED, "ended by its execution timeout"),
    Status.CANCELED: (BuildState.CANCELLED, "cancelled from outside the build"),
    Status.FAILED: (BuildState.FAILED, "its workflow failed before it could say so"),
    Status.COMPLETED: (BuildState.FAILED, "its workflow closed before it could say so"),
}


async def _terminate_reason(client: Client, workflow_id: str, run_id: str | None) -> str:
    """The reason given with a terminate (the last event of the run's history), if any."""
    request = GetWorkflowExecutionHistoryReverseRequest(
        namespace=client.namespace, maximum_page_size=1
    )
    request.execution.workflow_id = workflow_id
    request.execution.run_id = run_id or ""
    answer = await client.workflow_service.get_workflow_execution_history_reverse(request)
    for event in answer.history.events:
        if event.event_type == HistoryEvent.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
            attributes = event.workflow_execution_terminated_event_attributes
            return f"{attributes.reason or 'no reason given'} ({attributes.identity or '?'})"
    return ""


async def reconcile_once(client: Client, engine: Engine) -> int:
    """One pass over the builds the mirror calls open; how many were written as ended."""
    with Session(engine) as session:
        open_ids = await asyncio.to_thread(reconciled.open_builds, session)
    written = 0
    for workflow_id in open_ids:
        try:
            described = await client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            continue  # not (yet, or any longer) known to this namespace: nothing to say
        if described.status not in ENDED:
            continue  # running, a reset's new run included
        state, what = ENDED[described.status]
        said = ""
        if described.status is Status.TERMINATED:
            said = await _terminate_reason(client, workflow_id, described.run_id)
        reason = f"{what}: {said}" if said else what
        at = described.close_time or datetime.now(UTC)
        if await asyncio.to_thread(
            reconciled.record_ended_outside,
            engine, workflow_id=workflow_id, state=state, reason=reason, at=at,
        ):  # fmt: skip
            written += 1
            log.warning("build %s %s; mirrored as %s", workflow_id, reason, state.value)
    return written


async def reconcile_forever(client: Client, engine: Engine, every_seconds: float) -> None:
    """reconcile_once every `every_seconds`; a failed pass is logged and tried again."""
    while True:
        try:
            await reconcile_once(client, engine)
        except Exception as err:  # the database or Temporal away for a while: next pass
            log.warning("reconciling the mirror failed, trying again: %s", err)
        await asyncio.sleep(every_seconds)
