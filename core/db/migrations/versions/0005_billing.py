"""Billing operations: meter readings at the freeze instants, common-area and charge runs,
itemised charges, post-paid bills and their payments, batch jobs with their items, and the
month-end of each period (core/billing).

Revision ID: 0005
Revises: 0004
Create Date: 2025-01-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

#: SQLite only autoincrements INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    ref = target.split(".")[0]
    return sa.ForeignKeyConstraint([column], [target], name=op.f(f"fk_{table}_{column}_{ref}"))


def upgrade() -> None:
    """Create the billing tables. Long because it is one revision's table list, frozen
    history: it is never edited once released."""
    op.create_table(
        "billing_reading",
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("read_at", TS, nullable=False),
        sa.Column("energy", sa.BigInteger(), nullable=False),
        sa.Column("registers", sa.JSON(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("recorded_by", sa.String(length=100), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("meter_id", "at", name=op.f("pk_billing_reading")),
    )
    op.create_index("ix_billing_reading_at", "billing_reading", ["at"], unique=False)
    op.create_table(
        "billing_run",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("reason", sa.String(length=500), server_default="", nullable=False),
        sa.Column("journal_id", BIG_ID, nullable=True),
        sa.Column("reversal_journal_id", BIG_ID, nullable=True),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("approved_by", sa.String(length=100), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(
            "state IN ('POSTED', 'HELD', 'FAULT', 'NO_DATA', 'EMPTY', 'REVERSED')",
            name=op.f("ck_billing_run_state"),
        ),
        _fk("billing_run", "journal_id", "journal.id"),
        _fk("billing_run", "reversal_journal_id", "journal.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_run")),
        sa.UniqueConstraint(
            "source", "period", "revision", name=op.f("uq_billing_run_source_period_revision")
        ),
    )
    op.create_table(
        "bill",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("number", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("start_date", sa.String(length=10), nullable=False),
        sa.Column("end_date", sa.String(length=10), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("total_fen", sa.BigInteger(), nullable=False),
        sa.Column("paid_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("lines", sa.JSON(), nullable=False),
        sa.Column("problems", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(length=64), server_default="", nullable=False),
        sa.Column("journal_id", BIG_ID, nullable=True),
        sa.Column("due_date", sa.String(length=10), nullable=True),
        sa.Column("confirmed_by", sa.String(length=100), nullable=True),
        sa.Column("issued_by", sa.String(length=100), nullable=True),
        sa.Column("issued_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(
            "state IN ('DRAFT', 'CONFIRMED', 'ISSUED', 'PAID')",
            name=op.f("ck_bill_state"),
        ),
        _fk("bill", "account_id", "account.id"),
        _fk("bill", "journal_id", "journal.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bill")),
        sa.UniqueConstraint("number", name=op.f("uq_bill_number")),
        sa.UniqueConstraint("account_id", "period", name=op.f("uq_bill_account_id_period")),
    )
    op.create_index("ix_bill_period_state", "bill", ["period", "state"], unique=False)
    op.create_table(
        "billing_item",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("description", sa.String(length=300), nullable=False),
        sa.Column("quantity", sa.String(length=60), server_default="", nullable=False),
        sa.Column("unit_price", sa.String(length=40), server_default="", nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("run_id", BIG_ID, nullable=True),
        sa.Column("journal_id", BIG_ID, nullable=True),
        sa.Column("bill_id", BIG_ID, nullable=True),
        sa.Column("void", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint("mode IN ('wallet', 'bill')", name=op.f("ck_billing_item_mode")),
        _fk("billing_item", "account_id", "account.id"),
        _fk("billing_item", "run_id", "billing_run.id"),
        _fk("billing_item", "journal_id", "journal.id"),
        _fk("billing_item", "bill_id", "bill.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_item")),
    )
    op.create_index(
        "ix_billing_item_account_id_period", "billing_item", ["account_id", "period"], unique=False
    )
    op.create_index("ix_billing_item_run_id", "billing_item", ["run_id"], unique=False)
    op.create_index("ix_billing_item_bill_id", "billing_item", ["bill_id"], unique=False)
    op.create_table(
        "bill_payment",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("reference", sa.String(length=160), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("journal_id", BIG_ID, nullable=False),
        sa.Column("allocations", sa.JSON(), nullable=False),
        sa.Column("to_wallet_fen", sa.BigInteger(), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_bill_payment_positive")),
        _fk("bill_payment", "account_id", "account.id"),
        _fk("bill_payment", "journal_id", "journal.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bill_payment")),
        sa.UniqueConstraint("reference", name=op.f("uq_bill_payment_reference")),
    )
    op.create_index("ix_bill_payment_account_id", "bill_payment", ["account_id"], unique=False)
    op.create_table(
        "batch_job",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("selection", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("every", sa.String(length=16), nullable=True),
        sa.Column("first_run_at", TS, nullable=False),
        sa.Column("next_run_at", TS, nullable=True),
        sa.Column("run_no", sa.Integer(), server_default="0", nullable=False),
        sa.Column("total", sa.Integer(), server_default="0", nullable=False),
        sa.Column("done", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("claimed_by", sa.String(length=100), nullable=True),
        sa.Column("lease_until", TS, nullable=True),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.CheckConstraint(
            "state IN ('SCHEDULED', 'RUNNING', 'DONE', 'CANCELLED')",
            name=op.f("ck_batch_job_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_job")),
    )
    op.create_index(
        "ix_batch_job_state_next_run_at", "batch_job", ["state", "next_run_at"], unique=False
    )
    op.create_table(
        "batch_item",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("job_id", BIG_ID, nullable=False),
        sa.Column("run_no", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("result", sa.String(length=1000), server_default="", nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.CheckConstraint(
            "state IN ('PENDING', 'RUNNING', 'DONE', 'FAILED')", name=op.f("ck_batch_item_state")
        ),
        _fk("batch_item", "job_id", "batch_job.id"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_item")),
        sa.UniqueConstraint(
            "job_id", "run_no", "seq", name=op.f("uq_batch_item_job_id_run_no_seq")
        ),
    )
    op.create_table(
        "billing_cycle",
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("claimed_by", sa.String(length=100), nullable=True),
        sa.Column("lease_until", TS, nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("period", name=op.f("pk_billing_cycle")),
    )


def downgrade() -> None:
    op.drop_table("billing_cycle")
    op.drop_table("batch_item")
    op.drop_index("ix_batch_job_state_next_run_at", table_name="batch_job")
    op.drop_table("batch_job")
    op.drop_index("ix_bill_payment_account_id", table_name="bill_payment")
    op.drop_table("bill_payment")
    op.drop_index("ix_billing_item_bill_id", table_name="billing_item")
    op.drop_index("ix_billing_item_run_id", table_name="billing_item")
    op.drop_index("ix_billing_item_account_id_period", table_name="billing_item")
    op.drop_table("billing_item")
    op.drop_index("ix_bill_period_state", table_name="bill")
    op.drop_table("bill")
    op.drop_table("billing_run")
    op.drop_index("ix_billing_reading_at", table_name="billing_reading")
    op.drop_table("billing_reading")
