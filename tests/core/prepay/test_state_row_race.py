"""Two writers inserting an account's or meter's first engine state row at once
(PostgreSQL, real concurrent transactions): the loser updates the winner's row instead of
failing the whole transaction (a refund's trip racing the running engine did)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.prepay.supply_state import upsert_state


def test_the_loser_of_a_first_insert_updates_instead(db: Database) -> None:
    if db.dialect != "postgresql":
        pytest.skip("SQLite serialises writers: no two first inserts can race")
    now = datetime.now(UTC)
    table = t.prepay_meter
    with db.engine.connect() as a:
        a.begin()
        winner_done = False

        @sa.event.listens_for(a, "before_cursor_execute")
        def winner_first(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
            nonlocal winner_done
            if statement.lstrip().upper().startswith("INSERT") and not winner_done:
                winner_done = True
                with db.engine.begin() as b:  # another writer commits the first row
                    b.execute(table.insert(), {"meter_id": "M-RACE", "updated_at": now})

        upsert_state(a, table, "meter_id", "M-RACE", now, {"gate_reason": "the loser's word"})
        a.commit()
    assert winner_done
    with db.read() as conn:
        row = conn.execute(sa.select(table).where(table.c.meter_id == "M-RACE")).one()
    assert row.gate_reason == "the loser's word"
