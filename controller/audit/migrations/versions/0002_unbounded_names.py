"""Names without a length limit: principal and actor are Kubernetes user names (no limit; a
ServiceAccount-style or OIDC name can exceed 253 characters), workflow and step follow.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

COLUMNS = {"workflow": (253, False), "step": (63, True), "principal": (253, True), "actor": (253, True)}


def upgrade() -> None:
    # Batch mode: SQLite cannot ALTER a column's type, so Alembic copies the table there (PostgreSQL
    # alters in place).
    with op.batch_alter_table("audit_records") as batch:
        for name, (length, nullable) in COLUMNS.items():
            batch.alter_column(name, type_=sa.Text(), existing_type=sa.String(length), existing_nullable=nullable)


def downgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        for name, (length, nullable) in COLUMNS.items():
            batch.alter_column(name, type_=sa.String(length), existing_type=sa.Text(), existing_nullable=nullable)
