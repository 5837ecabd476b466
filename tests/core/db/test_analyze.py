"""After a bulk change the planner's statistics are refreshed (`Database.analyze`): on
PostgreSQL the table's row estimate, on SQLite sqlite_stat1. Without them PostgreSQL
planned the account view's cost-of-today query for empty tables (a nested loop over every
posting × every journal: 12.7 s at 10,000 accounts where autovacuum had not yet come by)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from openprepay.core.db import Database
from openprepay.core.db import schema as t


def _accounts(n: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"A-{i:05d}",
            "name": f"Tenant {i}",
            "state": "OPEN",
            "alarm1_fen": 2000,
            "alarm2_fen": 1000,
            "overdraft_limit_fen": 0,
            "close_limit_fen": 0,
            "hoard_limit_fen": 10**9,
            "notify": [],
            "created_at": datetime(2026, 12, 1, tzinfo=UTC),
            "updated_at": datetime(2026, 12, 1, tzinfo=UTC),
        }
        for i in range(n)
    ]


def _estimate(db: Database) -> float:
    with db.read() as conn:
        if db.dialect == "postgresql":
            return float(
                conn.execute(
                    sa.text("SELECT reltuples FROM pg_class WHERE relname = 'account'")
                ).scalar_one()
            )
        try:
            stat = conn.execute(
                sa.text("SELECT stat FROM sqlite_stat1 WHERE tbl = 'account'")
            ).scalar()
        except sa.exc.OperationalError:  # no sqlite_stat1 before the first ANALYZE
            return -1.0
        return float(str(stat).split()[0]) if stat else -1.0


def test_analyze_gives_the_planner_the_rows_just_written(db: Database) -> None:
    with db.begin() as conn:
        conn.execute(sa.insert(t.account), _accounts(1200))
    assert _estimate(db) < 1200  # never analyzed: the planner does not know
    db.analyze()
    assert _estimate(db) == 1200
