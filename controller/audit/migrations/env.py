"""Alembic environment: the connection comes from AuditStore.migrate()."""

from alembic import context

from controller.audit.store import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
