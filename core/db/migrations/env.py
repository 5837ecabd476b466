"""Alembic environment: runs on the connection `Database.upgrade()` hands over."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `Database.upgrade()` runs migrations
    raise RuntimeError("run migrations with `openprepay db upgrade SITE`")

context.configure(
    connection=connection,
    target_metadata=None,
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
