"""`upsert_states`: many engine state rows in one statement, on both databases — new rows
are inserted, existing ones updated in the named columns only, others left as they were."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.prepay.supply_state import upsert_state, upsert_states


def test_upsert_states_inserts_new_rows_and_updates_only_the_named_columns(db: Database) -> None:
    before = datetime(2026, 12, 1, tzinfo=UTC)
    now = datetime(2026, 12, 3, 8, tzinfo=UTC)
    pm = t.prepay_meter
    with db.begin() as conn:
        upsert_state(conn, pm, "meter_id", "E-1", before, {"desired_on": False})
        upsert_states(conn, pm, "meter_id", [], now)  # nothing: no statement
        upsert_states(
            conn,
            pm,
            "meter_id",
            [
                {"meter_id": "E-1", "supply_on": True, "supply_at": now},
                {"meter_id": "E-2", "supply_on": False, "supply_at": now},
            ],
            now,
        )
    with db.read() as conn:
        rows = {
            r.meter_id: r
            for r in conn.execute(
                sa.select(pm.c.meter_id, pm.c.supply_on, pm.c.desired_on, pm.c.updated_at)
            )
        }
    assert set(rows) == {"E-1", "E-2"}
    assert rows["E-1"].supply_on is True and rows["E-1"].desired_on is False  # kept
    assert rows["E-2"].supply_on is False and rows["E-2"].desired_on is None
    assert rows["E-1"].updated_at == rows["E-2"].updated_at == now
