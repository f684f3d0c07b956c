"""Score cards from what the mirror keeps (core/scores.py), and the comparison the CLI prints:
exact results for given rows, with no build needed (real builds' cards are checked in
tests/api/test_api.py and tests/cli/test_cli.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from cli.scores import comparison
from core.scores import ModelScore, RoleScore, TestScore, by_model_and_prompt, score_card

STARTED = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def build(state: str = "complete", **given: Any) -> SimpleNamespace:
    row: dict[str, Any] = {
        "build_id": "b1", "workflow_id": "build-b1", "project_id": "p", "current_state": state,
        "failure_reason": None, "loop_backs": 0, "duration_seconds": None,
        "created_at": STARTED, "completed_at": None, "tokens": 0, "cost_usd": 0.0,
        "testing_output": None, "workflow_metadata": None,
    }  # fmt: skip
    return SimpleNamespace(**(row | given))


def call(role: str, attempt: int, model: str = "m1", version: str = "v1", **data: Any) -> Any:
    usage = {"attempt": attempt, "model": model, "prompt_version": version,
             "prompt_tokens": 100, "completion_tokens": 10, "cost_usd": 0.01}  # fmt: skip
    return SimpleNamespace(event_type="role_call", triggered_by=role, event_data=usage | data)


def event(kind: str, **data: Any) -> Any:
    return SimpleNamespace(event_type=kind, triggered_by="system", event_data=data)


def test_a_card_counts_calls_attempts_spend_loop_backs_and_the_last_test_run():
    report = {
        "passed": False, "summary": "", "tests_run": 12,
        "failures": [{"test": "(test run)", "message": "out of memory"},
                     {"test": "t::a", "message": "x"}, {"test": "t::b", "message": "y"}],
        "regressions": ["t::a"], "pre_existing": [{"test": "t::c", "message": "z"}],
    }  # fmt: skip
    row = build("failed", failure_reason="retries exhausted", duration_seconds=95.5,
                completed_at=STARTED + timedelta(seconds=96), tokens=440, cost_usd=0.04,
                testing_output=report)  # fmt: skip
    events = [
        event("state_changed", to="discovery"),
        call("q_assistant", 1),
        call("code_writer", 1),
        event("loop_back", reason="tests failed"),
        call("code_writer", 2, model="m2", version="v2", failed=True),
        call("code_writer", 2, model="m2", version="v2", reused=True),
        event("loop_back", reason="verification requested changes"),
        event("loop_back", reason="tests failed"),
    ]
    card = score_card(row, events)
    assert (card.outcome, card.finished, card.failure_reason) == (
        "failed",
        True,
        "retries exhausted",
    )
    assert card.wall_seconds == 95.5 and (card.tokens, card.cost_usd) == (440, 0.04)
    assert card.loop_backs == {"tests failed": 2, "verification requested changes": 1}
    assert card.roles == {
        "q_assistant": RoleScore(calls=1, attempts=1, prompt_tokens=100, completion_tokens=10,
                                 tokens=110, cost_usd=0.01, models=["m1"], prompt_versions=["v1"]),
        "code_writer": RoleScore(calls=3, failed=1, reused=1, attempts=2, prompt_tokens=300,
                                 completion_tokens=30, tokens=330, cost_usd=0.03,
                                 models=["m1", "m2"], prompt_versions=["v1", "v2"]),
    }  # fmt: skip
    # A report of the shape before counts: its pre-existing failure is not counted as passed.
    assert card.tests == TestScore(
        run=12, passed=9, failed=2, regressed=1, pre_existing=1, run_failed=True
    )


def test_a_card_takes_the_reports_counts_which_add_up():
    counts = {"passed": 1991, "failed": 1, "errors": 1, "pre_existing": 2, "skipped": 25}
    report = {
        "passed": False, "summary": "", "tests_run": 1995, "counts": counts,
        "failures": [{"test": "t::new", "message": "x"}, {"test": "t::e", "message": "y",
                                                          "error": True}],
        "pre_existing": [{"test": "t::a", "message": "z"}, {"test": "t::b", "message": "z"}],
        "setup": "environment 0123 from the setup command `pip install -e .`: reused",
    }  # fmt: skip
    card = score_card(build("failed", testing_output=report), [])
    assert card.tests == TestScore(
        run=1995, passed=1991, failed=1, errors=1, pre_existing=2, skipped=25, regressed=0,
        run_failed=False, environment=report["setup"],
    )  # fmt: skip
    assert card.tests.run == (
        card.tests.passed + card.tests.failed + card.tests.errors + card.tests.pre_existing
    )


def test_a_running_build_has_no_wall_time_and_a_finished_one_without_a_duration_has_its_span():
    running = score_card(build("testing", completed_at=None, testing_output={"odd": 1}), [])
    assert not running.finished and running.wall_seconds is None and running.tests is None
    ended = score_card(build("cancelled", completed_at=STARTED + timedelta(seconds=42)), [])
    assert ended.finished and ended.wall_seconds == 42.0


def test_calls_are_summed_by_role_model_and_prompt_with_the_builds_that_completed():
    outcomes = {"build-1": "complete", "build-2": "failed", "build-3": "complete"}
    calls = [
        ("build-1", call("code_writer", 1)),
        ("build-1", call("code_writer", 2)),
        ("build-2", call("code_writer", 1)),
        ("build-3", call("code_writer", 1, version="v2")),
        ("build-3", call("q_assistant", 1)),
    ]
    assert by_model_and_prompt(outcomes, calls) == [
        ModelScore(role="code_writer", model="m1", prompt_version="v1", builds=2, completed=1,
                   completion_rate=0.5, calls=3, tokens=330, cost_usd=0.03),
        ModelScore(role="code_writer", model="m1", prompt_version="v2", builds=1, completed=1,
                   completion_rate=1.0, calls=1, tokens=110, cost_usd=0.01),
        ModelScore(role="q_assistant", model="m1", prompt_version="v1", builds=1, completed=1,
                   completion_rate=1.0, calls=1, tokens=110, cost_usd=0.01),
    ]  # fmt: skip


def test_the_comparison_sets_each_measure_beside_the_same_measure_of_the_other_builds():
    first = score_card(build(tokens=110, duration_seconds=30.0), [call("code_writer", 1)])
    second = score_card(
        build(tokens=330, duration_seconds=61.0),
        [call("code_writer", 1), event("loop_back", reason="tests failed"),
         call("code_writer", 2, model="m2")],
    )  # fmt: skip
    rows = dict(comparison([first, second]))
    assert rows["wall time"] == ["30 s", "61 s"]
    assert rows["loop-backs"] == ["0", "1"] and rows["  tests failed"] == ["0", "1"]
    assert rows["tests passed / failed"] == ["-", "-"]
    assert rows["code_writer: calls (highest attempt)"] == ["1 (1)", "2 (2)"]
    assert rows["code_writer: model @ prompt"] == ["m1 @ v1", "m1, m2 @ v1"]
    assert "q_assistant: tokens" not in rows  # no call of it in either build


def test_a_cards_hidden_tests_are_its_last_acceptance_event_and_compare_shows_them():
    tested = event("acceptance_tested", passed=False, tests_run=3, failed=1, commit="c0ffee",
                   summary="2 of 3 tests passed")  # fmt: skip
    card = score_card(build(), [call("code_writer", 1), tested])
    assert card.acceptance is not None
    assert (card.acceptance.passed, card.acceptance.tests_run, card.acceptance.failed) == (
        False, 3, 1,
    )  # fmt: skip
    plain = score_card(build(), [call("code_writer", 1)])
    assert plain.acceptance is None
    rows = dict(comparison([card, plain]))
    assert rows["hidden tests passed / run"] == ["2 / 3", "-"]
    assert "hidden tests passed / run" not in dict(comparison([plain]))
