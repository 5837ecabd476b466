"""Void post-paid bills: state VOID with its reason, who, when and the reversing journal;
one live (not void) bill per account and period instead of one bill, so the account can be
billed again for the period.

Revision ID: 0006
Revises: 0005
Create Date: 2025-01-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: SQLite only autoincrements INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)
STATES_BEFORE = "state IN ('DRAFT', 'CONFIRMED', 'ISSUED', 'PAID')"
STATES_AFTER = "state IN ('DRAFT', 'CONFIRMED', 'ISSUED', 'PAID', 'VOID')"
LIVE = sa.text("state != 'VOID'")


def _unlink_items() -> None:
    """SQLite rebuilds the bill table (drop and rename), and with foreign keys on the drop
    fails while billing items point at a bill: keep the links aside until it is back."""
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(
        "CREATE TEMP TABLE _bill_links AS "
        "SELECT id, bill_id FROM billing_item WHERE bill_id IS NOT NULL"
    )
    op.execute("UPDATE billing_item SET bill_id = NULL WHERE bill_id IS NOT NULL")


def _relink_items() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(
        "UPDATE billing_item SET bill_id = "
        "(SELECT l.bill_id FROM _bill_links l WHERE l.id = billing_item.id) "
        "WHERE id IN (SELECT id FROM _bill_links)"
    )
    op.execute("DROP TABLE _bill_links")


def upgrade() -> None:
    _unlink_items()
    with op.batch_alter_table("bill", recreate="auto") as batch:
        batch.add_column(sa.Column("void_reason", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("voided_by", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("voided_at", TS, nullable=True))
        batch.add_column(sa.Column("void_journal_id", BIG_ID, nullable=True))
        batch.create_foreign_key(
            op.f("fk_bill_void_journal_id_journal"), "journal", ["void_journal_id"], ["id"]
        )
        batch.drop_constraint(op.f("uq_bill_account_id_period"), type_="unique")
        batch.drop_constraint(op.f("ck_bill_state"), type_="check")
        batch.create_check_constraint(op.f("ck_bill_state"), sa.text(STATES_AFTER))
    _relink_items()
    op.create_index(
        "uq_bill_live_account_period",
        "bill",
        ["account_id", "period"],
        unique=True,
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )


def downgrade() -> None:
    op.drop_index("uq_bill_live_account_period", table_name="bill")
    _unlink_items()
    with op.batch_alter_table("bill", recreate="auto") as batch:
        batch.drop_constraint(op.f("ck_bill_state"), type_="check")
        batch.create_check_constraint(op.f("ck_bill_state"), sa.text(STATES_BEFORE))
        batch.create_unique_constraint(op.f("uq_bill_account_id_period"), ["account_id", "period"])
        batch.drop_constraint(op.f("fk_bill_void_journal_id_journal"), type_="foreignkey")
        batch.drop_column("void_journal_id")
        batch.drop_column("voided_at")
        batch.drop_column("voided_by")
        batch.drop_column("void_reason")
    _relink_items()
