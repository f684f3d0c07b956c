"""The mirror: SQL records of every build, its handoffs and its events.

Written only by activities (activities/mirror.py), idempotently: events and handoffs are
unique on (workflow_id, seq), and a build's row only moves forward (last_seq). Each table
has a family: `XBase` (shared fields), `XRow` (the table), `XPublic` (what the API returns).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Dialect, Index, TypeDecorator, UniqueConstraint
from sqlmodel import Field, SQLModel

from core.events import EventData, event_data


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC, read back timezone-aware (SQLite keeps no zone; PostgreSQL does)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def _when(nullable: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime, nullable=nullable, index=index))


class BuildSummaryBase(SQLModel):
    """What a list of builds shows of each: who, where it is, how it went."""

    build_id: str = Field(unique=True, max_length=64)
    workflow_id: str = Field(unique=True, max_length=80)
    project_id: str = Field(index=True, max_length=128)
    user_id: str = Field(max_length=128)
    current_state: str = Field(index=True, max_length=32)
    current_role: str | None = Field(default=None, max_length=32)
    loop_backs: int = 0
    last_error: str | None = None
    failed_state: str | None = Field(default=None, max_length=32)
    failure_reason: str | None = Field(default=None, max_length=200)
    waiting_for: str | None = Field(default=None, max_length=200)
    pending_command: str | None = Field(default=None, max_length=200)
    duration_seconds: float | None = None
    tokens: int = 0
    cost_usd: float = 0.0
    created_at: datetime = _when(index=True)
    updated_at: datetime = _when()
    completed_at: datetime | None = _when(nullable=True)
    # Where the build stands in its project's repository (None: it has none).
    repository: str | None = Field(default=None, max_length=2000)
    branch: str | None = Field(default=None, max_length=200)
    base_commit: str | None = Field(default=None, max_length=64)
    build_branch: str | None = Field(default=None, max_length=200)
    head_commit: str | None = Field(default=None, max_length=64)
    delivered_commit: str | None = Field(default=None, max_length=64)
    version: str | None = Field(default=None, max_length=200)
    delivery: str | None = Field(default=None, max_length=16)


class BuildWorkflowRow(BuildSummaryBase, table=True):
    __tablename__ = "build_workflows"
    __table_args__ = (
        Index("ix_build_workflows_project_state", "project_id", "current_state"),
        Index("ix_build_workflows_project_created", "project_id", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    requirements: Any = _json(nullable=False)
    discovery_output: Any = _json()
    planning_output: Any = _json()
    implementation_output: Any = _json()
    testing_output: Any = _json()
    verification_output: Any = _json()
    deployment_output: Any = _json()
    attempts: Any = _json(nullable=False)
    completed_phases: Any = _json()
    usage: Any = _json()
    last_seq: int = 0
    # The Temporal run that wrote the row: a reset's new run replaces what the old one wrote
    # after the point it was reset to (db/crud.py).
    run_id: str | None = Field(default=None, max_length=64)
    workflow_metadata: Any = _json()


class BuildSummaryPublic(BuildSummaryBase):
    last_seq: int


class WorkflowHandoffBase(SQLModel):
    seq: int
    from_role: str = Field(max_length=32)
    to_role: str = Field(max_length=32)
    from_state: str = Field(max_length=32)
    to_state: str = Field(max_length=32)
    notes: str | None = None


class WorkflowHandoffRow(WorkflowHandoffBase, table=True):
    __tablename__ = "workflow_handoffs"
    __table_args__ = (UniqueConstraint("workflow_id", "seq", name="uq_handoff_workflow_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    workflow_id: str = Field(index=True, max_length=80)
    data_transferred: Any = _json(nullable=False)
    timestamp: datetime = _when()


class WorkflowHandoffPublic(WorkflowHandoffBase):
    data_transferred: dict[str, Any]
    timestamp: datetime


class WorkflowEventBase(SQLModel):
    seq: int
    event_type: str = Field(index=True, max_length=32)
    state: str = Field(max_length=32)
    triggered_by: str = Field(max_length=128)


class WorkflowEventRow(WorkflowEventBase, table=True):
    __tablename__ = "workflow_events"
    __table_args__ = (UniqueConstraint("workflow_id", "seq", name="uq_event_workflow_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    workflow_id: str = Field(index=True, max_length=80)
    event_data: Any = _json(nullable=False)
    timestamp: datetime = _when()


class WorkflowEventPublic(WorkflowEventBase):
    event_data: EventData  # typed by its `type`, the row's event_type
    timestamp: datetime

    @classmethod
    def of(cls, row: WorkflowEventRow) -> WorkflowEventPublic:
        return cls(
            seq=row.seq,
            event_type=row.event_type,
            state=row.state,
            triggered_by=row.triggered_by,
            event_data=event_data(row.event_type, row.event_data),
            timestamp=row.timestamp,
        )


class BuildRoleUsageRow(SQLModel, table=True):
    """Per build and role: calls, tokens and cost (what project stats add up by role)."""

    __tablename__ = "build_role_usage"
    __table_args__ = (
        UniqueConstraint("workflow_id", "role", name="uq_usage_workflow_role"),
        # Covers the stats query: per role, summed, within a project.
        Index(
            "ix_build_role_usage_project_role", "project_id", "role", "calls", "tokens", "cost_usd"
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    project_id: str = Field(max_length=128)
    workflow_id: str = Field(max_length=80)
    role: str = Field(max_length=32)
    calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0


class KeptAnswerRow(SQLModel, table=True):
    """A model's complete answer, kept for a retry of its call (activities/model/answers.py, with
    ANSWER_STORE=database: every worker of a fleet finds it). No key, header or prompt."""

    __tablename__ = "kept_answers"
    __table_args__ = (
        UniqueConstraint(
            "workflow_id", "role", "attempt", "request_hash", name="uq_kept_answer_request"
        ),
        Index("ix_kept_answers_build_role_attempt", "workflow_id", "role", "attempt"),
    )

    id: int | None = Field(default=None, primary_key=True)
    workflow_id: str = Field(max_length=80)
    role: str = Field(max_length=32)
    attempt: int
    state: str | None = Field(default=None, max_length=32)  # None: kept before states were
    request_hash: str = Field(max_length=64)
    answer: Any = _json(nullable=False)
    usage: Any = _json(nullable=False)
    kept_at: datetime = _when(index=True)
