"""A build's events are typed payloads (core/events.py): what the workflow emits, the mirror
stores and every reader gets back is one model per event type, and the shapes earlier versions
recorded (in kept histories and mirrored rows) read as the same models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError
from temporalio.client import WorkflowHistory

from core.contracts import ROLE_CALLS
from core.events import (
    Completed,
    EventData,
    EventType,
    Failed,
    LoopedBack,
    NeedsAttention,
    StateChanged,
    event_data,
    stored,
)
from core.feedback import Feedback
from core.mirror import BuildEvent, RoleCall
from core.outcomes import Ending, Setback
from core.reports import TestFailure
from core.states import BuildState
from tests.helpers import HISTORY_DIR

ROLE_CALL_NAMES = {call.name for call in ROLE_CALLS.values()}
HISTORIES = sorted(HISTORY_DIR.glob("v*/*.json"))


def test_every_event_type_has_exactly_one_payload_model():
    models = get_args(get_args(EventData)[0])
    kinds = [model.model_fields["type"].default for model in models]
    assert sorted(kinds) == sorted(EventType) and len(kinds) == len(set(kinds))


def test_a_payload_is_stored_without_its_type_and_read_back_the_same():
    payloads: list[EventData] = [
        StateChanged(from_=BuildState.TESTING, to=BuildState.HANDOFF_TO_VERIFIER, commit="c1"),
        LoopedBack(
            reason=Setback.TESTS_FAILED,
            loop_back=1,
            feedback=Feedback(failures=[TestFailure(test="t", message="m")]),
        ),
        Failed(reason="why", ending=Ending.RETRIES_EXHAUSTED, detail="tests failed"),
        Completed(),
    ]
    for payload in payloads:
        row = stored(payload)
        assert "type" not in row
        assert event_data(payload.type, row) == payload
    assert stored(payloads[0])["from"] == "testing"  # the recorded key, a keyword in Python


def test_an_event_without_its_payload_fields_is_refused():
    with pytest.raises(ValidationError):
        event_data("state_changed", {"i": 1})
    with pytest.raises(ValidationError):
        event_data("no_such_event", {})


def test_rows_written_by_earlier_versions_read_as_todays_payloads():
    failed = event_data("failed", {"reason": "r", "kind": "retries exhausted: tests failed"})
    assert isinstance(failed, Failed)
    assert (failed.ending, failed.detail) == (Ending.RETRIES_EXHAUSTED, "tests failed")
    role = event_data("failed", {"reason": "r", "kind": "q_assistant error: ModelTimeout"})
    assert isinstance(role, Failed)
    assert (role.ending, role.detail) == (Ending.ROLE_ERROR, "q_assistant: ModelTimeout")
    asked = event_data("failed", {"reason": "r", "kind": "environment failed"})
    assert isinstance(asked, Failed) and asked.ending is Ending.UNANSWERED
    nothing = event_data("completed", {"release": {}})
    assert isinstance(nothing, Completed) and nothing.release is None
    loop = event_data(
        "loop_back",
        {"reason": "tests failed", "loop_back": 2, "failures": [{"test": "t", "message": "m"}]},
    )
    assert isinstance(loop, LoopedBack) and loop.feedback.failures == [
        TestFailure(test="t", message="m")
    ]
    revert = event_data(
        "needs_attention",
        {"reason": "revert conflict", "paused_in": "deployment", "release": "v0.2.0"},
    )
    assert isinstance(revert, NeedsAttention)
    assert (revert.ending, revert.release) == (Ending.UNANSWERED, "v0.2.0")


def _carried_events(path: Path) -> list[BuildEvent]:
    """The events the role calls of a kept history carried to the mirror, as recorded."""
    raw = path.read_text()
    history = WorkflowHistory.from_json("replay", raw)
    events: list[BuildEvent] = []
    for event in history.events:
        if not event.HasField("activity_task_scheduled_event_attributes"):
            continue
        scheduled = event.activity_task_scheduled_event_attributes
        if scheduled.activity_type.name not in ROLE_CALL_NAMES:
            continue
        call = RoleCall.model_validate(json.loads(scheduled.input.payloads[0].data))
        events += call.mirror.events if call.mirror else []
    return events


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_event_a_kept_history_carried_reads_as_a_typed_payload(path: Path):
    events = _carried_events(path)
    for event in events:
        assert event.data.type is event.event_type
        assert event_data(event.event_type, stored(event.data)) == event.data


def test_the_kept_histories_carry_the_events_of_every_phase():
    carried = {e.event_type for path in HISTORIES for e in _carried_events(path)}
    assert {
        EventType.STATE_CHANGED,
        EventType.ROLE_CALL,
        EventType.HANDOFF,
        EventType.LOOP_BACK,
        EventType.WORKSPACE_OPENED,
        EventType.RELEASE_QUEUED,
        EventType.BRANCH_MOVED,
    } <= carried
