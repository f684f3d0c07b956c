"""Non-converging loops: when TESTING or VERIFICATION fails the same way twice, the build
stops spending retries and waits in NEEDS_ATTENTION for a person, who retries with guidance,
rolls back or aborts; nobody answering ends it FAILED."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlmodel import Session
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError

from core.events import EventType
from core.feedback import Feedback
from core.messages import AbortRequest, RetryRequest, RollbackRequest
from core.reports import TestFailure
from core.rules import failure_signature
from core.settings import Settings
from core.states import BuildState
from db import crud
from tests.helpers import fields, make_request, save_history, start, status_of, wait_until
from workflows.build import BuildWorkflow

S = BuildState
pytestmark = pytest.mark.usefixtures("worker")


def needs_attention(status) -> bool:
    return status.state is S.NEEDS_ATTENTION


async def test_a_repeated_failure_asks_a_person_who_retries_then_aborts(client: Client, worker):
    handle = await start(client, worker, make_request(simulate=["tests_always_fail"]))
    asking = await wait_until(handle, needs_attention)
    assert asking.loop_backs == 1 < asking.max_retries == 3  # retries left, not spent
    assert asking.attempts[BuildState.TESTING] == 2
    assert asking.waiting_for is not None
    assert asking.waiting_for.startswith("a person: tests failed twice the same way at testing:")
    assert "test_toggle_twice_restores" in asking.waiting_for

    retry = RetryRequest(reason="toggle() must flip the state both ways", requested_by="ana")
    accepted = await handle.execute_update(BuildWorkflow.update_retry, retry)
    assert (accepted.target_state, accepted.applies) == (S.IMPLEMENTATION, "now")
    again = await wait_until(
        handle, lambda s: needs_attention(s) and s.attempts[BuildState.TESTING] == 3
    )
    assert again.loop_backs == 1  # a person's retry is not an automatic loop-back

    await handle.execute_update(
        BuildWorkflow.update_abort, AbortRequest(reason="needs a redesign", requested_by="ana")
    )
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    status = await status_of(handle)
    assert status.state is S.FAILED and status.last_error == "aborted by ana: needs a redesign"
    kinds = [e.event_type for e in await handle.query(BuildWorkflow.event_log, 0)]
    assert kinds.count(EventType.NEEDS_ATTENTION) == 2 and EventType.ABORTED in kinds
    await save_history(handle, "needs_attention_retry_abort")


async def test_a_rollback_from_needs_attention_goes_back(client: Client, worker):
    handle = await start(client, worker, make_request(simulate=["tests_always_fail"]))
    await wait_until(handle, needs_attention)
    back = RollbackRequest(target_state=S.PLANNING, reason="plan it differently")
    await handle.execute_update(BuildWorkflow.update_rollback, back)
    await wait_until(handle, lambda s: s.attempts.get(BuildState.PLANNING) == 2)
    await handle.execute_update(BuildWorkflow.update_abort, AbortRequest(reason="done here"))
    with pytest.raises(WorkflowFailureError):
        await handle.result()


async def test_nobody_answering_ends_the_build_failed(client: Client, worker):
    request = make_request(simulate=["tests_always_fail"], attention_wait_seconds=1)
    handle = await start(client, worker, request)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    status = await status_of(handle)
    assert status.state is S.FAILED and status.last_error is not None
    assert "nobody answered within 1s" in status.last_error


async def test_different_failures_keep_looping_back(client: Client, worker):
    # verification rejects once, then the tests pass: no repeated signature, no pause.
    handle = await start(client, worker, make_request(simulate=["verification_rejects_once"]))
    assert (await handle.result()).state is S.COMPLETE


def test_a_signature_ignores_numbers_and_spacing_but_not_the_failing_tests():
    def failed(test: str, message: str) -> Feedback:
        return Feedback(failures=[TestFailure(test=test, message=message)])

    one = failed("t::a", "assert 3 == 4 at 0x7f00ab")
    same = failed("t::a", "assert  5 == 6 at 0x1234")
    other = failed("t::b", "assert 3 == 4 at 0x7f00ab")
    assert failure_signature(one) == failure_signature(same)
    assert failure_signature(one) != failure_signature(other)
    review = Feedback(reasons=["Add a docstring", "no tests for reset()"])
    reordered = Feedback(reasons=["No tests for reset()", "add a docstring"])
    assert failure_signature(review) == failure_signature(reordered)


async def test_nobody_approving_ends_the_build_failed_and_mirrored(client: Client, worker):
    gate = "handoff_to_releaser"
    request = make_request(approval_gates=[gate], approval_wait_seconds=2)
    handle = await start(client, worker, request)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    status = await status_of(handle)
    assert status.state is S.FAILED and status.last_error is not None
    assert f"nobody approved {gate} within 2s" in status.last_error
    events = await handle.query(BuildWorkflow.event_log, 0)
    assert events[-1].event_type is EventType.FAILED
    await save_history(handle, "approval_timer")


async def test_an_execution_timeout_ends_the_build_itself_failed_and_mirrored(
    client: Client, worker: Settings, engine: Engine
):
    """A build started with an execution timeout, waiting at a gate nobody answers, ends
    itself FAILED a margin (a quarter of 8 s) before the server would end it without a word."""
    timed = worker.model_copy(update={"build_execution_timeout_seconds": 8})
    handle = await start(client, timed, make_request(approval_gates=["handoff_to_coder"]))
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert "execution timeout of 8s" in str(failed.value.cause)
    assert (await handle.describe()).status is WorkflowExecutionStatus.FAILED  # not TIMED_OUT
    events = await handle.query(BuildWorkflow.event_log, 0)
    assert events[-1].event_type is EventType.FAILED
    assert fields(events[-1])["ending"] == "execution timeout"
    with Session(engine) as session:
        build = crud.get_build(session, workflow_id=handle.id)
    assert build is not None and build.current_state == "failed"
    assert build.failure_reason == "execution timeout" and build.last_seq == events[-1].seq
    await save_history(handle, "own_deadline")
