"""Supply re-assertion, billing alarms, LOCAL purchase-count alignment, command retries and
meter replacement.

- `prepay_meter`: the desired supply state and the command that decided it, the meter's
  re-assertion counters and back-off, and why the meter is not billed (if it is not);
- `meter`: a pending purchase-count alignment, the offset between the platform's and the
  meter's purchase numbering, and the installed device's serial number;
- `meter_command`: the FAILED command a retry repeats, and how an operator resolved it;
- `meter_replacement`: the recorded swaps.

The desired state of meters that already have supply commands is taken from their latest
command that was not superseded, so a database upgraded under cut rooms keeps them cut.

Revision ID: 0007
Revises: 0006
Create Date: 2025-01-07
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: SQLite only autoincrements INTEGER PRIMARY KEY.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)
#: Supply command kinds and the supply state each asks for (RELEASE decides nothing).
DESIRED = {
    "TRIP": False,
    "VALVE_CLOSE": False,
    "CLOSE": True,
    "ALLOW_CLOSE": True,
    "VALVE_OPEN": True,
}


def upgrade() -> None:
    with op.batch_alter_table("prepay_meter") as batch:
        batch.add_column(sa.Column("desired_on", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("desired_command_id", BIG_ID, nullable=True))
        batch.add_column(
            sa.Column("mismatch_count", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("reasserts", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("mismatch_since", TS, nullable=True))
        batch.add_column(sa.Column("reassert_due_at", TS, nullable=True))
        batch.add_column(sa.Column("billing_problem", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("billing_problem_at", TS, nullable=True))
    with op.batch_alter_table("meter") as batch:
        batch.add_column(sa.Column("align_requested_at", TS, nullable=True))
        batch.add_column(sa.Column("aligned_at", TS, nullable=True))
        batch.add_column(
            sa.Column("count_offset", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("serial", sa.String(length=64), nullable=True))
    with op.batch_alter_table("meter_command") as batch:
        batch.add_column(sa.Column("retry_of", BIG_ID, nullable=True))
        batch.add_column(sa.Column("resolution", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("resolved_by", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("resolved_at", TS, nullable=True))
    op.create_index("uq_meter_command_retry_of", "meter_command", ["retry_of"], unique=True)
    op.create_table(
        "meter_replacement",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("old_serial", sa.String(length=64), nullable=True),
        sa.Column("new_serial", sa.String(length=64), nullable=False),
        sa.Column("final_reading", sa.JSON(), nullable=False),
        sa.Column("initial_reading", sa.JSON(), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("recorded_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("applied_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_meter_replacement")),
    )
    op.create_index(
        "ix_meter_replacement_meter_id", "meter_replacement", ["meter_id"], unique=False
    )
    _desired_from_commands()


def _desired_from_commands() -> None:
    """Each meter's desired supply state from its latest supply command (not superseded)."""
    conn = op.get_bind()
    latest: dict[str, tuple[int, str]] = {}
    rows = conn.execute(
        sa.text(
            "SELECT meter_id, id, kind FROM meter_command "
            "WHERE state <> 'SUPERSEDED' AND kind IN ('TRIP', 'VALVE_CLOSE', 'CLOSE', "
            "'ALLOW_CLOSE', 'VALVE_OPEN', 'RELEASE') ORDER BY id"
        )
    ).all()
    for meter_id, command_id, kind in rows:
        latest[meter_id] = (int(command_id), kind)
    now = dt.datetime.now(dt.UTC)
    if conn.dialect.name == "sqlite":
        now = now.replace(tzinfo=None)
    for meter_id, (command_id, kind) in latest.items():
        values = {"m": meter_id, "on": DESIRED.get(kind), "c": command_id, "now": now}
        done = conn.execute(
            sa.text(
                "UPDATE prepay_meter SET desired_on = :on, desired_command_id = :c "
                "WHERE meter_id = :m"
            ),
            values,
        ).rowcount
        if not done:
            conn.execute(
                sa.text(
                    "INSERT INTO prepay_meter (meter_id, desired_on, desired_command_id, "
                    "updated_at) VALUES (:m, :on, :c, :now)"
                ),
                values,
            )


def downgrade() -> None:
    op.drop_index("ix_meter_replacement_meter_id", table_name="meter_replacement")
    op.drop_table("meter_replacement")
    op.drop_index("uq_meter_command_retry_of", table_name="meter_command")
    with op.batch_alter_table("meter_command") as batch:
        batch.drop_column("resolved_at")
        batch.drop_column("resolved_by")
        batch.drop_column("resolution")
        batch.drop_column("retry_of")
    with op.batch_alter_table("meter") as batch:
        batch.drop_column("serial")
        batch.drop_column("count_offset")
        batch.drop_column("aligned_at")
        batch.drop_column("align_requested_at")
    with op.batch_alter_table("prepay_meter") as batch:
        for column in (
            "billing_problem_at",
            "billing_problem",
            "reassert_due_at",
            "mismatch_since",
            "reasserts",
            "mismatch_count",
            "desired_command_id",
            "desired_on",
        ):
            batch.drop_column(column)
