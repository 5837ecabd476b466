"""`among(conn, column, values)`: `column IN values` with the list bound once, on both
databases — the same rows as `in_`, for an empty list, for strings and integers, and for
more values than SQLite accepts placeholders (32,766), in one statement of constant size."""

from __future__ import annotations

import sqlalchemy as sa

from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.db.among import among

from .test_analyze import _accounts


def test_among_selects_what_in_selects_with_one_parameter(db: Database) -> None:
    with db.begin() as conn:
        conn.execute(sa.insert(t.account), _accounts(50))
    wanted = [f"A-{i:05d}" for i in (3, 7, 7, 49)] + ["no-such-account"]
    with db.read() as conn:
        q = sa.select(t.account.c.id).order_by(t.account.c.id)
        got = conn.execute(q.where(among(conn, t.account.c.id, wanted))).scalars().all()
        expected = conn.execute(q.where(t.account.c.id.in_(wanted))).scalars().all()
        assert got == expected == ["A-00003", "A-00007", "A-00049"]
        assert conn.execute(q.where(among(conn, t.account.c.id, []))).scalars().all() == []
        # More values than SQLite's placeholder limit, and the statement stays small.
        many = [f"A-{i:05d}" for i in range(40_000)]
        stmt = q.where(among(conn, t.account.c.id, iter(many)))
        assert len(conn.execute(stmt).scalars().all()) == 50
        assert len(str(stmt.compile(conn))) < 300
        # Integers too (json_each gives SQLite integers back as integers).
        hits = conn.execute(
            sa.select(sa.func.count()).where(among(conn, t.journal.c.id, [1, 2, 3]))
        ).scalar_one()
        assert hits == 0


def test_site_wide_lookups_take_more_meters_than_sqlite_has_placeholders(db: Database) -> None:
    """Reports, bills and closings ask about every meter or account of a site at once: at
    70,000 they still answer. With `in_` PostgreSQL refused more than 65,535 parameters, and
    SQLite more than 32,766 where it is built with its default limit (Debian raises it, so
    the connection is given the default here)."""
    import datetime as dt
    import sqlite3

    from openprepay.core.billing.bills.store import draft_ids
    from openprepay.core.billing.closing import postpaid_meters
    from openprepay.core.billing.readings import readings_between
    from openprepay.core.billing.reports.common import unbilled_notes, usage_days

    at = dt.datetime(2026, 11, 30, 16, tzinfo=dt.UTC)
    with db.begin() as conn:
        conn.execute(
            sa.insert(t.billing_reading),
            [dict(meter_id="M-00007", at=at, read_at=at, energy=1234, registers={},
                  source="meter", recorded_by="test", updated_at=at)],
        )  # fmt: skip
        conn.execute(
            sa.insert(t.meter_usage_day),
            [dict(meter_id="M-00009", day="2026-11-30", account_id=None, energy=5,
                  by_rate={}, updated_at=at)],
        )  # fmt: skip
    meters = [f"M-{i:05d}" for i in range(70_000)]
    with db.read() as conn:
        if conn.dialect.name == "sqlite":
            raw = conn.connection.driver_connection
            raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)
        found = readings_between(conn, meters, at - dt.timedelta(days=1), at)
        assert [(m, [r.energy for r in rs]) for m, rs in found.items()] == [("M-00007", [1234])]
        days = usage_days(conn, meters, dt.date(2026, 11, 1), dt.date(2026, 12, 1))
        assert [(d.meter_id, d.energy) for d in days] == [("M-00009", 5)]
        assert unbilled_notes(conn, meters) == []
        assert postpaid_meters(conn, meters) == []
        assert draft_ids(conn, "2026-11", meters) == []
