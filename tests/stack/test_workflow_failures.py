"""Builds that end without COMPLETE: a refused model request, a cancel mid-call."""

from __future__ import annotations

import httpx2
import pytest
from pydantic import SecretStr
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from core.events import EventType
from core.settings import Settings
from core.states import BuildState, Role
from tests.helpers import (
    make_request,
    model_client_with,
    running_worker,
    save_history,
    start,
    status_of,
    wait_until,
)
from workflows.build import BuildWorkflow


async def test_rejected_api_key_ends_failed_with_an_actionable_message(
    client: Client, settings: Settings, engine
):
    calls: list[str] = []

    async def denied(request: httpx2.Request) -> httpx2.Response:
        calls.append(request.url.path)
        return httpx2.Response(401, json={"error": {"message": "Incorrect API key provided"}})

    keyed = settings.model_copy(update={"openai_api_key": SecretStr("sk-bad")})
    llm = model_client_with(keyed, denied)
    async with running_worker(client, keyed, engine, llm):
        handle = await start(client, keyed, make_request())
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
    assert "OPENAI_API_KEY rejected by the endpoint" in str(err.value.cause)
    status = await status_of_closed(client, keyed, engine, handle.id)
    assert status.state is BuildState.FAILED
    assert status.last_error and "q_assistant failed in discovery" in status.last_error
    # Non-retryable: one chat request, no Temporal retry, no SDK retry (before it, the client
    # asked the endpoint once for its context window: /models, then llama.cpp's /props).
    assert calls == ["/v1/models", "/props", "/v1/chat/completions"]


async def status_of_closed(client: Client, settings: Settings, engine, workflow_id: str):
    # Queries on a closed build need a worker of the workflow; the activities are not used.
    async with running_worker(client, settings, engine):
        return await status_of(client.get_workflow_handle(workflow_id))


async def test_cancel_while_a_role_is_working_ends_cancelled(
    client: Client, settings: Settings, engine
):
    slow = settings.model_copy(update={"offline_model_latency_seconds": 30})
    async with running_worker(client, slow, engine):
        handle = await start(client, slow, make_request())
        await wait_until(handle, lambda s: s.current_role is Role.Q_ASSISTANT)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await status_of(handle)
        events = await handle.query(BuildWorkflow.event_log, 0)
        await save_history(handle, "cancel_during_role_call")
    assert status.state is BuildState.CANCELLED
    assert (await handle.describe()).status is WorkflowExecutionStatus.CANCELED
    assert events[-1].event_type is EventType.CANCELLED
    assert not any(e.event_type is EventType.FAILED for e in events)
