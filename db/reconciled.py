"""The reconciler's reads and writes of the mirror (serving/reconcile.py): the builds the mirror
still calls open, and the last word of one that was ended from outside its workflow."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from core.events import Cancelled, Failed, stored
from core.outcomes import Ending
from core.states import TERMINAL, BuildState
from db.crud import bounded, insert_new, table_of
from db.models import BuildWorkflowRow, WorkflowEventRow


def open_builds(session: Session, *, limit: int = 500) -> list[str]:
    """The workflow ids of builds the mirror still calls open (not COMPLETE, FAILED or
    CANCELLED), the least recently updated first."""
    ended = [s.value for s in TERMINAL]
    query = (
        select(BuildWorkflowRow.workflow_id)
        .where(col(BuildWorkflowRow.current_state).not_in(ended))
        .order_by(col(BuildWorkflowRow.updated_at))
        .limit(limit)
    )
    return list(session.exec(query).all())


def record_ended_outside(
    engine: Engine, *, workflow_id: str, state: BuildState, reason: str, at: datetime
) -> bool:
    """A build ended from outside the workflow (terminated, timed out), written as its last
    event and state: only if the mirror still calls it open, so of several reconcilers one
    writes it, once. Whether this call wrote it."""
    builds, events = table_of(BuildWorkflowRow), table_of(WorkflowEventRow)
    ended = [s.value for s in TERMINAL]
    reason = bounded(builds, {"failure_reason": reason})["failure_reason"]
    with engine.begin() as conn:
        stmt = (
            builds.update()
            .where(builds.c.workflow_id == workflow_id, builds.c.current_state.not_in(ended))
            .values(
                current_state=state.value,
                failure_reason=reason if state is BuildState.FAILED else None,
                last_error=reason,
                waiting_for=None,
                pending_command=None,
                current_role=None,
                updated_at=at,
                completed_at=at,
                last_seq=builds.c.last_seq + 1,
            )
            .returning(builds.c.last_seq, builds.c.current_state)
        )
        row = conn.execute(stmt).first()
        if row is None:
            return False
        event: Failed | Cancelled = (
            Failed(reason=reason, ending=Ending.TERMINATED, outside=True)
            if state is BuildState.FAILED
            else Cancelled(reason=reason, outside=True)
        )
        insert_new(conn, engine, events, [{
            "workflow_id": workflow_id, "seq": row[0], "event_type": event.type.value,
            "state": state.value, "triggered_by": "temporal",
            "event_data": stored(event), "timestamp": at,
        }])  # fmt: skip
    return True
