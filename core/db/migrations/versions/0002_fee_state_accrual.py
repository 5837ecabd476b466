"""Fee state on the account and the per-meter usage accrual.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: SQLite only autoincrements INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("account") as batch:
        batch.add_column(
            sa.Column("fee_state", sa.String(16), nullable=False, server_default="NORMAL")
        )
        batch.add_column(sa.Column("fee_state_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "usage_accrual",
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("cycle", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("cum_exact_fen", sa.String(length=100), nullable=False),
        sa.Column("posted_fen", sa.BigInteger(), nullable=False),
        sa.Column("rounding", sa.String(length=16), nullable=False),
        sa.Column("period_key", sa.String(length=100), nullable=False),
        sa.Column("journal_id", BIG_ID, nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_usage_accrual_account_id_account")
        ),
        sa.ForeignKeyConstraint(
            ["journal_id"], ["journal.id"], name=op.f("fk_usage_accrual_journal_id_journal")
        ),
        sa.PrimaryKeyConstraint("meter_id", "cycle", name=op.f("pk_usage_accrual")),
    )


def downgrade() -> None:
    op.drop_table("usage_accrual")
    with op.batch_alter_table("account") as batch:
        batch.drop_column("fee_state_at")
        batch.drop_column("fee_state")
