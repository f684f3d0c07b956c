"""Score cards read from the mirror (core/scores.py makes them): one build's, and a project's
role calls summed by model and prompt version."""

from __future__ import annotations

from sqlmodel import Session, col, select

from core.events import EventType
from core.scores import ModelScore, ScoreCard, by_model_and_prompt, score_card
from db import crud
from db.models import BuildWorkflowRow, WorkflowEventRow


def score_of(session: Session, *, workflow_id: str) -> ScoreCard | None:
    """The build's score card as the mirror has it, or None if the mirror has no such build."""
    build = crud.get_build(session, workflow_id=workflow_id)
    if build is None:
        return None
    return score_card(build, crud.list_events(session, workflow_id=workflow_id))


def project_model_scores(session: Session, *, project_id: str) -> list[ModelScore]:
    """The project's role calls per role, model and prompt version, with the builds each
    answered in and how many of those completed."""
    b, e = BuildWorkflowRow, WorkflowEventRow
    outcomes = dict(
        session.exec(select(b.workflow_id, b.current_state).where(b.project_id == project_id)).all()
    )
    calls = session.exec(
        select(e)
        .join(b, col(b.workflow_id) == col(e.workflow_id))
        .where(b.project_id == project_id, e.event_type == EventType.ROLE_CALL.value)
        .order_by(col(e.workflow_id), col(e.seq))
    ).all()
    return by_model_and_prompt(outcomes, ((call.workflow_id, call) for call in calls))
