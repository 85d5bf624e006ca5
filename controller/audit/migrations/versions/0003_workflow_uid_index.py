"""An index on workflow_uid: the runner looks up a run's deletion request by it (AuditStore.deletion_actor)
whenever it resumes a deletion (after a restart, or on another replica); without one, each lookup reads the
whole trail.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"

INDEX = "ix_audit_records_workflow_uid"  # the name SQLAlchemy gives `index=True` on the model's column


def upgrade() -> None:
    op.create_index(INDEX, "audit_records", ["workflow_uid"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="audit_records")
