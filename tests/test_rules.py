"""Pure rules of a build: which messages are allowed and what context the next role gets."""

from __future__ import annotations

import pytest

from core import rules, views
from core.models import BuildOptions, BuildRequest
from core.role_io import (
    PlanOutput,
    ReleaseOutcome,
    TestFailure,
    TestReport,
    VerificationOutcome,
)
from core.rules import BuildData, Command, Pending, Verdict
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
    data = BuildData(state=S.TESTING, pending=Pending(Command.ROLLBACK, S.PLANNING, "x", "p"))
    assert "already pending" in (rules.check_retry(data) or "")
    assert "already pending" in (rules.check_rollback(data, S.DISCOVERY) or "")


def test_approve_only_at_a_gate():
    assert "nothing waits" in (rules.check_approve(BuildData(state=S.TESTING)) or "")
    gated = BuildData(state=S.HANDOFF_TO_RELEASER, waiting_at_gate=S.HANDOFF_TO_RELEASER)
    assert rules.check_approve(gated) is None
    gated.approved_gate = S.HANDOFF_TO_RELEASER  # a second approve in the same workflow task
    assert "already approved" in (rules.check_approve(gated) or "")


def test_context_carries_earlier_outputs_and_loop_back_feedback():
    data = BuildData(
        outputs={"discovery": {"summary": "d"}, "planning": {"summary": "p"}},
        feedback={"failures": [{"test": "t", "message": "m"}]},
    )
    ctx = rules.context_for(data, S.IMPLEMENTATION)
    assert ctx["discovery"] == {"summary": "d"}
    assert ctx["planning"] == {"summary": "p"}
    assert ctx["failures"][0]["test"] == "t"
    assert "failures" not in rules.context_for(data, S.TESTING)


def test_handoff_names_roles_instructions_and_previous_output():
    data = BuildData(
        state=S.HANDOFF_TO_TESTER,
        outputs={"implementation": {"summary": "impl"}, "discovery": {"summary": "d"}},
        attempts={"testing": 1},
        loop_backs=1,
    )
    from_role, to_role, next_state, ctx = rules.handoff_parts(data, S.HANDOFF_TO_TESTER, "b1")
    assert (from_role, to_role, next_state) == (Role.CODE_WRITER, Role.TEST_AUDITOR, S.TESTING)
    assert ctx["previous_output"] == {"summary": "impl"}
    assert ctx["phase_data"]["discovery"] == {"summary": "d"}
    assert ctx["metadata"] == {
        "build_id": "b1",
        "from_state": "implementation",
        "attempt": 2,
        "loop_backs": 1,
        "guidance": [],
    }
    assert "Test" in ctx["instructions"]
    with pytest.raises(ValueError):
        rules.handoff_parts(data, S.TESTING, "b1")


def test_current_details_tell_state_attempts_and_what_the_build_waits_for():
    from core.models import BuildStatus

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
    released = ReleaseOutcome(released=True, version="0.1.0", summary="out")
    assert rules.verdict(S.DEPLOYMENT, released).next_state is S.COMPLETE


def test_failing_tests_go_back_with_the_failures_and_a_signature():
    verdict = rules.verdict(S.TESTING, report(False, ("t::a", "assert 1 == 2")))
    assert verdict.next_state is None and verdict.why == "tests failed"
    assert verdict.feedback == {"failures": [{"test": "t::a", "message": "assert 1 == 2"}]}
    assert verdict.summary == "1 failed"
    same = rules.verdict(S.TESTING, report(False, ("t::a", "assert 7 == 8")))
    other = rules.verdict(S.TESTING, report(False, ("t::b", "assert 1 == 2")))
    assert verdict.signature is not None and verdict.signature == same.signature
    assert verdict.signature != other.signature


def test_a_review_that_asks_for_changes_goes_back_with_its_reasons():
    review = VerificationOutcome(approved=False, summary="changes", reasons=["add a docstring"])
    verdict = rules.verdict(S.VERIFICATION, review)
    assert (verdict.next_state, verdict.why) == (None, "verification requested changes")
    assert verdict.feedback == {"reasons": ["add a docstring"]} and verdict.signature


def test_a_failed_release_goes_back_without_a_signature():
    failed = ReleaseOutcome(released=False, version="0.1.0", summary="smoke failed", smoke="x")
    verdict = rules.verdict(S.DEPLOYMENT, failed)
    assert (verdict.next_state, verdict.why, verdict.signature) == (None, "release failed", None)
    assert verdict.feedback["release"]["smoke"] == "x" and verdict.summary == "smoke failed"


def test_a_role_task_counts_the_attempt_and_carries_what_the_role_needs():
    request = BuildRequest(
        project_id="p",
        build_id="b1",
        requirements="CSV export",
        options=BuildOptions(simulate=["tests_fail_once"]),
    )
    data = BuildData(
        state=S.IMPLEMENTATION,
        outputs={"planning": {"summary": "p"}},
        guidance=["use csv"],
        head="abc",
    )
    first = rules.role_task(request, data, S.IMPLEMENTATION)
    second = rules.role_task(request, data, S.IMPLEMENTATION)
    assert (first.attempt, second.attempt, data.attempts) == (1, 2, {"implementation": 2})
    assert first.role is Role.CODE_WRITER and first.head == "abc"
    assert first.context == {"planning": {"summary": "p"}} and first.guidance == ["use csv"]
    assert first.simulate == ["tests_fail_once"]
    with pytest.raises(ValueError, match="not a working state"):
        rules.role_task(request, data, S.HANDOFF_TO_CODER)


def test_going_back_reopens_the_phases_from_the_target_on():
    data = BuildData(completed_phases=[S.DISCOVERY, S.PLANNING, S.IMPLEMENTATION, S.TESTING])
    rules.reopen_from(data, S.IMPLEMENTATION)
    assert data.completed_phases == [S.DISCOVERY, S.PLANNING]
