"""BuildWorkflow against the real Temporal dev server, with the offline model via the openai SDK."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.service import RPCError

from client.errors import BuildExists
from core.attributes import (
    BUILD_STATE,
    COST,
    PROJECT_ID,
    TEST_ATTEMPTS,
    TOKENS,
    VERIFICATION_ATTEMPTS,
)
from core.build_io import BuildResult
from core.events import EventType
from core.messages import ApproveRequest, RetryRequest, RollbackRequest
from core.mirror import BuildEvent
from core.role_io import ImplementationSummary
from core.states import PATH, WORKING, BuildState, Role
from tests.helpers import (
    fields,
    make_request,
    release_of,
    save_history,
    start,
    status_of,
    wait_until,
)
from workflows.build import BuildWorkflow

S = BuildState
pytestmark = pytest.mark.usefixtures("worker")


async def events_of(handle: WorkflowHandle) -> list[BuildEvent]:
    return await handle.query(BuildWorkflow.event_log, 0)


def states_visited(events: list[BuildEvent]) -> list[str]:
    return [fields(e)["to"] for e in events if e.event_type is EventType.STATE_CHANGED]


async def test_happy_path_reaches_complete_with_full_status(client: Client, worker):
    handle = await start(client, worker, make_request(project=f"p-{uuid.uuid4().hex[:8]}"))
    result: BuildResult = await handle.result()
    assert result.state is S.COMPLETE
    assert release_of(result).version == "v0.1.0"  # the first release of a new project

    status = await status_of(handle)
    assert status.state is S.COMPLETE and status.progress == 100
    assert status.current_role is None and status.waiting_for is None
    assert status.completed_phases == list(WORKING)
    assert status.attempts == {s.value: 1 for s in WORKING}
    assert status.loop_backs == 0 and status.last_error is None
    assert {role: u["calls"] for role, u in status.usage.items()} == {
        "q_assistant": 2,
        "code_writer": 1,
        "test_auditor": 1,
        "verification_overseer": 1,
        "release_manager": 1,
    }
    summed = sum(u["prompt_tokens"] + u["completion_tokens"] for u in status.usage.values())
    assert status.tokens == summed > 0
    # The offline model is priced as the model it stands in for (gpt-4o-mini).
    assert (
        status.cost_usd == pytest.approx(sum(u["cost_usd"] for u in status.usage.values()))
        and 0 < status.cost_usd < 0.01
    )

    events = await events_of(handle)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert states_visited(events) == [s.value for s in PATH]
    calls = [e for e in events if e.event_type is EventType.ROLE_CALL]
    assert [c.triggered_by for c in calls] == [
        "q_assistant",
        "q_assistant",
        "code_writer",
        "test_auditor",
        "verification_overseer",
        "release_manager",
    ]
    assert all(fields(c)["prompt_tokens"] > 0 and fields(c)["prompt_version"] for c in calls)

    handoffs = await handle.query(BuildWorkflow.handoff_log)
    assert [(h.from_role, h.to_role) for h in handoffs] == [
        (Role.Q_ASSISTANT, Role.CODE_WRITER),
        (Role.CODE_WRITER, Role.TEST_AUDITOR),
        (Role.TEST_AUDITOR, Role.VERIFICATION_OVERSEER),
        (Role.VERIFICATION_OVERSEER, Role.RELEASE_MANAGER),
    ]
    to_tester = handoffs[1]
    assert isinstance(to_tester.previous_output, ImplementationSummary)
    assert to_tester.previous_output.files[0].path == "dark_mode.py"
    assert to_tester.phase_data.discovery and to_tester.phase_data.discovery.acceptance_criteria
    assert to_tester.metadata.attempt == 1 and to_tester.instructions

    described = await handle.describe()
    timeout = described.raw_description.execution_config.workflow_execution_timeout
    # No server-side timeout: it would end a build waiting for a person without a word.
    assert not timeout.seconds and worker.build_execution_timeout_seconds == 0
    attrs = described.typed_search_attributes
    assert attrs.get(BUILD_STATE) == "complete"
    assert attrs.get(PROJECT_ID) == status.project_id
    assert attrs.get(TOKENS) == status.tokens and attrs.get(TEST_ATTEMPTS) == 1
    assert attrs.get(COST) == pytest.approx(status.cost_usd)
    assert attrs.get(VERIFICATION_ATTEMPTS) == 1
    await save_history(handle, "happy_path")


async def test_tests_fail_once_loops_back_with_the_failures(client: Client, worker):
    handle = await start(client, worker, make_request(simulate=["tests_fail_once"]))
    await handle.result()
    status = await status_of(handle)
    assert status.state is S.COMPLETE
    assert (
        status.attempts[BuildState.IMPLEMENTATION] == 2 and status.attempts[BuildState.TESTING] == 2
    )
    assert status.attempts[BuildState.VERIFICATION] == 1 and status.loop_backs == 1
    events = await events_of(handle)
    loop = next(e for e in events if e.event_type is EventType.LOOP_BACK)
    assert loop.state is S.TESTING and fields(loop)["reason"] == "tests failed"
    assert fields(loop)["feedback"]["failures"][0]["test"].endswith("test_toggle_twice_restores")
    visited = states_visited(events)
    assert visited.index("implementation") < visited.index("testing")
    assert visited[visited.index("testing") + 1] == "implementation"
    # The code writer's second attempt saw the failures as context.
    history = await handle.fetch_history()
    results = [
        e.activity_task_completed_event_attributes.result.payloads[0].data.decode()
        for e in history.events
        if e.HasField("activity_task_completed_event_attributes")
    ]
    assert any("Attempt 2" in r and "fixes the reported problems" in r for r in results)
    await save_history(handle, "tests_fail_once")


async def test_verification_rejects_once_loops_back(client: Client, worker):
    handle = await start(client, worker, make_request(simulate=["verification_rejects_once"]))
    await handle.result()
    status = await status_of(handle)
    assert status.state is S.COMPLETE
    assert (
        status.attempts[BuildState.VERIFICATION] == 2
        and status.attempts[BuildState.IMPLEMENTATION] == 2
    )
    assert status.attempts[BuildState.TESTING] == 2 and status.loop_backs == 1
    loop = next(e for e in await events_of(handle) if e.event_type is EventType.LOOP_BACK)
    assert loop.state is S.VERIFICATION and fields(loop)["feedback"]["reasons"]
    await save_history(handle, "verification_rejects_once")


async def test_tests_always_fail_ends_failed_after_max_retries(client: Client, worker):
    # max_retries=1: the repeated failure finds no retries left, so no person is asked.
    handle = await start(
        client, worker, make_request(simulate=["tests_always_fail"], max_retries=1)
    )
    with pytest.raises(WorkflowFailureError) as err:
        await handle.result()
    assert "retries exhausted" in str(err.value.cause)
    status = await status_of(handle)
    assert status.state is S.FAILED
    assert status.attempts[BuildState.TESTING] == 2 and status.loop_backs == 1
    assert status.last_error and "retries exhausted" in status.last_error
    assert "max_retries=1" in status.last_error
    events = await events_of(handle)
    assert events[-1].event_type is EventType.FAILED
    assert (await handle.describe()).status is WorkflowExecutionStatus.FAILED
    await save_history(handle, "tests_always_fail")


async def test_gate_waits_and_takes_retry_rollback_and_approve(client: Client, worker):
    gate = S.HANDOFF_TO_RELEASER
    handle = await start(client, worker, make_request(approval_gates=[gate.value]))
    status = await wait_until(handle, lambda s: s.waiting_for is not None)
    assert status.state is gate and status.waiting_for == "approval at handoff_to_releaser"

    # Invalid signal: rejected, recorded, the build keeps waiting.
    bad = RollbackRequest(target_state=S.DEPLOYMENT, reason="forward?")
    await handle.signal(BuildWorkflow.rollback, bad)
    rejected = await wait_for_event(handle, EventType.SIGNAL_REJECTED)
    assert "cannot roll back forward" in fields(rejected)["reason"]
    assert (await status_of(handle)).waiting_for is not None

    # Invalid update: refused with the reason, nothing changes.
    with pytest.raises(WorkflowUpdateFailedError) as err:
        await handle.execute_update(BuildWorkflow.update_rollback, bad)
    assert "cannot roll back forward" in str(err.value.cause)

    # Retry signal at the gate: back to implementation, then the gate again.
    await handle.signal(BuildWorkflow.retry, RetryRequest(reason="use a context manager"))
    status = await wait_until(
        handle, lambda s: s.waiting_for is not None and s.attempts[BuildState.IMPLEMENTATION] == 2
    )
    assert status.state is gate and status.attempts[BuildState.TESTING] == 2

    # Rollback update at the gate: back to planning, completed phases trimmed.
    accepted = await handle.execute_update(
        BuildWorkflow.update_rollback, RollbackRequest(target_state=S.PLANNING, reason="replan")
    )
    assert (accepted.from_state, accepted.target_state, accepted.applies) == (
        gate,
        S.PLANNING,
        "now",
    )
    status = await wait_until(
        handle, lambda s: s.waiting_for is not None and s.attempts[BuildState.PLANNING] == 2
    )
    assert status.attempts[BuildState.IMPLEMENTATION] == 3

    approved = await handle.execute_update(BuildWorkflow.update_approve, ApproveRequest(note="ok"))
    assert approved.target_state is S.DEPLOYMENT
    await handle.result()
    events = await events_of(handle)
    kinds = [e.event_type for e in events]
    assert kinds.count(EventType.APPROVAL_REQUESTED) == 3
    assert EventType.RETRY_REQUESTED in kinds and EventType.ROLLBACK in kinds
    assert kinds.count(EventType.APPROVED) == 1
    retry_event = next(e for e in events if e.event_type is EventType.RETRY_REQUESTED)
    assert fields(retry_event) == {"target": "implementation", "reason": "use a context manager"}
    # The person's reason reached the later handoffs as guidance.
    handoffs = await handle.query(BuildWorkflow.handoff_log)
    assert handoffs[-1].metadata.guidance == ["use a context manager", "replan"]
    await save_history(handle, "gate_retry_rollback_approve")


async def wait_for_event(handle: WorkflowHandle, kind: EventType) -> BuildEvent:
    async with asyncio.timeout(10):
        while True:
            for event in await events_of(handle):
                if event.event_type is kind:
                    return event
            await asyncio.sleep(0.05)


async def test_approve_without_a_gate_is_refused(client: Client, worker):
    handle = await start(client, worker, make_request(approval_gates=["handoff_to_tester"]))
    await wait_until(handle, lambda s: s.waiting_for is not None)
    await handle.signal(BuildWorkflow.approve, ApproveRequest())
    await wait_until(handle, lambda s: s.waiting_for is None)
    with pytest.raises(WorkflowUpdateFailedError) as err:
        await handle.execute_update(BuildWorkflow.update_approve, ApproveRequest())
    assert "nothing waits for approval" in str(err.value.cause)
    await handle.result()


async def test_messages_to_a_finished_build_are_refused(client: Client, worker):
    handle = await start(client, worker, make_request())
    await handle.result()
    before = await events_of(handle)
    with pytest.raises(RPCError) as err:
        await handle.signal(BuildWorkflow.retry, RetryRequest(reason="again"))
    assert "completed" in err.value.message
    with pytest.raises(RPCError):
        await handle.execute_update(BuildWorkflow.update_retry, RetryRequest(reason="again"))
    assert await events_of(handle) == before


async def test_duplicate_start_is_refused_not_run_twice(client: Client, worker):
    request = make_request()
    handle = await start(client, worker, request)
    with pytest.raises(BuildExists, match="already exists"):
        await start(client, worker, request)
    await handle.result()
    with pytest.raises(BuildExists, match="already exists"):
        await start(client, worker, request)  # also after it finished
    runs = [w async for w in client.list_workflows(f"WorkflowId = '{request.workflow_id}'")]
    assert len(runs) == 1


async def test_cancel_ends_cancelled(client: Client, worker):
    handle = await start(client, worker, make_request(approval_gates=["handoff_to_coder"]))
    await wait_until(handle, lambda s: s.waiting_for is not None)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    status = await status_of(handle)
    assert status.state is S.CANCELLED
    attrs = (await handle.describe()).typed_search_attributes
    assert attrs.get(BUILD_STATE) == "cancelled"


async def test_rollback_signal_at_a_gate_goes_back_and_reruns(client: Client, worker):
    handle = await start(client, worker, make_request(approval_gates=["handoff_to_verifier"]))
    await wait_until(handle, lambda s: s.waiting_for is not None)
    await handle.signal(
        BuildWorkflow.rollback, RollbackRequest(target_state=S.IMPLEMENTATION, reason="redo")
    )
    status = await wait_until(
        handle, lambda s: s.waiting_for is not None and s.attempts[BuildState.IMPLEMENTATION] == 2
    )
    assert status.state is S.HANDOFF_TO_VERIFIER and status.attempts[BuildState.TESTING] == 2
    await handle.signal(BuildWorkflow.approve, ApproveRequest(note="fine"))
    assert (await handle.result()).state is S.COMPLETE
    rollback = next(e for e in await events_of(handle) if e.event_type is EventType.ROLLBACK)
    assert fields(rollback) == {"target": "implementation", "reason": "redo"}
    assert rollback.state is S.HANDOFF_TO_VERIFIER
