"""Refunds of LOCAL meters: the meter is debited first (AWAITING_METER).

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: SQLite only autoincrements INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
STATES_BEFORE = "state IN ('REQUESTED', 'SETTLED', 'FAILED')"
STATES_AFTER = "state IN ('AWAITING_METER', 'REQUESTED', 'SETTLED', 'FAILED')"


def upgrade() -> None:
    with op.batch_alter_table("refund", recreate="auto") as batch:
        batch.add_column(sa.Column("meter_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("command_id", BIG_ID, nullable=True))
        batch.add_column(
            sa.Column("settle_on_confirm", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.alter_column("request_journal_id", existing_type=BIG_ID, nullable=True)
        batch.drop_constraint(op.f("ck_refund_state"), type_="check")
        batch.create_check_constraint(op.f("ck_refund_state"), sa.text(STATES_AFTER))


def downgrade() -> None:
    with op.batch_alter_table("refund", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_refund_state"), type_="check")
        batch.create_check_constraint(op.f("ck_refund_state"), sa.text(STATES_BEFORE))
        batch.alter_column("request_journal_id", existing_type=BIG_ID, nullable=False)
        batch.drop_column("settle_on_confirm")
        batch.drop_column("command_id")
        batch.drop_column("meter_id")
