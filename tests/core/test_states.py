"""The declarative state table: every valid edge, and invalid ones refused."""

from __future__ import annotations

from itertools import pairwise

import pytest

from core.states import (
    HANDOFFS,
    PATH,
    TABLE,
    TERMINAL,
    WORKING,
    BuildState,
    EdgeKind,
    Role,
    edge_kind,
    edges,
    is_valid,
    mermaid,
    progress_of,
    role_of,
    rollback_targets,
)

S = BuildState

HAPPY_PATH = [
    S.DISCOVERY,
    S.PLANNING,
    S.HANDOFF_TO_CODER,
    S.IMPLEMENTATION,
    S.HANDOFF_TO_TESTER,
    S.TESTING,
    S.HANDOFF_TO_VERIFIER,
    S.VERIFICATION,
    S.HANDOFF_TO_RELEASER,
    S.DEPLOYMENT,
    S.COMPLETE,
]


def test_values_are_lower_case_as_in_the_original_design():
    assert [s.value for s in BuildState][:3] == ["discovery", "planning", "handoff_to_coder"]
    assert len(BuildState) == 15  # the design's 11, FAILED, CANCELLED and two pauses
    assert {r.value for r in Role} == {
        "q_assistant",
        "code_writer",
        "test_auditor",
        "verification_overseer",
        "release_manager",
    }


def test_the_budget_pause_is_entered_from_and_left_to_every_working_state():
    from core.states import PAUSES, WORKING, EdgeKind, edge_kind

    pause = BuildState.BUDGET_EXHAUSTED
    assert pause in PAUSES and pause not in PATH
    for working in WORKING:
        assert edge_kind(working, pause) is EdgeKind.PAUSE
        assert edge_kind(pause, working) is EdgeKind.RESUME
    assert edge_kind(pause, BuildState.FAILED) is EdgeKind.FAILURE
    assert not is_valid(BuildState.HANDOFF_TO_CODER, pause)  # only before a role call
    assert rollback_targets(pause) == ()


def test_needs_attention_is_entered_from_testing_and_verification_and_left_by_a_person():
    from core.states import EdgeKind, edge_kind

    ask = BuildState.NEEDS_ATTENTION
    assert edge_kind(BuildState.TESTING, ask) is EdgeKind.PAUSE
    assert edge_kind(BuildState.VERIFICATION, ask) is EdgeKind.PAUSE
    assert not is_valid(BuildState.IMPLEMENTATION, ask)
    assert edge_kind(ask, BuildState.IMPLEMENTATION) is EdgeKind.RETRY
    assert edge_kind(ask, BuildState.PLANNING) is EdgeKind.ROLLBACK
    assert edge_kind(ask, BuildState.FAILED) is EdgeKind.FAILURE
    assert not is_valid(ask, BuildState.DEPLOYMENT)


def test_happy_path_is_the_forward_chain():
    assert list(PATH) == HAPPY_PATH
    forward = [(a, b) for a, b, kind in edges() if kind is EdgeKind.FORWARD]
    assert forward == list(pairwise(HAPPY_PATH))


@pytest.mark.parametrize(("src", "dst", "kind"), edges(), ids=lambda v: str(v))
def test_every_valid_edge_is_accepted(src, dst, kind):
    assert is_valid(src, dst)
    assert edge_kind(src, dst) in {kind, EdgeKind.RETRY}


def test_retry_edges_go_back_to_implementation():
    retries = {(a, b) for a, b, kind in edges() if kind is EdgeKind.RETRY}
    assert (S.TESTING, S.IMPLEMENTATION) in retries
    assert (S.VERIFICATION, S.IMPLEMENTATION) in retries
    assert all(b is S.IMPLEMENTATION for _, b in retries)
    assert edge_kind(S.TESTING, S.IMPLEMENTATION) is EdgeKind.RETRY


def test_rollback_reaches_every_earlier_working_state_only():
    assert rollback_targets(S.VERIFICATION) == (
        S.DISCOVERY,
        S.PLANNING,
        S.IMPLEMENTATION,
        S.TESTING,
    )
    assert rollback_targets(S.DISCOVERY) == ()
    assert rollback_targets(S.COMPLETE) == ()
    for state in PATH:
        for target in rollback_targets(state):
            assert target in WORKING
            assert PATH.index(target) < PATH.index(state)


def test_every_non_terminal_state_can_fail_or_be_cancelled():
    for state in BuildState:
        expected = state not in TERMINAL
        assert is_valid(state, S.FAILED) is expected
        assert is_valid(state, S.CANCELLED) is expected


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (S.DISCOVERY, S.IMPLEMENTATION),  # skips planning
        (S.PLANNING, S.IMPLEMENTATION),  # skips the handoff
        (S.IMPLEMENTATION, S.TESTING),  # skips the handoff
        (S.TESTING, S.DEPLOYMENT),  # skips verification
        (S.DISCOVERY, S.COMPLETE),
        (S.TESTING, S.TESTING),  # same state
        (S.DISCOVERY, S.DISCOVERY),
        (S.COMPLETE, S.DISCOVERY),  # leaving a terminal state
        (S.FAILED, S.IMPLEMENTATION),
        (S.CANCELLED, S.PLANNING),
        (S.COMPLETE, S.FAILED),
        (S.PLANNING, S.DEPLOYMENT),  # forward jump
        (S.VERIFICATION, S.HANDOFF_TO_TESTER),  # back to a handoff, not a working state
    ],
)
def test_invalid_edges_are_refused(src, dst):
    assert not is_valid(src, dst)
    assert edge_kind(src, dst) is None


def test_roles_own_the_working_states():
    assert role_of(S.DISCOVERY) is Role.Q_ASSISTANT
    assert role_of(S.PLANNING) is Role.Q_ASSISTANT
    assert role_of(S.IMPLEMENTATION) is Role.CODE_WRITER
    assert role_of(S.TESTING) is Role.TEST_AUDITOR
    assert role_of(S.VERIFICATION) is Role.VERIFICATION_OVERSEER
    assert role_of(S.DEPLOYMENT) is Role.RELEASE_MANAGER
    assert all(role_of(h) is None for h in HANDOFFS)
    assert [TABLE[h].handoff_to for h in HANDOFFS] == [
        Role.CODE_WRITER,
        Role.TEST_AUDITOR,
        Role.VERIFICATION_OVERSEER,
        Role.RELEASE_MANAGER,
    ]


def test_progress_rises_along_the_path_to_100():
    values = [progress_of(s) for s in PATH]
    assert values == sorted(values)
    assert len(set(values)) == len(values)
    assert values[0] == 0 and values[-1] == 100


def test_diagram_is_generated_from_the_table():
    diagram = mermaid()
    for src, dst, kind in edges():
        if kind is EdgeKind.FORWARD or kind is EdgeKind.RETRY:
            assert f"{src.value} --> {dst.value}" in diagram
    assert "rollback" in diagram


def test_a_long_release_queue_is_named_in_part_and_counted() -> None:
    from core import views

    assert views._some([f"b{n}" for n in range(38)]) == "b0, b1, b2 and 35 more"
    assert views._some(["b0", "b1"]) == "b0, b1"
