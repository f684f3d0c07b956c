"""Pure rules of a build: which messages are allowed and what context the next role gets."""

from __future__ import annotations

import copy

import pytest
from pydantic import TypeAdapter

from core import rules, views
from core.build_data import BuildData, CodeState, Command, Pending, Steering
from core.build_io import BuildOptions, BuildRequest
from core.feedback import Feedback, Merge
from core.releases import Conflict, Released, ReleaseOutcome, Retest, SmokeFailed
from core.reports import TestFailure, TestReport
from core.role_io import (
    DiscoveryOutput,
    ImplementationSummary,
    PlanOutput,
    RoleContext,
    VerificationOutcome,
)
from core.rules import Verdict
from core.states import BuildState, Role

S = BuildState


def test_retry_allowed_only_where_the_table_has_a_retry_edge():
    assert rules.check_retry(BuildData(state=S.TESTING)) is None
    assert rules.check_retry(BuildData(state=S.HANDOFF_TO_RELEASER)) is None
    assert rules.retry_target(S.VERIFICATION) is S.IMPLEMENTATION
    problem = rules.check_retry(BuildData(state=S.PLANNING))
    assert problem is not None and "nothing to retry at planning" in problem


@pytest.mark.parametrize("state", [S.COMPLETE, S.FAILED, S.CANCELLED])
def test_finished_builds_refuse_every_command(state):
    data = BuildData(state=state)
    assert "cannot be retried" in (rules.check_retry(data) or "")
    assert "cannot be rolled back" in (rules.check_rollback(data, S.PLANNING) or "")
    assert "nothing waits" in (rules.check_approve(data) or "")


def test_rollback_reasons_name_the_problem():
    data = BuildData(state=S.TESTING)
    assert rules.check_rollback(data, S.PLANNING) is None
    assert "forward" in (rules.check_rollback(data, S.VERIFICATION) or "")
    assert "already at testing" in (rules.check_rollback(data, S.TESTING) or "")
    assert "not a working state" in (rules.check_rollback(data, S.HANDOFF_TO_CODER) or "")


def test_one_pending_command_at_a_time():
    pending = Pending(Command.ROLLBACK, S.PLANNING, "x", "p")
    data = BuildData(state=S.TESTING, steering=Steering(pending=pending))
    assert "already pending" in (rules.check_retry(data) or "")
    assert "already pending" in (rules.check_rollback(data, S.DISCOVERY) or "")


def test_approve_only_at_a_gate():
    assert "nothing waits" in (rules.check_approve(BuildData(state=S.TESTING)) or "")
    gate = S.HANDOFF_TO_RELEASER
    gated = BuildData(state=gate, steering=Steering(waiting_at_gate=gate))
    assert rules.check_approve(gated) is None
    gated.steering.approved_gate = gate  # a second approve in the same workflow task
    assert "already approved" in (rules.check_approve(gated) or "")


def discovered(summary: str = "d") -> DiscoveryOutput:
    return DiscoveryOutput(summary=summary, requirements=[], acceptance_criteria=[])


def implemented(summary: str = "impl") -> ImplementationSummary:
    return ImplementationSummary(summary=summary, files=[], commit="c1", workspace="/w")


def planned(summary: str = "p") -> PlanOutput:
    return PlanOutput(summary=summary, steps=[], files=["app.py"], test_strategy="pytest")


def test_context_carries_earlier_outputs_and_loop_back_feedback():
    data = BuildData(
        outputs={S.DISCOVERY: discovered(), S.PLANNING: planned()},
        feedback=Feedback(failures=[TestFailure(test="t", message="m")]),
    )
    ctx = rules.context_for(data, S.IMPLEMENTATION)
    assert ctx.discovery == discovered() and ctx.planning == planned()
    assert ctx.failures == [TestFailure(test="t", message="m")]
    assert rules.context_for(data, S.TESTING).failures is None


def test_a_context_in_a_prompt_shows_only_what_is_set():
    ctx = RoleContext(planning=planned(), failures=[TestFailure(test="t", message="m")])
    assert ctx.model_dump(mode="json") == {
        "planning": planned().model_dump(mode="json"),
        "failures": [{"test": "t", "message": "m"}],
    }
    assert RoleContext.model_validate_json(ctx.model_dump_json()) == ctx
    assert ctx.smoke_command() == "" and RoleContext().model_dump() == {}


def test_a_release_outcome_in_a_recorded_payload_is_read_by_its_flags():
    """Recorded histories hold release outcomes as flags (released, retest, conflicts); they
    read as the outcome they meant, so those builds replay the same way."""
    read = TypeAdapter(ReleaseOutcome).validate_python
    base = {"version": "", "summary": "s", "released": False}
    assert isinstance(read({**base, "retest": True, "conflicts": []}), Retest)
    assert isinstance(read({**base, "conflicts": ["a.py"]}), Conflict)
    assert isinstance(read({**base, "restored": True}), SmokeFailed)
    assert isinstance(read({**base, "released": True, "conflicts": []}), Released)
    tagged = Conflict(version="", summary="s", conflicts=["a.py"])
    assert read(tagged.model_dump(mode="json")) == tagged


def test_handoff_names_roles_instructions_and_previous_output():
    data = BuildData(
        state=S.HANDOFF_TO_TESTER,
        outputs={S.IMPLEMENTATION: implemented(), S.DISCOVERY: discovered()},
        attempts={S.TESTING: 1},
        loop_backs=1,
    )
    from_role, to_role, next_state, ctx = rules.handoff_parts(data, S.HANDOFF_TO_TESTER, "b1")
    assert (from_role, to_role, next_state) == (Role.CODE_WRITER, Role.TEST_AUDITOR, S.TESTING)
    assert ctx.previous_output == implemented()
    assert ctx.phase_data.model_dump(mode="json") == {
        "discovery": discovered().model_dump(mode="json"),
        "implementation": implemented().model_dump(mode="json"),
    }
    assert ctx.metadata.model_dump(mode="json") == {
        "build_id": "b1",
        "from_state": "implementation",
        "attempt": 2,
        "loop_backs": 1,
        "guidance": [],
    }
    assert "Test" in ctx.instructions
    with pytest.raises(ValueError):
        rules.handoff_parts(data, S.TESTING, "b1")


def test_current_details_tell_state_attempts_and_what_the_build_waits_for():
    from core.build_io import BuildStatus

    status = BuildStatus(
        build_id="b1",
        project_id="p",
        state=S.HANDOFF_TO_RELEASER,
        current_role=None,
        progress=80,
        completed_phases=[S.DISCOVERY],
        attempts={"implementation": 2},
        loop_backs=1,
        max_retries=3,
        last_error="tests failed at testing attempt 1: 1 of 2 tests failed.",
        waiting_for="approval at handoff_to_releaser",
        pending_command=None,
        events=20,
    )
    text = views.current_details(status)
    assert "**State:** handoff_to_releaser (80%)" in text
    assert "implementation 2" in text and "**Loop-backs:** 1/3" in text
    assert "**Waiting for:** approval at handoff_to_releaser" in text
    assert "**Last error:** tests failed" in text
    assert "Pending" not in text


def report(passed: bool, *failures: tuple[str, str]) -> TestReport:
    return TestReport(
        passed=passed,
        summary=f"{len(failures)} failed",
        tests_run=3,
        failures=[TestFailure(test=t, message=m) for t, m in failures],
    )


def test_a_phase_that_succeeds_moves_the_build_forward():
    assert rules.verdict(S.TESTING, report(True)) == Verdict(S.HANDOFF_TO_VERIFIER)
    approved = VerificationOutcome(approved=True, summary="ok")
    assert rules.verdict(S.VERIFICATION, approved).next_state is S.HANDOFF_TO_RELEASER
    plan = PlanOutput(summary="p", steps=["s"], files=["f.py"], test_strategy="pytest")
    assert rules.verdict(S.PLANNING, plan).next_state is S.HANDOFF_TO_CODER
    released = Released(version="0.1.0", summary="out")
    assert rules.verdict(S.DEPLOYMENT, released).next_state is S.COMPLETE


def test_failing_tests_go_back_with_the_failures_and_a_signature():
    verdict = rules.verdict(S.TESTING, report(False, ("t::a", "assert 1 == 2")))
    assert verdict.next_state is None and verdict.why == "tests failed"
    assert verdict.feedback == Feedback(
        failures=[TestFailure(test="t::a", message="assert 1 == 2")]
    )
    assert verdict.summary == "1 failed"
    same = rules.verdict(S.TESTING, report(False, ("t::a", "assert 7 == 8")))
    other = rules.verdict(S.TESTING, report(False, ("t::b", "assert 1 == 2")))
    assert verdict.signature is not None and verdict.signature == same.signature
    assert verdict.signature != other.signature


def test_a_review_that_asks_for_changes_goes_back_with_its_reasons():
    review = VerificationOutcome(approved=False, summary="changes", reasons=["add a docstring"])
    verdict = rules.verdict(S.VERIFICATION, review)
    assert (verdict.next_state, verdict.why) == (None, "verification requested changes")
    assert verdict.feedback == Feedback(reasons=["add a docstring"]) and verdict.signature


def test_a_failed_release_goes_back_without_a_signature():
    failed = SmokeFailed(version="0.1.0", summary="smoke failed", smoke="x")
    verdict = rules.verdict(S.DEPLOYMENT, failed)
    assert (verdict.next_state, verdict.why, verdict.signature) == (None, "release failed", None)
    assert verdict.feedback == Feedback(release=failed) and verdict.summary == "smoke failed"


def test_a_moved_branch_is_tested_again_and_a_conflict_goes_back_with_the_merge():
    moved = Retest(version="", summary="moved", commit="m1", branch_head="b1")
    assert rules.verdict(S.DEPLOYMENT, moved) == Verdict(S.TESTING)
    conflict = Conflict(version="", summary="c", branch_head="b1", conflicts=["a.py"])
    verdict = rules.verdict(S.DEPLOYMENT, conflict)
    assert (verdict.next_state, verdict.why, verdict.signature) == (None, "merge conflict", None)
    assert verdict.feedback == Feedback(merge=Merge(branch_head="b1", conflicts=["a.py"]))


def test_a_role_task_carries_what_the_role_needs_and_changes_nothing():
    request = BuildRequest(
        project_id="p",
        build_id="b1",
        requirements="CSV export",
        options=BuildOptions(simulate=["tests_fail_once"]),
    )
    data = BuildData(
        state=S.IMPLEMENTATION,
        outputs={S.PLANNING: planned()},
        steering=Steering(guidance=["use csv"]),
        code=CodeState(head="abc"),
    )
    before = copy.deepcopy(data)
    first = rules.role_task(request, data, S.IMPLEMENTATION, 2)
    assert first.attempt == 2 and data == before
    assert first.role is Role.CODE_WRITER and first.head == "abc"
    assert first.context == RoleContext(planning=planned()) and first.guidance == ["use csv"]
    assert first.simulate == ["tests_fail_once"]
    with pytest.raises(ValueError, match="not a working state"):
        rules.role_task(request, data, S.HANDOFF_TO_CODER, 1)


def test_going_back_reopens_the_phases_from_the_target_on():
    phases = [S.DISCOVERY, S.PLANNING, S.IMPLEMENTATION, S.TESTING]
    assert rules.reopened(phases, S.IMPLEMENTATION) == [S.DISCOVERY, S.PLANNING]
