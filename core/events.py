"""What each event of a build says: one payload model per `EventType`, a discriminated union
(`EventData`) on the payload's `type`.

The workflow emits payloads (workflows/records.py), the mirror stores them without their
`type` (the row has `event_type`), and every reader (the CLI, the API) gets them back typed
through `event_data`. Rows written by earlier versions parse too: fields added since have
defaults, and a field whose type narrowed reads its earlier shape (`Failed.kind`).

Side-effect free, like core/build_io.py.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, model_validator

from core.eval_build import Acceptance
from core.feedback import Feedback, ModelUsage
from core.outcomes import Ending, Setback
from core.releases import Released
from core.reports import TestCounts
from core.states import BuildState, Role


class EventType(StrEnum):
    STATE_CHANGED = "state_changed"
    HANDOFF = "handoff"
    ROLE_CALL = "role_call"
    RETRY_REQUESTED = "retry_requested"
    ROLLBACK = "rollback"
    LOOP_BACK = "loop_back"
    SIGNAL_REJECTED = "signal_rejected"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVED = "approved"
    FAILED = "failed"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    RESTORED = "restored"
    BUDGET_EXHAUSTED = "budget_exhausted"
    TOPPED_UP = "topped_up"
    NEEDS_ATTENTION = "needs_attention"
    ABORTED = "aborted"
    WORKSPACE_OPENED = "workspace_opened"
    BRANCH_MOVED = "branch_moved"
    RELEASE_QUEUED = "release_queued"
    RELEASE_TURN = "release_turn"
    MIRROR_REFUSED = "mirror_refused"
    ACCEPTANCE_TESTED = (
        "acceptance_tested"  # an evaluation case's hidden tests (core/eval_suites.py)
    )


E = EventType


class _Payload(BaseModel):
    model_config = ConfigDict(
        validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )


def _nested_feedback(own: type[BaseModel], data: Any) -> Any:
    """A row written with the feedback's fields beside the event's (`own`): nested again."""
    if not isinstance(data, dict) or "feedback" in data:
        return data
    moved = [k for k in Feedback.model_fields if k in data and k not in own.model_fields]
    given = {k: data[k] for k in moved}
    return {**{k: v for k, v in data.items() if k not in given}, "feedback": given}


class StateChanged(_Payload):
    type: Literal[E.STATE_CHANGED] = E.STATE_CHANGED
    from_: BuildState | None = Field(default=None, alias="from")  # None: the build's start
    to: BuildState
    edge: Literal["start"] | None = None
    commit: str | None = None  # the build's code entering `to`


class HandedOff(_Payload):
    type: Literal[E.HANDOFF] = E.HANDOFF
    from_role: Role
    to_role: Role
    to_state: BuildState
    instructions: str


class RoleCalled(_Payload, ModelUsage):
    """A role call's usage; a test run's also its sandbox, its environment and its counts."""

    type: Literal[E.ROLE_CALL] = E.ROLE_CALL
    attempt: int
    sandbox: str | None = None
    environment: str | None = None  # what made the environment, made now or reused
    tests: TestCounts | None = None
    failed: bool = False  # the answer was not usable; its spend counts all the same


class _Commanded(_Payload):
    """A person's retry or rollback, applied: where the build goes, and why."""

    target: BuildState
    reason: str


class RetryRequested(_Commanded):
    type: Literal[E.RETRY_REQUESTED] = E.RETRY_REQUESTED


class RolledBack(_Commanded):
    type: Literal[E.ROLLBACK] = E.ROLLBACK


class LoopedBack(_Payload):
    type: Literal[E.LOOP_BACK] = E.LOOP_BACK
    reason: Setback
    loop_back: int  # how many loop-backs the build has made, this one included
    feedback: Feedback = Field(default_factory=Feedback)  # what the Code Writer fixes next

    @model_validator(mode="before")
    @classmethod
    def _earlier(cls, data: Any) -> Any:
        return _nested_feedback(cls, data)


class SignalRejected(_Payload):
    type: Literal[E.SIGNAL_REJECTED] = E.SIGNAL_REJECTED
    command: str
    reason: str


class ApprovalRequested(_Payload):
    type: Literal[E.APPROVAL_REQUESTED] = E.APPROVAL_REQUESTED
    gate: BuildState


class Approved(_Payload):
    type: Literal[E.APPROVED] = E.APPROVED
    gate: BuildState
    note: str | None = None
    phase_result: dict[str, JsonValue] | None = None  # what the approver adds for the next role


class Failed(_Payload):
    type: Literal[E.FAILED] = E.FAILED
    reason: str
    ending: Ending | None = None  # None: ended from outside the workflow (`outside`)
    detail: str | None = None  # what says more than the ending: the setback, the error
    outside: bool = False  # terminated or timed out, recorded by the reconciler

    @model_validator(mode="before")
    @classmethod
    def _earlier_kind(cls, data: Any) -> Any:
        """A row written with the ending as text (`kind`: "retries exhausted: tests failed")."""
        if not isinstance(data, dict) or "kind" not in data or "ending" in data:
            return data
        data = dict(data)
        head, _, detail = str(data.pop("kind")).partition(": ")
        ending = next((e for e in Ending if e.value == head), None)
        if ending is None and head.endswith(" error"):  # "<role> error: <failure kind>"
            ending, detail = Ending.ROLE_ERROR, f"{head.removesuffix(' error')}: {detail}"
        elif ending is None:  # a person was asked, and the kind was what stopped the build
            ending, detail = Ending.UNANSWERED, head
        data["ending"], data["detail"] = ending, detail or None
        return data


class Completed(_Payload):
    type: Literal[E.COMPLETED] = E.COMPLETED
    release: Released | None = None  # None: the build released nothing

    @model_validator(mode="before")
    @classmethod
    def _no_release(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("release") == {}:  # an earlier row's "nothing"
            return {**data, "release": None}
        return data


class Cancelled(_Payload):
    type: Literal[E.CANCELLED] = E.CANCELLED
    reason: str
    outside: bool = False


class Restored(_Payload):
    type: Literal[E.RESTORED] = E.RESTORED
    target: BuildState
    commit: str | None
    release_undone: str | None = None  # the version undone
    release_current: str | None = None  # the version live after it
    reverted_by: str | None = None  # the revert commit on the project's branch


class BudgetExhausted(_Payload):
    type: Literal[E.BUDGET_EXHAUSTED] = E.BUDGET_EXHAUSTED
    reason: str
    paused_in: BuildState


class ToppedUp(_Payload):
    type: Literal[E.TOPPED_UP] = E.TOPPED_UP
    tokens: int
    cost_usd: float
    note: str | None = None
    max_tokens: int | None = None
    max_cost_usd: float | None = None


class NeedsAttention(_Payload):
    type: Literal[E.NEEDS_ATTENTION] = E.NEEDS_ATTENTION
    reason: str  # a setback, or what else stopped the build ("recording diverged")
    ending: Ending  # how the build ends if nobody answers in time
    signature: str | None = None  # the failure that repeated
    paused_in: BuildState | None = None
    release: str | None = None  # the release a conflicting revert was to undo
    feedback: Feedback = Field(default_factory=Feedback)

    @model_validator(mode="before")
    @classmethod
    def _earlier(cls, data: Any) -> Any:
        """A row written before endings were recorded, its feedback beside its fields."""
        if isinstance(data, dict) and "ending" not in data:
            data = {**data, "ending": Ending.UNANSWERED}
        return _nested_feedback(cls, data)


class Aborted(_Payload):
    type: Literal[E.ABORTED] = E.ABORTED
    reason: str


class WorkspaceOpened(_Payload):
    type: Literal[E.WORKSPACE_OPENED] = E.WORKSPACE_OPENED
    repository: str  # redacted: no credentials
    branch: str
    base: str
    build_branch: str


class BranchMoved(_Payload):
    type: Literal[E.BRANCH_MOVED] = E.BRANCH_MOVED
    branch_head: str | None
    merged: str | None


class ReleaseQueued(_Payload):
    type: Literal[E.RELEASE_QUEUED] = E.RELEASE_QUEUED
    ahead: list[str]
    ticket: int


class TurnTaken(_Payload):
    type: Literal[E.RELEASE_TURN] = E.RELEASE_TURN
    waited_seconds: float


class MirrorRefused(_Payload):
    type: Literal[E.MIRROR_REFUSED] = E.MIRROR_REFUSED
    up_to: int
    reason: str


class AcceptanceTested(_Payload, Acceptance):
    type: Literal[E.ACCEPTANCE_TESTED] = E.ACCEPTANCE_TESTED


EventData = Annotated[
    StateChanged
    | HandedOff
    | RoleCalled
    | RetryRequested
    | RolledBack
    | LoopedBack
    | SignalRejected
    | ApprovalRequested
    | Approved
    | Failed
    | Completed
    | Cancelled
    | Restored
    | BudgetExhausted
    | ToppedUp
    | NeedsAttention
    | Aborted
    | WorkspaceOpened
    | BranchMoved
    | ReleaseQueued
    | TurnTaken
    | MirrorRefused
    | AcceptanceTested,
    Field(discriminator="type"),
]
_DATA: TypeAdapter[EventData] = TypeAdapter(EventData)


def event_data(event_type: str, data: Any) -> EventData:
    """An event's payload from its type and its stored fields (a row carries no `type`)."""
    fields = dict(data) if isinstance(data, dict) else {}
    return _DATA.validate_python({**fields, "type": event_type})


def stored(data: EventData) -> dict[str, JsonValue]:
    """The payload as the mirror stores it: JSON, without its `type`."""
    dumped: dict[str, JsonValue] = data.model_dump(mode="json", exclude={"type"})
    return dumped
