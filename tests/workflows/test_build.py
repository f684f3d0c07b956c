"""BuildWorkflow's state table, branch by branch, on faked activities and skipped time (the
fast tier: tests/workflows/conftest.py). The whole-stack tests (tests/test_workflow*.py) run
the same branches on real git, the sandbox and the offline model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from itertools import pairwise
from typing import Any, TypeVar

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from core.build_io import BuildResult, BuildStatus
from core.contracts import ROLE_CALLS, Failure
from core.events import (
    EventType,
    Failed,
    LoopedBack,
    NeedsAttention,
    RoleCalled,
    StateChanged,
)
from core.messages import (
    AbortRequest,
    ApproveRequest,
    RetryRequest,
    RollbackRequest,
    TopUpRequest,
)
from core.mirror import BuildEvent
from core.outcomes import Ending, Setback
from core.releases import Retest, SmokeFailed
from core.role_io import VerificationOutcome
from core.states import PATH, BuildState
from tests.helpers import make_request
from tests.workflows.conftest import faked_worker
from tests.workflows.fakes import Fakes, failing
from workflows.build import BuildWorkflow

S = BuildState
T = TypeVar("T")
Handle = WorkflowHandle[BuildWorkflow, BuildResult]


@asynccontextmanager
async def build(
    env: WorkflowEnvironment, fakes: Fakes, *, skip: bool = True, **options: Any
) -> AsyncIterator[Handle]:
    """A build on the fakes; `skip=False` for one that waits for a test's command."""
    async with faked_worker(env.client, fakes) as queue:
        request = make_request(**options)
        with nullcontext() if skip else env.with_time_skipping_disabled():
            handle = await env.client.start_workflow(
                BuildWorkflow.run, request, id=request.workflow_id, task_queue=queue
            )
        yield handle


async def events_of(handle: Handle) -> list[BuildEvent]:
    return await handle.query(BuildWorkflow.event_log, 0)


async def until(
    handle: Handle, state: BuildState, also: Callable[[BuildStatus], bool] = lambda _: True
) -> BuildStatus:
    """The build's status once it is in `state` (and `also` holds)."""
    async with asyncio.timeout(10):
        while True:
            status = await handle.query(BuildWorkflow.status)
            if status.state is state and also(status):
                return status
            await asyncio.sleep(0.05)


async def failed_with(handle: Handle) -> Failed:
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    last = (await events_of(handle))[-1].data
    assert isinstance(last, Failed)
    return last


def of_type(events: list[BuildEvent], kind: type[T]) -> list[T]:
    return [e.data for e in events if isinstance(e.data, kind)]


async def test_a_build_walks_the_table_and_the_mirror_gets_every_event_once(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    async with build(skipping, fakes) as handle:
        result = await handle.result()
        events = await events_of(handle)
    assert result.state is S.COMPLETE and result.release and result.release.version == "v0.1.0"
    states = [change.to for change in of_type(events, StateChanged)]
    assert states == list(PATH)
    assert result.attempts == {s: 1 for s in fakes.states_called()}
    calls = of_type(events, RoleCalled)
    assert len(calls) == 6 and all(c.prompt_tokens == 50 for c in calls)
    assert sorted(fakes.mirrored) == [e.seq for e in events]  # every event, none missing
    assert len(fakes.written) == len(set(fakes.written))  # and each written once
    # The workflow wrote the mirror before each role call; no call carried it.
    assert all(call.mirror is None for call in fakes.calls)
    assert all(b > a for a, b in pairwise([0, *fakes.seen_at_call]))


async def test_a_mirror_that_cannot_be_written_before_a_call_holds_no_build_back(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    """Its writes before the first calls fail; the build goes on, and a later write sends
    what they held: the finished build's mirror has every event once."""
    fakes.mirror_down = 2
    async with build(skipping, fakes) as handle:
        result = await handle.result()
        events = await events_of(handle)
    assert result.state is S.COMPLETE and fakes.mirror_down == 0
    assert fakes.seen_at_call[:2] == [0, 0]  # the first two calls ran with nothing mirrored
    assert sorted(fakes.mirrored) == [e.seq for e in events]
    assert len(fakes.written) == len(set(fakes.written))


async def test_a_mirror_write_that_times_out_before_a_call_is_left_and_the_build_replays(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    """A write that hangs past its timeout is left as a failed one is (the SDK hands the
    timeout over wrapped in an ActivityError live, bare in replay: both are taken the same
    way), and the history replays (as it does when a worker picks the build up again)."""
    fakes.mirror_hangs = 1
    async with build(skipping, fakes) as handle:
        result = await handle.result()
        events = await events_of(handle)
    assert result.state is S.COMPLETE and fakes.mirror_hangs == 0
    assert sorted(fakes.mirrored) == [e.seq for e in events]
    replayer = Replayer(workflows=[BuildWorkflow], data_converter=pydantic_data_converter)
    replayed = await replayer.replay_workflow(
        await handle.fetch_history(), raise_on_replay_failure=False
    )
    assert replayed.replay_failure is None, replayed.replay_failure


@pytest.mark.parametrize(
    ("state", "answer", "setback"),
    [
        (S.TESTING, failing(), Setback.TESTS_FAILED),
        (S.VERIFICATION, None, Setback.CHANGES_REQUESTED),
        (S.DEPLOYMENT, SmokeFailed(version="v0.1.0", summary="no"), Setback.RELEASE_FAILED),
    ],
)
async def test_a_phase_that_fails_once_loops_back_to_the_code_writer(
    skipping: WorkflowEnvironment, fakes: Fakes, state, answer, setback
):
    rejected = VerificationOutcome(approved=False, summary="no", reasons=["name it"])
    fakes.script[(state, 1)] = answer or rejected
    async with build(skipping, fakes) as handle:
        result = await handle.result()
        events = await events_of(handle)
    [loop] = of_type(events, LoopedBack)
    assert result.state is S.COMPLETE and result.loop_backs == 1
    assert loop.reason is setback and loop.feedback.loop_back_from is state
    assert fakes.states_called().count(S.IMPLEMENTATION) == 2
    second = [c for c in fakes.calls if c.state is S.IMPLEMENTATION][1]
    assert second.context.loop_back_from is state  # the Code Writer is told why


async def test_a_moved_branch_is_tested_again_before_it_lands(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    fakes.script[(S.DEPLOYMENT, 1)] = Retest(
        version="", summary="moved", commit="merged", branch_head="theirs"
    )
    async with build(skipping, fakes) as handle:
        result = await handle.result()
        events = await events_of(handle)
    assert result.state is S.COMPLETE and result.loop_backs == 0
    assert result.attempts[S.TESTING] == 2 and result.attempts[S.DEPLOYMENT] == 2
    assert EventType.BRANCH_MOVED in [e.event_type for e in events]


async def test_new_failures_every_time_run_out_of_retries(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    for attempt, name in enumerate("abcd", start=1):  # a new failure each time
        fakes.script[(S.TESTING, attempt)] = failing(f"tests/test_app.py::test_{name}")
    async with build(skipping, fakes, max_retries=2) as handle:
        failed = await failed_with(handle)
    assert (failed.ending, failed.detail) == (Ending.RETRIES_EXHAUSTED, Setback.TESTS_FAILED)
    assert fakes.states_called().count(S.TESTING) == 3


async def test_the_same_failure_twice_waits_for_a_person_and_ends_when_nobody_answers(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    for attempt in range(1, 4):
        fakes.script[(S.TESTING, attempt)] = failing()
    async with build(skipping, fakes, max_retries=3, attention_wait_seconds=86_400) as handle:
        failed = await failed_with(handle)  # a day's wait, skipped
        events = await events_of(handle)
    [asked] = of_type(events, NeedsAttention)
    assert asked.ending is Ending.NON_CONVERGING and asked.reason == Setback.TESTS_FAILED
    assert (failed.ending, failed.detail) == (Ending.NON_CONVERGING, "tests failed")


async def test_a_failed_setup_asks_a_person_at_once_and_an_abort_ends_the_build(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    broken = failing().model_copy(update={"setup_failed": True, "summary": "pip failed"})
    fakes.script[(S.TESTING, 1)] = broken
    async with build(skipping, fakes, skip=False) as handle:
        status = await until(handle, S.NEEDS_ATTENTION)
        assert status.attempts[S.IMPLEMENTATION] == 1  # no Code Writer attempt for it
        await handle.execute_update(BuildWorkflow.update_abort, AbortRequest(reason="not now"))
        failed = await failed_with(handle)
    assert failed.ending is Ending.ABORTED


async def test_a_retry_after_a_repeated_failure_runs_the_code_writer_with_the_guidance(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    fakes.script[(S.TESTING, 1)] = fakes.script[(S.TESTING, 2)] = failing()
    async with build(skipping, fakes, skip=False) as handle:
        await until(handle, S.NEEDS_ATTENTION)
        retry = RetryRequest(reason="use a set", requested_by="ana")
        await handle.execute_update(BuildWorkflow.update_retry, retry)
        result = await handle.result()
    assert result.state is S.COMPLETE
    last = [c for c in fakes.calls if c.state is S.IMPLEMENTATION][-1]
    assert "use a set" in last.guidance and last.context.requested_by == "ana"


async def test_a_gate_waits_for_approval_and_a_rollback_goes_back(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    gates = [S.HANDOFF_TO_VERIFIER]
    async with build(skipping, fakes, skip=False, approval_gates=gates) as handle:
        await until(handle, S.HANDOFF_TO_VERIFIER)
        back = RollbackRequest(target_state=S.PLANNING, reason="replan")
        accepted = await handle.execute_update(BuildWorkflow.update_rollback, back)
        assert accepted.target_state is S.PLANNING
        await until(handle, S.HANDOFF_TO_VERIFIER, lambda s: s.attempts[S.PLANNING] == 2)
        await handle.execute_update(BuildWorkflow.update_approve, ApproveRequest(note="ok"))
        result = await handle.result()
    assert result.state is S.COMPLETE and result.attempts[S.PLANNING] == 2
    assert [t.commit for t in fakes.restored] == ["b0"]  # the code as it was at PLANNING


async def test_a_gate_nobody_approves_ends_the_build_after_its_wait(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    gates = [S.HANDOFF_TO_TESTER]
    async with build(skipping, fakes, approval_gates=gates) as handle:
        failed = await failed_with(handle)  # a week's wait, skipped
    assert failed.ending is Ending.APPROVAL_TIMEOUT


async def test_a_spent_budget_pauses_and_ends_the_build_without_a_top_up(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    fakes.tokens = 1_000
    async with build(skipping, fakes, budget={"max_tokens": 2_500}) as handle:
        failed = await failed_with(handle)  # a day's wait for a top-up, skipped
        events = await events_of(handle)
    assert failed.ending is Ending.BUDGET_EXHAUSTED
    assert len(of_type(events, RoleCalled)) == 3  # it stopped spending when the budget was out


async def test_a_top_up_resumes_a_build_paused_for_its_budget(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    fakes.tokens = 1_000
    async with build(skipping, fakes, skip=False, budget={"max_tokens": 2_500}) as handle:
        await until(handle, S.BUDGET_EXHAUSTED)
        topped = await handle.execute_update(
            BuildWorkflow.update_top_up, TopUpRequest(tokens=100_000)
        )
        result = await handle.result()
    assert topped.resumes and result.state is S.COMPLETE
    assert fakes.states_called() == [s for s in PATH if s in ROLE_CALLS]


async def test_a_refused_attempt_loops_back_and_an_unexpected_error_fails_the_build(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    unsafe = ApplicationError("'../x': refused", type=Failure.UNSAFE_PATH, non_retryable=True)
    fakes.script[(S.IMPLEMENTATION, 1)] = unsafe
    async with build(skipping, fakes) as handle:
        result = await handle.result()
        events = await events_of(handle)
    assert result.state is S.COMPLETE
    assert [loop.reason for loop in of_type(events, LoopedBack)] == [Setback.UNSAFE_PATHS]

    broken = Fakes()
    broken.script[(S.PLANNING, 1)] = ApplicationError("boom", type="KeyError", non_retryable=True)
    async with build(skipping, broken) as handle:
        failed = await failed_with(handle)
    assert (failed.ending, failed.detail) == (Ending.ROLE_ERROR, "q_assistant: KeyError")


async def test_a_cancelled_build_ends_cancelled(skipping: WorkflowEnvironment, fakes: Fakes):
    gates = [S.HANDOFF_TO_CODER]
    async with build(skipping, fakes, skip=False, approval_gates=gates) as handle:
        await until(handle, S.HANDOFF_TO_CODER)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await handle.query(BuildWorkflow.status)
    assert status.state is S.CANCELLED


async def test_a_new_build_records_the_patches_it_takes(
    skipping: WorkflowEnvironment, fakes: Fakes
):
    gates = [S.HANDOFF_TO_CODER]
    async with build(skipping, fakes, skip=False, approval_gates=gates) as handle:
        await until(handle, S.HANDOFF_TO_CODER)
        await handle.execute_update(BuildWorkflow.update_approve, ApproveRequest())
        await handle.result()
        history = await handle.fetch_history()
    patches = {
        json.loads(e.marker_recorded_event_attributes.details["patch-data"].payloads[0].data)["id"]
        for e in history.events
        if e.HasField("marker_recorded_event_attributes")
        and e.marker_recorded_event_attributes.marker_name == "core_patch"
    }
    assert {"project-repositories", "release-queue", "approval-timer"} <= patches
