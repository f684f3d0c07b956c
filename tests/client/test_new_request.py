"""One function builds every BuildRequest (the CLI's and the API's): a person's choices, the
settings for the rest."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from client.builds import new_request
from core.build_io import StartOptions
from core.settings import Settings
from core.states import BuildState

DEFAULTS = Settings(_env_file=None)  # type: ignore[call-arg]


def test_the_settings_fill_in_what_a_person_leaves_out():
    given = Settings(  # type: ignore[call-arg]
        _env_file=None,
        build_max_retries=5,
        build_max_tokens=1000,
        build_max_cost_usd=2.5,
        budget_wait_seconds=60,
        attention_wait_seconds=120,
        role_max_attempts=2,
    )
    request = new_request(given, "shop", "CSV export", StartOptions(), user_id="ana")
    options = request.options
    assert (request.project_id, request.user_id, request.requirements) == (
        "shop",
        "ana",
        "CSV export",
    )
    assert len(request.build_id) == 8  # random
    assert options.max_retries == 5 and options.policy.max_attempts == 2
    assert (options.budget.max_tokens, options.budget.max_cost_usd) == (1000, 2.5)
    assert options.budget.wait_seconds == 60 and options.attention_wait_seconds == 120


def test_a_persons_choices_win_over_the_settings():
    choices = StartOptions(
        max_retries=0,
        approval_gates=[BuildState.HANDOFF_TO_RELEASER],
        simulate=["tests_fail_once"],
        max_tokens=0,  # 0: no limit
        max_cost_usd=0.5,
    )
    request = new_request(DEFAULTS, "p", {"feature": "x"}, choices, build_id="b1", user_id="u")
    options = request.options
    assert request.build_id == "b1" and options.max_retries == 0
    assert options.approval_gates == [BuildState.HANDOFF_TO_RELEASER]
    assert options.simulate == ["tests_fail_once"]
    assert (options.budget.max_tokens, options.budget.max_cost_usd) == (None, 0.5)


def test_a_gate_that_is_no_handoff_is_refused():
    with pytest.raises(ValidationError, match="approval gates must be handoff states"):
        StartOptions(approval_gates=[BuildState.TESTING])
