"""What the mirror (activities/mirror.py, db/crud.py) is handed: a build's events and
handoffs, and the build's row as of its last event; and the role call that carries a batch.

Above core/role_io.py: a batch holds the roles' outputs, typed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, computed_field, model_validator

from core.build_io import BuildOptions, BuildRepository, Requirements
from core.events import EventData, EventType
from core.role_io import RoleContext, RoleOutput, RoleTask
from core.states import BuildState, Role


class HandoffMetadata(BaseModel):
    """Where a handoff stands: the build, the phase handing off, and the next role's attempt."""

    build_id: str
    from_state: BuildState
    attempt: int  # the next role's attempt at its state
    loop_backs: int
    guidance: list[str] = Field(default_factory=list)  # what people added, for every role


class BuildEvent(BaseModel):
    """One event of a build; seq is assigned in the workflow, so it is stable across replays."""

    seq: int
    state: BuildState
    triggered_by: str  # a role, "system" (core/outcomes.Actor) or the person who asked
    data: EventData
    timestamp: datetime

    @model_validator(mode="before")
    @classmethod
    def _typed(cls, value: Any) -> Any:
        """The payload's `type` is the event's: a batch of an earlier version carries none."""
        data = value.get("data") if isinstance(value, dict) else None
        if isinstance(data, dict) and "type" not in data and "event_type" in value:
            return {**value, "data": {**data, "type": value["event_type"]}}
        return value

    @computed_field  # type: ignore[prop-decorator]
    @property
    def event_type(self) -> EventType:
        return self.data.type


class HandoffContext(BaseModel):
    """What a HANDOFF_TO_* state hands the next role (core/rules.handoff_parts)."""

    instructions: str
    previous_output: RoleOutput | None  # the output of the phase handing off
    phase_data: RoleContext  # what the next role is given
    metadata: HandoffMetadata


class Handoff(HandoffContext):
    """A handoff the build made: who to whom, from which state to which, and its context."""

    seq: int
    from_role: Role
    to_role: Role
    from_state: BuildState
    to_state: BuildState
    timestamp: datetime


class BuildSnapshot(BaseModel):
    """A build's row in the mirror as of `last_seq`; outputs only for phases that changed."""

    build_id: str
    workflow_id: str
    project_id: str
    user_id: str
    requirements: Requirements
    state: BuildState
    current_role: Role | None
    attempts: dict[BuildState, int]
    loop_backs: int
    last_error: str | None
    completed_phases: list[BuildState] = Field(default_factory=list)
    waiting_for: str | None = None
    pending_command: str | None = None
    failed_state: BuildState | None = None
    failure_reason: str | None = None
    usage: dict[str, dict[str, float]] = Field(default_factory=dict)
    tokens: int = 0
    cost_usd: float = 0.0
    outputs: dict[BuildState, RoleOutput] = Field(default_factory=dict)
    options: BuildOptions = Field(default_factory=BuildOptions)
    repository: BuildRepository | None = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    duration_seconds: float | None = None
    last_seq: int
    run_id: str | None = None  # None: a batch of a build recorded before runs were told apart


class MirrorBatch(BaseModel):
    """What the workflow hands the mirror at a boundary: new events and handoffs, the snapshot."""

    snapshot: BuildSnapshot
    events: list[BuildEvent]
    handoffs: list[Handoff]


class MirrorReceipt(BaseModel):
    events_inserted: int
    handoffs_inserted: int
    build_updated: bool


class RoleCall(RoleTask):
    """A role activity's input: its task, and the mirror's batch the call writes before its
    role works (one workflow step less per call). The role itself is given the task alone
    (activities/roles.py), so nothing of the mirror reaches a prompt."""

    mirror: MirrorBatch | None = None

    @classmethod
    def of(cls, task: RoleTask, mirror: MirrorBatch | None) -> RoleCall:
        return cls.model_validate({**dict(task), "mirror": mirror})

    def task(self) -> RoleTask:
        return RoleTask.model_validate({n: getattr(self, n) for n in RoleTask.model_fields})
