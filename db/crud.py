"""Keyword-only writes and reads of the mirror. Writes are idempotent: safe to repeat."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, func
from sqlalchemy import select as sa_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from core.events import stored
from core.mirror import BuildSnapshot, MirrorBatch, MirrorReceipt
from core.states import WORKING, BuildState
from db.models import (
    BuildRoleUsageRow,
    BuildWorkflowRow,
    WorkflowEventRow,
    WorkflowHandoffRow,
)

OUTPUT_COLUMNS = {state.value: f"{state.value}_output" for state in WORKING}


def table_of(model: Any) -> Table:
    table: Table = model.__table__
    return table


def _insert(dialect: str, table: Table) -> Any:
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)


# The mirror's writes are the same few statements with new values, many times a second: each is
# built once per dialect (and column set) and executed with parameters, so SQLAlchemy compiles
# it once. Building them per write (multi-row VALUES, `excluded` proxies) cost most of a write.
@functools.cache
def _insert_new_stmt(dialect: str, table: Table) -> Any:
    """Insert rows whose (workflow_id, seq) is new, returning the seq of each inserted."""
    insert = _insert(dialect, table)
    return insert.on_conflict_do_nothing(index_elements=["workflow_id", "seq"]).returning(
        table.c.seq
    )


@functools.cache
def _upsert_stmt(
    dialect: str, table: Table, keys: tuple[str, ...], columns: frozenset[str], newer: str | None
) -> Any:
    """Insert, or update `columns` of the row with the same `keys` (if `newer` is given: only
    when the new row's `newer` is at least the stored one's), returning the key of what was
    written."""
    insert = _insert(dialect, table)
    stmt = insert.on_conflict_do_update(
        index_elements=list(keys),
        set_={k: insert.excluded[k] for k in sorted(columns)},
        where=table.c[newer] <= insert.excluded[newer] if newer else None,
    )
    return stmt.returning(table.c[keys[0]])


ELLIPSIS = "…"


def bounded(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    """`row` as its table takes it: every text cut to its column's length (with an ellipsis)
    and without NUL characters, which PostgreSQL refuses in text (SQLite checks neither, so
    what passes there would be refused there). Every write of the mirror goes through here."""
    out = dict(row)
    for key, value in row.items():
        if not isinstance(value, str):
            continue
        value = value.replace("\x00", "")
        length = getattr(table.c[key].type, "length", None)
        if length is not None and len(value) > length:
            value = value[: length - len(ELLIPSIS)] + ELLIPSIS
        out[key] = value
    return out


def insert_new(conn: Connection, engine: Engine, table: Table, rows: list[dict[str, Any]]) -> int:
    """Insert rows whose (workflow_id, seq) is new; return how many were (via RETURNING)."""
    stmt = _insert_new_stmt(engine.dialect.name, table)
    return len(conn.execute(stmt, [bounded(table, row) for row in rows]).all())


def build_values(snapshot: BuildSnapshot) -> dict[str, Any]:
    """The build_workflows row of a snapshot."""
    values: dict[str, Any] = {
        "build_id": snapshot.build_id,
        "workflow_id": snapshot.workflow_id,
        "project_id": snapshot.project_id,
        "user_id": snapshot.user_id,
        "current_state": snapshot.state.value,
        "current_role": snapshot.current_role.value if snapshot.current_role else None,
        "requirements": snapshot.requirements,
        "attempts": snapshot.attempts,
        "loop_backs": snapshot.loop_backs,
        "last_error": snapshot.last_error,
        "completed_phases": [s.value for s in snapshot.completed_phases],
        "waiting_for": snapshot.waiting_for,
        "pending_command": snapshot.pending_command,
        "failed_state": snapshot.failed_state.value if snapshot.failed_state else None,
        "failure_reason": snapshot.failure_reason,
        "duration_seconds": snapshot.duration_seconds,
        "usage": snapshot.usage,
        "tokens": snapshot.tokens,
        "cost_usd": snapshot.cost_usd,
        "last_seq": snapshot.last_seq,
        "created_at": snapshot.created_at,
        "updated_at": snapshot.updated_at,
        "completed_at": snapshot.completed_at,
        "workflow_metadata": {
            "options": snapshot.options.model_dump(mode="json", exclude={"policy"})
        },
    }
    if snapshot.run_id is not None:
        values["run_id"] = snapshot.run_id
    for state, output in snapshot.outputs.items():
        values[OUTPUT_COLUMNS[state]] = output.model_dump(mode="json")
    repo = snapshot.repository
    values |= {
        "repository": repo.repository if repo else None,
        "branch": repo.branch if repo else None,
        "base_commit": repo.base if repo else None,
        "build_branch": repo.build_branch if repo else None,
        "head_commit": repo.head if repo else None,
        "delivered_commit": repo.delivered if repo else None,
        "version": repo.version if repo else None,
        "delivery": repo.delivery if repo else None,
    }
    return values


def _upsert_usage(conn: Connection, engine: Engine, snapshot: BuildSnapshot) -> None:
    table = table_of(BuildRoleUsageRow)
    rows = [
        {
            "project_id": snapshot.project_id,
            "workflow_id": snapshot.workflow_id,
            "role": role,
            "calls": int(numbers.get("calls", 0)),
            "tokens": int(numbers.get("prompt_tokens", 0) + numbers.get("completion_tokens", 0)),
            "cost_usd": float(numbers.get("cost_usd", 0.0)),
        }
        for role, numbers in snapshot.usage.items()
    ]
    columns = frozenset({"calls", "tokens", "cost_usd"})
    stmt = _upsert_stmt(engine.dialect.name, table, ("workflow_id", "role"), columns, None)
    conn.execute(stmt, [bounded(table, row) for row in rows]).all()


def _drop_reset_branch(conn: Connection, snapshot: BuildSnapshot, first_seq: int) -> None:
    """A batch from another run of the build's workflow than the one that wrote its row (a
    reset made a new run): the rows from the batch's first event on were written by the run
    the reset dropped, and go; the build row steps back to that point, to be written by the
    new run. Rows of builds recorded before runs were told apart carry no run and stay."""
    builds, events, handoffs = (
        table_of(BuildWorkflowRow),
        table_of(WorkflowEventRow),
        table_of(WorkflowHandoffRow),
    )
    stored = conn.execute(
        sa_select(builds.c.run_id).where(builds.c.build_id == snapshot.build_id)
    ).first()
    if stored is None or None in (stored[0], snapshot.run_id) or stored[0] == snapshot.run_id:
        return
    for table in (events, handoffs):
        conn.execute(
            table.delete().where(
                table.c.workflow_id == snapshot.workflow_id, table.c.seq >= first_seq
            )
        )
    conn.execute(
        builds.update()
        .where(builds.c.build_id == snapshot.build_id)
        .values(run_id=snapshot.run_id, last_seq=first_seq - 1)
    )


def record_batch(engine: Engine, *, batch: MirrorBatch) -> MirrorReceipt:
    """Insert what is new, ignore what is there, move the build row forward only (but for a
    reset's new run, which first replaces what the run it dropped wrote)."""
    events, handoffs, builds = (
        table_of(WorkflowEventRow),
        table_of(WorkflowHandoffRow),
        table_of(BuildWorkflowRow),
    )
    snapshot = batch.snapshot
    with engine.begin() as conn:
        _drop_reset_branch(conn, snapshot, snapshot.last_seq - len(batch.events) + 1)
        events_inserted = handoffs_inserted = 0
        if batch.events:
            rows = [
                {
                    "workflow_id": snapshot.workflow_id,
                    "seq": e.seq,
                    "event_type": e.event_type.value,
                    "state": e.state.value,
                    "triggered_by": e.triggered_by,
                    "event_data": stored(e.data),
                    "timestamp": e.timestamp,
                }
                for e in batch.events
            ]
            events_inserted = insert_new(conn, engine, events, rows)
        if batch.handoffs:
            rows = [
                {
                    "workflow_id": snapshot.workflow_id,
                    "seq": h.seq,
                    "from_role": h.from_role.value,
                    "to_role": h.to_role.value,
                    "from_state": h.from_state.value,
                    "to_state": h.to_state.value,
                    "data_transferred": h.model_dump(
                        mode="json",
                        include={"instructions", "previous_output", "phase_data", "metadata"},
                    ),
                    "notes": h.instructions,
                    "timestamp": h.timestamp,
                }
                for h in batch.handoffs
            ]
            handoffs_inserted = insert_new(conn, engine, handoffs, rows)
        values = bounded(builds, build_values(snapshot))
        columns = frozenset(values) - {"build_id", "created_at"}
        stmt = _upsert_stmt(engine.dialect.name, builds, ("build_id",), columns, "last_seq")
        # RETURNING counts what was really written (rowcount is -1 with psycopg here).
        build_updated = conn.execute(stmt, values).first() is not None
        if build_updated and snapshot.usage:  # usage only grows: written with a fresh snapshot
            _upsert_usage(conn, engine, snapshot)
    return MirrorReceipt(
        events_inserted=events_inserted,
        handoffs_inserted=handoffs_inserted,
        build_updated=build_updated,
    )


def first_build(
    session: Session, build_id: str, *, prefix: bool = False
) -> BuildWorkflowRow | None:
    """The build of id `build_id` (`prefix`: the first whose id begins with it)."""
    column = col(BuildWorkflowRow.build_id)
    where = column.startswith(build_id, autoescape=True) if prefix else column == build_id
    return session.exec(select(BuildWorkflowRow).where(where).limit(1)).first()


def get_build(session: Session, *, workflow_id: str) -> BuildWorkflowRow | None:
    return session.exec(
        select(BuildWorkflowRow).where(BuildWorkflowRow.workflow_id == workflow_id)
    ).first()


def list_events(
    session: Session, *, workflow_id: str, after_seq: int = 0, limit: int | None = None
) -> list[WorkflowEventRow]:
    query = (
        select(WorkflowEventRow)
        .where(WorkflowEventRow.workflow_id == workflow_id, WorkflowEventRow.seq > after_seq)
        .order_by(col(WorkflowEventRow.seq))
        .limit(limit)
    )
    return list(session.exec(query).all())


def list_handoffs(session: Session, *, workflow_id: str) -> list[WorkflowHandoffRow]:
    query = (
        select(WorkflowHandoffRow)
        .where(WorkflowHandoffRow.workflow_id == workflow_id)
        .order_by(col(WorkflowHandoffRow.seq))
    )
    return list(session.exec(query).all())


@dataclass
class StateCount:
    state: str
    builds: int
    loop_backs: int
    average_duration_seconds: float | None
    tokens: int
    cost_usd: float


@dataclass
class FailureCount:
    failed_state: str | None
    failure_reason: str | None
    builds: int
    example: str | None


def project_versions(session: Session, *, project_id: str) -> list[BuildWorkflowRow]:
    """The project's builds that delivered a version, in the order they finished."""
    b = BuildWorkflowRow
    query = (
        select(b)
        .where(col(b.project_id) == project_id, col(b.version).is_not(None))
        .where(col(b.current_state) == "complete")
        .order_by(col(b.completed_at), col(b.id))
    )
    return list(session.exec(query).all())


def project_state_counts(session: Session, *, project_id: str) -> list[StateCount]:
    """Per current state: builds, their loop-backs, and their average duration when finished."""
    b = BuildWorkflowRow
    query = (
        sa_select(
            col(b.current_state),
            func.count(),
            func.sum(b.loop_backs),
            func.avg(b.duration_seconds),
            func.sum(b.tokens),
            func.sum(b.cost_usd),
        )
        .where(col(b.project_id) == project_id)
        .group_by(col(b.current_state))
        .order_by(col(b.current_state))
    )
    return [
        StateCount(
            state,
            count,
            int(loops or 0),
            None if avg is None else float(avg),
            int(tokens or 0),
            float(cost or 0),
        )
        for state, count, loops, avg, tokens, cost in session.execute(query).all()
    ]


def project_usage_by_role(session: Session, *, project_id: str) -> dict[str, dict[str, float]]:
    """Calls, tokens and cost per role over the project's builds."""
    u = BuildRoleUsageRow
    query = (
        sa_select(col(u.role), func.sum(u.calls), func.sum(u.tokens), func.sum(u.cost_usd))
        .where(col(u.project_id) == project_id)
        .group_by(col(u.role))
        .order_by(col(u.role))
    )
    return {
        role: {"calls": int(calls or 0), "tokens": int(tokens or 0), "cost_usd": float(cost or 0)}
        for role, calls, tokens, cost in session.execute(query).all()
    }


def project_failures(session: Session, *, project_id: str) -> list[FailureCount]:
    """Failed builds grouped by the state they failed in and the kind of failure."""
    b = BuildWorkflowRow
    query = (
        select(b.failed_state, b.failure_reason, func.count(), func.max(b.last_error))
        .where(b.project_id == project_id, b.current_state == BuildState.FAILED.value)
        .group_by(col(b.failed_state), col(b.failure_reason))
        .order_by(func.count().desc(), col(b.failed_state), col(b.failure_reason))
    )
    return [FailureCount(*row) for row in session.exec(query).all()]


def fleet_state_counts(session: Session) -> dict[str, tuple[int, int]]:
    """Builds and their loop-backs per current state, over all projects (for /metrics)."""
    b = BuildWorkflowRow
    query = sa_select(col(b.current_state), func.count(), func.sum(b.loop_backs)).group_by(
        col(b.current_state)
    )
    return {state: (count, int(loops or 0)) for state, count, loops in session.execute(query)}


def fleet_usage_by_role(session: Session) -> dict[str, tuple[int, int, float]]:
    """Calls, tokens and cost per role over all builds (for /metrics)."""
    u = BuildRoleUsageRow
    query = sa_select(
        col(u.role), func.sum(u.calls), func.sum(u.tokens), func.sum(u.cost_usd)
    ).group_by(col(u.role))
    return {
        role: (int(calls or 0), int(tokens or 0), float(cost or 0))
        for role, calls, tokens, cost in session.execute(query)
    }
