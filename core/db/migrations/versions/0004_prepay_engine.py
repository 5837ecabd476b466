"""The prepayment engine's state: per-meter rating baseline, supply state and deferred
trips, per-account disconnection notice and manual hold, daily consumption, the audit log
and the notification outbox.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

#: SQLite only autoincrements INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "prepay_meter",
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("rating_state", sa.JSON(), nullable=True),
        sa.Column("supply_on", sa.Boolean(), nullable=True),
        sa.Column("supply_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trip_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("gate_reason", sa.String(length=500), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("meter_id", name=op.f("pk_prepay_meter")),
    )
    op.create_index("ix_prepay_meter_trip_due_at", "prepay_meter", ["trip_due_at"], unique=False)
    op.create_table(
        "prepay_account",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("notice_served_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hold_by", sa.String(length=100), nullable=True),
        sa.Column("hold_reason", sa.String(length=500), nullable=True),
        sa.Column("exempt_reason", sa.String(length=500), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["account.id"], name=op.f("fk_prepay_account_account_id_account")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_prepay_account")),
    )
    op.create_table(
        "meter_usage_day",
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("energy", sa.BigInteger(), nullable=False),
        sa.Column("by_rate", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("meter_id", "day", name=op.f("pk_meter_usage_day")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=100), nullable=False),
        sa.Column("detail", sa.String(length=1000), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_target", "audit_log", ["target"], unique=False)
    op.create_table(
        "notification",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("recipient", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("body", sa.String(length=4000), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('PENDING', 'SENT', 'FAILED')", name=op.f("ck_notification_state")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_notification_idempotency_key")),
    )
    op.create_index(
        "ix_notification_state_next_attempt_at",
        "notification",
        ["state", "next_attempt_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_notification_state_next_attempt_at", table_name="notification")
    op.drop_table("notification")
    op.drop_index("ix_audit_log_target", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("meter_usage_day")
    op.drop_table("prepay_account")
    op.drop_index("ix_prepay_meter_trip_due_at", table_name="prepay_meter")
    op.drop_table("prepay_meter")
