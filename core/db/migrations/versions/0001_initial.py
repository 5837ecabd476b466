"""Initial schema: accounts, meters, ledger (journal, postings, wallets), top-ups,
refunds and durable meter commands.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

#: SQLite only autoincrements INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create the initial schema. Long because it is one revision's table list, frozen
    history: it is never edited once released."""
    op.create_table(
        "account",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("room", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("tariff_id", sa.String(length=64), nullable=True),
        sa.Column("protected", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("alarm1_fen", sa.BigInteger(), nullable=False),
        sa.Column("alarm2_fen", sa.BigInteger(), nullable=False),
        sa.Column("overdraft_limit_fen", sa.BigInteger(), nullable=False),
        sa.Column("close_limit_fen", sa.BigInteger(), nullable=False),
        sa.Column("hoard_limit_fen", sa.BigInteger(), nullable=False),
        sa.Column("notify", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('PREREGISTERED', 'OPEN', 'CLOSED')", name=op.f("ck_account_state")
        ),
        sa.CheckConstraint(
            "alarm1_fen >= alarm2_fen AND alarm2_fen >= 0", name=op.f("ck_account_alarms")
        ),
        sa.CheckConstraint(
            "overdraft_limit_fen >= 0 AND close_limit_fen >= 0 AND hoard_limit_fen >= 0",
            name=op.f("ck_account_limits"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account")),
    )
    op.create_index("ix_account_room", "account", ["room"], unique=False)
    op.create_table(
        "ledger_account",
        sa.Column("code", sa.String(length=160), nullable=False),
        sa.Column("type", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_ledger_account")),
    )
    op.create_table(
        "meter",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("buy_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("confirmed_buy_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_meter")),
    )
    op.create_table(
        "account_meter",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("control_mode", sa.String(length=16), nullable=False),
        sa.Column("attached_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detached_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "control_mode IN ('REMOTE', 'LOCAL', 'POSTPAID')",
            name=op.f("ck_account_meter_control_mode"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_account_meter_account_id_account")
        ),
        sa.ForeignKeyConstraint(
            ["meter_id"], ["meter.id"], name=op.f("fk_account_meter_meter_id_meter")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_meter")),
    )
    op.create_index("ix_account_meter_account_id", "account_meter", ["account_id"], unique=False)
    op.create_index(
        "uq_account_meter_active",
        "account_meter",
        ["meter_id"],
        unique=True,
        sqlite_where=sa.text("detached_at IS NULL"),
        postgresql_where=sa.text("detached_at IS NULL"),
    )
    op.create_table(
        "journal",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("meter_id", sa.String(length=64), nullable=True),
        sa.Column("reverses_id", BIG_ID, nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("memo", sa.String(length=500), server_default="", nullable=False),
        sa.Column("requested_by", sa.String(length=100), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_journal_account_id_account")
        ),
        sa.ForeignKeyConstraint(
            ["reverses_id"], ["journal.id"], name=op.f("fk_journal_reverses_id_journal")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_journal")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_journal_idempotency_key")),
        sa.UniqueConstraint("reverses_id", name=op.f("uq_journal_reverses_id")),
    )
    op.create_table(
        "wallet",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("ledger_account", sa.String(length=160), nullable=False),
        sa.Column("balance_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("version", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint("kind IN ('energy', 'general')", name=op.f("ck_wallet_kind")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_wallet_account_id_account")
        ),
        sa.ForeignKeyConstraint(
            ["ledger_account"],
            ["ledger_account.code"],
            name=op.f("fk_wallet_ledger_account_ledger_account"),
        ),
        sa.PrimaryKeyConstraint("account_id", "kind", name=op.f("pk_wallet")),
        sa.UniqueConstraint("ledger_account", name=op.f("uq_wallet_ledger_account")),
    )
    op.create_table(
        "meter_command",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=100), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.Column("readback", sa.JSON(), nullable=True),
        sa.Column("superseded_by", BIG_ID, nullable=True),
        sa.Column("journal_id", BIG_ID, nullable=True),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('PENDING', 'CLAIMED', 'SENT', 'CONFIRMED', 'FAILED', 'SUPERSEDED')",
            name=op.f("ck_meter_command_state"),
        ),
        sa.ForeignKeyConstraint(
            ["journal_id"], ["journal.id"], name=op.f("fk_meter_command_journal_id_journal")
        ),
        sa.ForeignKeyConstraint(
            ["superseded_by"],
            ["meter_command.id"],
            name=op.f("fk_meter_command_superseded_by_meter_command"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_meter_command")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_meter_command_idempotency_key")),
    )
    op.create_index(
        "ix_meter_command_meter_id_state", "meter_command", ["meter_id", "state"], unique=False
    )
    op.create_index(
        "ix_meter_command_state_next_attempt_at",
        "meter_command",
        ["state", "next_attempt_at"],
        unique=False,
    )
    op.create_table(
        "posting",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("journal_id", BIG_ID, nullable=False),
        sa.Column("ledger_account", sa.String(length=160), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount_fen <> 0", name=op.f("ck_posting_nonzero")),
        sa.ForeignKeyConstraint(
            ["journal_id"], ["journal.id"], name=op.f("fk_posting_journal_id_journal")
        ),
        sa.ForeignKeyConstraint(
            ["ledger_account"],
            ["ledger_account.code"],
            name=op.f("fk_posting_ledger_account_ledger_account"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_posting")),
    )
    op.create_index("ix_posting_journal_id", "posting", ["journal_id"], unique=False)
    op.create_index("ix_posting_ledger_account", "posting", ["ledger_account"], unique=False)
    op.create_table(
        "refund",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("reference", sa.String(length=160), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("request_journal_id", BIG_ID, nullable=False),
        sa.Column("settle_journal_id", BIG_ID, nullable=True),
        sa.Column("reversal_journal_id", BIG_ID, nullable=True),
        sa.Column("reason", sa.String(length=500), server_default="", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('REQUESTED', 'SETTLED', 'FAILED')", name=op.f("ck_refund_state")
        ),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_refund_positive")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_refund_account_id_account")
        ),
        sa.ForeignKeyConstraint(
            ["request_journal_id"],
            ["journal.id"],
            name=op.f("fk_refund_request_journal_id_journal"),
        ),
        sa.ForeignKeyConstraint(
            ["reversal_journal_id"],
            ["journal.id"],
            name=op.f("fk_refund_reversal_journal_id_journal"),
        ),
        sa.ForeignKeyConstraint(
            ["settle_journal_id"], ["journal.id"], name=op.f("fk_refund_settle_journal_id_journal")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refund")),
        sa.UniqueConstraint("reference", name=op.f("uq_refund_reference")),
    )
    op.create_index("ix_refund_account_id", "refund", ["account_id"], unique=False)
    op.create_table(
        "topup",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("reference", sa.String(length=160), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.Column("refunded_fen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("journal_id", BIG_ID, nullable=False),
        sa.Column("meter_id", sa.String(length=64), nullable=True),
        sa.Column("buy_count", sa.Integer(), nullable=True),
        sa.Column("command_id", BIG_ID, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_topup_positive")),
        sa.CheckConstraint(
            "refunded_fen >= 0 AND refunded_fen <= amount_fen", name=op.f("ck_topup_refunded")
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_topup_account_id_account")
        ),
        sa.ForeignKeyConstraint(
            ["journal_id"], ["journal.id"], name=op.f("fk_topup_journal_id_journal")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_topup")),
        sa.UniqueConstraint("reference", name=op.f("uq_topup_reference")),
    )
    op.create_index("ix_topup_account_id", "topup", ["account_id"], unique=False)
    op.create_index(
        "uq_topup_meter_buy_count",
        "topup",
        ["meter_id", "buy_count"],
        unique=True,
        sqlite_where=sa.text("buy_count IS NOT NULL"),
        postgresql_where=sa.text("buy_count IS NOT NULL"),
    )
    op.create_table(
        "refund_allocation",
        sa.Column("refund_id", BIG_ID, nullable=False),
        sa.Column("topup_id", BIG_ID, nullable=False),
        sa.Column("amount_fen", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount_fen > 0", name=op.f("ck_refund_allocation_positive")),
        sa.ForeignKeyConstraint(
            ["refund_id"], ["refund.id"], name=op.f("fk_refund_allocation_refund_id_refund")
        ),
        sa.ForeignKeyConstraint(
            ["topup_id"], ["topup.id"], name=op.f("fk_refund_allocation_topup_id_topup")
        ),
        sa.PrimaryKeyConstraint("refund_id", "topup_id", name=op.f("pk_refund_allocation")),
    )


def downgrade() -> None:
    op.drop_table("meter_command")
    op.drop_table("refund_allocation")
    op.drop_table("refund")
    op.drop_table("topup")
    op.drop_table("posting")
    op.drop_table("journal")
    op.drop_table("wallet")
    op.drop_table("account_meter")
    op.drop_table("meter")
    op.drop_table("ledger_account")
    op.drop_table("account")
