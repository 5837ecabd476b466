"""Several instances on one PostgreSQL (issue 13): a lease row per link (and per leader
job) with owner, epoch and expiry from the database clock; the instances that heartbeat;
a per-meter command sequence; and the link and epoch a command was claimed under, so a
stale owner's claim or completion is refused (fencing).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
# 0011 (payment_refund) once the refunds branch is merged; 0010 is the newest here.
down_revision = "0011"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "link_lease",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("acquired_at", TS, nullable=True),
        sa.Column("renewed_at", TS, nullable=True),
        sa.Column("progress", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_link_lease")),
    )
    op.create_table(
        "cluster_instance",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("host", sa.String(length=200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("links", sa.JSON(), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cluster_instance")),
    )
    op.create_table(
        "meter_command_seq",
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("meter_id", name=op.f("pk_meter_command_seq")),
    )
    with op.batch_alter_table("meter_command") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("claimed_link", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("claimed_epoch", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("meter_command") as batch:
        batch.drop_column("claimed_epoch")
        batch.drop_column("claimed_link")
        batch.drop_column("seq")
    op.drop_table("meter_command_seq")
    op.drop_table("cluster_instance")
    op.drop_table("link_lease")
