"""Payer bindings (issue 11 item 4): which payer at a provider (WeChat's openid from OAuth
snsapi_base) the tenant page has bound to which room, so that a tenant who opened the room's
signed QR link once inside WeChat is recognised again; revoked by an operator
(`openprepay payer revoke`).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

#: SQLite only autoincrements INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "payer_binding",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("payer_id", sa.String(length=128), nullable=False),
        sa.Column("room", sa.String(length=64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("last_seen_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("revoked_by", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payer_binding")),
        sa.UniqueConstraint(
            "channel", "payer_id", "room", name=op.f("uq_payer_binding_channel_payer_id_room")
        ),
    )
    op.create_index("ix_payer_binding_room", "payer_binding", ["room"])


def downgrade() -> None:
    op.drop_index("ix_payer_binding_room", table_name="payer_binding")
    op.drop_table("payer_binding")
