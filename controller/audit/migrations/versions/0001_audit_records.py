"""The audit_records table.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("recorded_at", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False, index=True),
        sa.Column("namespace", sa.String(253), nullable=False, index=True),
        sa.Column("workflow", sa.String(253), nullable=False, index=True),
        sa.Column("workflow_uid", sa.String(64), nullable=False),
        sa.Column("step", sa.String(63), nullable=True),
        sa.Column("principal", sa.String(253), nullable=True),
        sa.Column("actor", sa.String(253), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
    )


def downgrade() -> None:
    op.drop_table("audit_records")
