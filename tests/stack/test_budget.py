"""A per-build budget no loop can burn through: the build pauses in BUDGET_EXHAUSTED before a
role call once it is spent, a top-up resumes it, and without one it ends FAILED."""

from __future__ import annotations

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.service import RPCError

from core.attributes import BUILD_STATE
from core.events import EventType
from core.messages import RetryRequest, TopUpRequest
from core.states import BuildState
from tests.helpers import (
    fields,
    make_request,
    running_worker,
    save_history,
    start,
    status_of,
    wait_until,
)
from workflows.build import BuildWorkflow

S = BuildState


@pytest.mark.usefixtures("worker")
async def test_a_spent_budget_pauses_the_build_and_a_top_up_resumes_it(client: Client, worker):
    handle = await start(client, worker, make_request(budget={"max_tokens": 1000}))
    paused = await wait_until(handle, lambda s: s.state is S.BUDGET_EXHAUSTED)
    assert paused.waiting_for is not None and paused.waiting_for.startswith("a budget top-up (")
    assert "of 1000 tokens used" in paused.waiting_for and paused.tokens >= 1000
    assert paused.progress > 0  # the progress of the state it paused in
    assert (await handle.describe()).typed_search_attributes.get(BUILD_STATE) == "budget_exhausted"

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(BuildWorkflow.update_retry, RetryRequest(reason="go"))
    assert "paused until its budget is topped up" in str(refused.value.cause)

    answer = await handle.execute_update(
        BuildWorkflow.update_top_up, TopUpRequest(tokens=100_000, note="approved")
    )
    assert answer.resumes and answer.max_tokens == 101_000
    result = await handle.result()
    assert result.state is S.COMPLETE
    status = await status_of(handle)
    assert status.attempts == {s.value: 1 for s in status.completed_phases}  # nothing run twice
    events = await handle.query(BuildWorkflow.event_log, 0)
    kinds = [e.event_type for e in events]
    assert kinds.count(EventType.BUDGET_EXHAUSTED) == 1 and EventType.TOPPED_UP in kinds
    pause = next(e for e in events if e.event_type is EventType.BUDGET_EXHAUSTED)
    moves = [fields(e)["to"] for e in events if e.event_type is EventType.STATE_CHANGED]
    resumed_in = fields(pause)["paused_in"]
    assert moves[moves.index("budget_exhausted") + 1] == resumed_in
    await save_history(handle, "budget_paused_and_topped_up")


@pytest.mark.usefixtures("worker")
async def test_without_a_top_up_the_build_ends_failed(client: Client, worker):
    request = make_request(budget={"max_cost_usd": 0.0001, "wait_seconds": 1})
    handle = await start(client, worker, request)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    status = await status_of(handle)
    assert status.state is S.FAILED and status.cost_usd >= 0.0001
    assert status.last_error is not None
    assert (
        "budget exhausted ($" in status.last_error
        and "not topped up within 1s" in status.last_error
    )


@pytest.mark.usefixtures("worker")
async def test_a_top_up_signal_works_too_and_a_finished_build_refuses_one(client: Client, worker):
    handle = await start(client, worker, make_request(budget={"max_tokens": 500}))
    await wait_until(handle, lambda s: s.state is S.BUDGET_EXHAUSTED)
    await handle.signal(BuildWorkflow.top_up, TopUpRequest(tokens=1_000_000))
    assert (await handle.result()).state is S.COMPLETE
    with pytest.raises(RPCError, match="already completed"):
        await handle.execute_update(BuildWorkflow.update_top_up, TopUpRequest(tokens=1))


async def test_the_budget_lives_in_the_workflow_across_a_worker_restart(
    client: Client, settings, engine
):
    async with running_worker(client, settings, engine):
        handle = await start(client, settings, make_request(budget={"max_tokens": 900}))
        await wait_until(handle, lambda s: s.state is S.BUDGET_EXHAUSTED)
    # That worker is gone; a new one rebuilds the build (and its budget) from history.
    async with running_worker(client, settings, engine):
        paused = await status_of(handle)
        assert paused.state is S.BUDGET_EXHAUSTED and paused.tokens >= 900
        answer = await handle.execute_update(
            BuildWorkflow.update_top_up, TopUpRequest(tokens=50_000)
        )
        assert answer.max_tokens == 50_900 and answer.resumes
        assert (await handle.result()).state is S.COMPLETE


def test_a_top_up_needs_an_amount():
    with pytest.raises(ValueError, match="needs tokens or cost_usd above 0"):
        TopUpRequest()
