"""Whether model answers are kept under a build id, wherever ANSWER_STORE keeps them (the store
itself, and how it lays them out: activities/model/answers.py). The client asks before a start,
without loading the activities: a build id under which answers are kept is taken."""

from __future__ import annotations

from sqlalchemy import Engine, select

from core.settings import Settings
from db.models import KeptAnswerRow


def answers_kept(settings: Settings, engine: Engine, build_id: str) -> bool:
    if settings.answer_store == "database":
        row = KeptAnswerRow.__table__.c  # type: ignore[attr-defined]
        query = select(row.workflow_id).where(row.workflow_id == build_id).limit(1)
        with engine.connect() as conn:
            return conn.execute(query).first() is not None
    folder = settings.answers / build_id  # one folder per build
    return folder.is_dir() and any(folder.iterdir())
