"""Revision 0007 on SQLite and PostgreSQL: a database upgraded under cut rooms keeps them
cut — each meter's decided supply state comes from its latest supply command that was not
superseded — and the new columns start empty."""

from __future__ import annotations

import sqlalchemy as sa

from openprepay.core.db import Database

NOW = "2025-01-01 00:00:00.000000"


def command(conn: sa.Connection, id_: int, meter: str, kind: str, state: str) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO meter_command (id, meter_id, kind, params, reason, requested_by, state, "
            "attempts, next_attempt_at, created_at, updated_at) VALUES (:id, :m, :k, '{}', 'r', "
            f"'fee-control', :s, 1, '{NOW}', '{NOW}', '{NOW}')"
        ),
        {"id": id_, "m": meter, "k": kind, "s": state},
    )


def test_upgrade_takes_the_decided_supply_from_the_latest_command(db_url):
    db = Database(db_url)
    try:
        db.upgrade("0006")
        with db.begin() as conn:
            command(conn, 1, "E-1", "CLOSE", "CONFIRMED")
            command(conn, 2, "E-1", "TRIP", "CONFIRMED")  # cut: stays cut
            command(conn, 3, "W-1", "VALVE_CLOSE", "CONFIRMED")
            command(conn, 4, "W-1", "VALVE_OPEN", "FAILED")  # a standing restore
            command(conn, 5, "E-2", "TRIP", "SUPERSEDED")
            command(conn, 6, "E-3", "RECHARGE", "CONFIRMED")
            conn.execute(
                sa.text(
                    "INSERT INTO prepay_meter (meter_id, supply_on, updated_at) "
                    f"VALUES ('E-1', true, '{NOW}')"
                )
            )
        db.upgrade()
        with db.read() as conn:
            rows = {
                r.meter_id: (r.desired_on, r.desired_command_id, r.mismatch_count)
                for r in conn.execute(
                    sa.text(
                        "SELECT meter_id, desired_on, desired_command_id, mismatch_count "
                        "FROM prepay_meter"
                    )
                )
            }
        assert rows == {"E-1": (False, 2, 0), "W-1": (True, 4, 0)}
    finally:
        db.dispose()
