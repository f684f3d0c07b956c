"""the build state each kept answer was asked in, by which a re-run finds it

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 12:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "kept_answers",
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
    )
    op.create_index(
        "ix_kept_answers_build_role_attempt", "kept_answers", ["workflow_id", "role", "attempt"]
    )


def downgrade() -> None:
    op.drop_index("ix_kept_answers_build_role_attempt", table_name="kept_answers")
    op.drop_column("kept_answers", "state")
