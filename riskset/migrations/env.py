"""Alembic environment for riskset's records. Run through ``Records.migrate()``, which hands
over a connection already inside a transaction and holding the migration lock."""

from __future__ import annotations

from alembic import context

from riskset.records import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("riskset migrations run through riskset.records.Records.migrate()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode rebuilds tables when a later
    # revision needs it, and does nothing on PostgreSQL.
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
