"""Batch items follow their device commands to the end: the commands an item queued
(`batch_item.command_ids`) and the state WAITING (carried out, its commands not finished),
looked up by state.

Items carried out before this revision keep their result as it was recorded.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STATES_BEFORE = "state IN ('PENDING', 'RUNNING', 'DONE', 'FAILED')"
STATES_AFTER = "state IN ('PENDING', 'RUNNING', 'WAITING', 'DONE', 'FAILED')"


def upgrade() -> None:
    with op.batch_alter_table("batch_item", recreate="auto") as batch:
        batch.add_column(sa.Column("command_ids", sa.JSON(), nullable=True))
        batch.drop_constraint(op.f("ck_batch_item_state"), type_="check")
        batch.create_check_constraint(op.f("ck_batch_item_state"), sa.text(STATES_AFTER))
    op.create_index("ix_batch_item_state", "batch_item", ["state"])


def downgrade() -> None:
    op.drop_index("ix_batch_item_state", table_name="batch_item")
    # A WAITING item did what it was asked; only its device outcome was still open.
    op.execute("UPDATE batch_item SET state = 'DONE' WHERE state = 'WAITING'")
    with op.batch_alter_table("batch_item", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_batch_item_state"), type_="check")
        batch.create_check_constraint(op.f("ck_batch_item_state"), sa.text(STATES_BEFORE))
        batch.drop_column("command_ids")
