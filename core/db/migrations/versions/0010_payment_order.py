"""Online payment orders (issue 11): one row per WeChat Pay / Alipay order, from creation
to credit, with its state, the provider's transaction id and the last notice.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

#: SQLite only autoincrements INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)
STATES = "state IN ('CREATED', 'PAID', 'CREDITED', 'CLOSED', 'REFUNDED', 'CONFLICT')"


def upgrade() -> None:
    op.create_table(
        "payment_order",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("out_trade_no", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("room", sa.String(length=64), nullable=True),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("transaction_id", sa.String(length=64), nullable=True),
        sa.Column("merchant_id", sa.String(length=64), nullable=False),
        sa.Column("app_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("paid_at", TS, nullable=True),
        sa.Column("credited_at", TS, nullable=True),
        sa.Column("closed_at", TS, nullable=True),
        sa.Column("refunded_fen", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("conflict", sa.Text(), nullable=True),
        sa.Column("notices", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_notice", sa.JSON(), nullable=True),
        sa.Column("last_query_at", TS, nullable=True),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_payment_order_account_id_account")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_order")),
        sa.UniqueConstraint("out_trade_no", name=op.f("uq_payment_order_out_trade_no")),
        sa.UniqueConstraint("transaction_id", name=op.f("uq_payment_order_transaction_id")),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_payment_order_positive")),
        sa.CheckConstraint(STATES, name=op.f("ck_payment_order_state")),
        sa.CheckConstraint(
            "refunded_fen >= 0 AND refunded_fen <= amount_fen",
            name=op.f("ck_payment_order_refunded"),
        ),
    )
    op.create_index("ix_payment_order_state", "payment_order", ["state"])
    op.create_index("ix_payment_order_account_id", "payment_order", ["account_id"])


def downgrade() -> None:
    op.drop_index("ix_payment_order_account_id", table_name="payment_order")
    op.drop_index("ix_payment_order_state", table_name="payment_order")
    op.drop_table("payment_order")
