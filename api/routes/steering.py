"""Steering a build through its workflow's validated updates: approve the gate it waits at,
retry, roll back, abort, top up its budget. A refusal is a 409 with the workflow's reason."""

from __future__ import annotations

from typing import TypeVar

from fastapi import APIRouter, status
from temporalio.client import Client
from temporalio.workflow import UpdateMethodMultiParam

from api.deps import ClientDep, SettingsDep, WorkflowId
from api.schemas import (
    AbortAccepted,
    AbortBody,
    Advance,
    Advanced,
    RetryAccepted,
    RetryBody,
    RollbackAccepted,
    RollbackBody,
    TopUpAnswer,
    TopUpBody,
    answers,
)
from client import builds
from core.messages import ApproveRequest, CommandAccepted
from core.settings import Settings
from workflows.build import BuildWorkflow

CommandT = TypeVar("CommandT")
router = APIRouter(prefix="/api/workflows", tags=["workflows"], responses=answers(400, 401, 503))


async def _steer(
    client: Client,
    settings: Settings,
    workflow_id: str,
    update: UpdateMethodMultiParam[[BuildWorkflow, CommandT], CommandAccepted],
    command: CommandT,
) -> tuple[str, CommandAccepted]:
    """Run one of the workflow's validated updates: the build's workflow id and its answer."""
    handle = builds.handle_for(client, workflow_id)
    accepted = await builds.update(handle, update, command, rpc_timeout=settings.command_timeout)
    return handle.id, accepted


@router.post("/{workflow_id}/advance", responses=answers(404, 409))
async def advance(
    workflow_id: WorkflowId, body: Advance, client: ClientDep, settings: SettingsDep
) -> Advanced:
    """Approve the gate the build waits at; 409 with the reason when nothing waits."""
    approval = ApproveRequest(
        note=body.notes, approved_by=body.role.value, phase_result=body.phase_result
    )
    wid, answer = await _steer(
        client, settings, workflow_id, BuildWorkflow.update_approve, approval
    )
    return Advanced.of(wid, answer, advanced_by=body.role, state=answer.target_state)


@router.post(
    "/{workflow_id}/request-retry",
    status_code=status.HTTP_202_ACCEPTED,
    responses=answers(404, 409),
)
async def request_retry(
    workflow_id: WorkflowId, body: RetryBody, client: ClientDep, settings: SettingsDep
) -> RetryAccepted:
    """Send the build back to IMPLEMENTATION with the reason as guidance."""
    return RetryAccepted.of(
        *await _steer(client, settings, workflow_id, BuildWorkflow.update_retry, body)
    )


@router.post(
    "/{workflow_id}/rollback", status_code=status.HTTP_202_ACCEPTED, responses=answers(404, 409)
)
async def rollback(
    workflow_id: WorkflowId, body: RollbackBody, client: ClientDep, settings: SettingsDep
) -> RollbackAccepted:
    """Roll the build back to an earlier working state (discovery ... deployment)."""
    return RollbackAccepted.of(
        *await _steer(client, settings, workflow_id, BuildWorkflow.update_rollback, body)
    )


@router.post(
    "/{workflow_id}/abort", status_code=status.HTTP_202_ACCEPTED, responses=answers(404, 409)
)
async def abort(
    workflow_id: WorkflowId, body: AbortBody, client: ClientDep, settings: SettingsDep
) -> AbortAccepted:
    """End the build FAILED with the reason: at once at a gate or pause, else after the phase."""
    return AbortAccepted.of(
        *await _steer(client, settings, workflow_id, BuildWorkflow.update_abort, body)
    )


@router.post("/{workflow_id}/top-up", responses=answers(404, 409))
async def top_up(
    workflow_id: WorkflowId, body: TopUpBody, client: ClientDep, settings: SettingsDep
) -> TopUpAnswer:
    """Add to the build's budget; a build paused in budget_exhausted goes on."""
    handle = builds.handle_for(client, workflow_id)
    answer = await builds.update(
        handle, BuildWorkflow.update_top_up, body, rpc_timeout=settings.command_timeout
    )
    return TopUpAnswer(workflow_id=handle.id, **dict(answer))
