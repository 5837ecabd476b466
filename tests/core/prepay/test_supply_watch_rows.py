"""What the supply watch's check reads: the rows it can act on, not every seen meter's
(on SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.prepay.supply_watch import rows_to_check

NOW = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)


def test_the_check_reads_only_rows_it_can_act_on(db: Database) -> None:
    rows = {
        "on-as-decided": {"desired_on": True},
        "cut": {"desired_on": False},
        "undecided": {"desired_on": None},
        "mismatched": {"desired_on": True, "mismatch_since": NOW},
        "reasserted": {"desired_on": True, "reasserts": 2},
        "on-but-seen-off": {"desired_on": True},
    }
    with db.begin() as conn:
        conn.execute(
            t.prepay_meter.insert(),
            [
                {
                    "meter_id": m,
                    "updated_at": NOW,
                    "desired_on": None,
                    "mismatch_since": None,
                    "reasserts": 0,
                    **v,
                }
                for m, v in rows.items()
            ],
        )
    with db.read() as conn:
        found = rows_to_check(conn, ["on-but-seen-off"])
    assert set(found) == {"cut", "mismatched", "reasserted", "on-but-seen-off"}
    assert found["reasserted"].reasserts == 2 and found["cut"].desired_on is False
    with db.read() as conn:
        many = rows_to_check(conn, [f"M{i}" for i in range(1200)] + ["on-but-seen-off"])
    assert set(many) == set(found)
