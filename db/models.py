"""The mirror: SQL records of every build, its handoffs and its events.

Written only by activities (activities/mirror.py), idempotently: events and handoffs are
unique on (workflow_id, seq), and a build's row only moves forward (last_seq).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=Column(JSON, nullable=nullable))


def _when(nullable: bool = False, index: bool = False) -> Any:
    return Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=nullable, index=index)
    )


class BuildWorkflowRow(SQLModel, table=True):
    __tablename__ = "build_workflows"

    id: int | None = Field(default=None, primary_key=True)
    build_id: str = Field(unique=True, max_length=64)
    workflow_id: str = Field(unique=True, max_length=80)
    project_id: str = Field(index=True, max_length=128)
    user_id: str = Field(max_length=128)
    current_state: str = Field(index=True, max_length=32)
    current_role: str | None = Field(default=None, max_length=32)
    requirements: Any = _json(nullable=False)
    discovery_output: Any = _json()
    planning_output: Any = _json()
    implementation_output: Any = _json()
    testing_output: Any = _json()
    verification_output: Any = _json()
    deployment_output: Any = _json()
    attempts: Any = _json(nullable=False)
    loop_backs: int = 0
    last_error: str | None = None
    last_seq: int = 0
    created_at: datetime = _when(index=True)
    updated_at: datetime = _when()
    completed_at: datetime | None = _when(nullable=True)
    workflow_metadata: Any = _json()


class WorkflowHandoffRow(SQLModel, table=True):
    __tablename__ = "workflow_handoffs"
    __table_args__ = (UniqueConstraint("workflow_id", "seq", name="uq_handoff_workflow_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    workflow_id: str = Field(index=True, max_length=80)
    seq: int
    from_role: str = Field(max_length=32)
    to_role: str = Field(max_length=32)
    from_state: str = Field(max_length=32)
    to_state: str = Field(max_length=32)
    data_transferred: Any = _json(nullable=False)
    notes: str | None = None
    timestamp: datetime = _when()


class WorkflowEventRow(SQLModel, table=True):
    __tablename__ = "workflow_events"
    __table_args__ = (UniqueConstraint("workflow_id", "seq", name="uq_event_workflow_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    workflow_id: str = Field(index=True, max_length=80)
    seq: int
    event_type: str = Field(index=True, max_length=32)
    state: str = Field(max_length=32)
    triggered_by: str = Field(max_length=128)
    event_data: Any = _json(nullable=False)
    timestamp: datetime = _when()
