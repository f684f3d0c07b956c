"""where a build stands in its project's repository

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("repository", 2000),
    ("branch", 200),
    ("base_commit", 64),
    ("build_branch", 200),
    ("head_commit", 64),
    ("delivered_commit", 64),
    ("version", 200),
    ("delivery", 16),
)


def upgrade() -> None:
    with op.batch_alter_table("build_workflows", schema=None) as batch_op:
        for name, length in COLUMNS:
            batch_op.add_column(
                sa.Column(name, sqlmodel.sql.sqltypes.AutoString(length=length), nullable=True)
            )


def downgrade() -> None:
    with op.batch_alter_table("build_workflows", schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
