"""Refunds of online payments and the daily trade-bill reconciliation (issue 11).

`payment_refund`: one row per refund we ask a provider for (our `out_refund_no`, unique),
REQUESTED → PROCESSING → SUCCESS | ABNORMAL | CLOSED. `payment_reconciliation`: one row per
provider and day compared against the provider's T+1 trade bill.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

#: SQLite only autoincrements INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)
REFUND_STATES = "state IN ('REQUESTED', 'PROCESSING', 'SUCCESS', 'ABNORMAL', 'CLOSED')"
RECONCILIATION_STATES = "state IN ('OK', 'DIFFERENCES', 'FAILED')"


def upgrade() -> None:
    op.create_table(
        "payment_refund",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("out_refund_no", sa.String(length=64), nullable=False),
        sa.Column("order_id", BIG_ID, nullable=False),
        sa.Column("out_trade_no", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("refund_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("failure", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_notice", sa.JSON(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("last_query_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["payment_order.id"],
            name=op.f("fk_payment_refund_order_id_payment_order"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_refund")),
        sa.UniqueConstraint("out_refund_no", name=op.f("uq_payment_refund_out_refund_no")),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_payment_refund_positive")),
        sa.CheckConstraint(REFUND_STATES, name=op.f("ck_payment_refund_state")),
    )
    op.create_index("ix_payment_refund_state", "payment_refund", ["state"])
    op.create_index("ix_payment_refund_order_id", "payment_refund", ["order_id"])
    op.create_table(
        "payment_reconciliation",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("bill_rows", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("matched", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("credited", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("differences", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("paid_fen", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("refunded_fen", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_reconciliation")),
        sa.UniqueConstraint("day", "channel", name=op.f("uq_payment_reconciliation_day_channel")),
        sa.CheckConstraint(RECONCILIATION_STATES, name=op.f("ck_payment_reconciliation_state")),
    )


def downgrade() -> None:
    op.drop_table("payment_reconciliation")
    op.drop_index("ix_payment_refund_order_id", table_name="payment_refund")
    op.drop_index("ix_payment_refund_state", table_name="payment_refund")
    op.drop_table("payment_refund")
