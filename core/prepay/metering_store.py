"""Metering's database side: what a flush reads about its meters, and the few statements
that save a batch's baselines and daily consumption."""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t
from ..db.among import among
from ..db.dialect_insert import dialect_insert


@dataclass(slots=True)
class MeterInfo:
    """What a flush needs to know about a meter of an account. `opened_at`, `state_account`
    and `rating_state` are read only for meters whose baseline is not in memory."""

    meter_id: str
    account_id: str
    control_mode: str
    state: str
    tariff_id: str | None
    billing_problem: str | None
    opened_at: datetime | None = None
    state_account: str | None = None
    rating_state: Any = None


def meter_info(
    conn: Connection, meters: list[str], held: Callable[[str, str], bool]
) -> dict[str, MeterInfo]:
    """Per meter of an account: its account, control mode, tariff, account state and
    billing problem; and, where `held(meter, account)` says metering does not hold the
    meter's baseline for that account in memory, the saved baseline and the account's
    opening (a second query, usually for no meter: a flush runs every second)."""
    am, a, pm = t.account_meter, t.account, t.prepay_meter
    rows = conn.execute(
        sa.select(
            am.c.meter_id,
            am.c.account_id,
            am.c.control_mode,
            a.c.state,
            a.c.tariff_id,
            pm.c.billing_problem,
        )
        .join(a, a.c.id == am.c.account_id)
        .outerjoin(pm, pm.c.meter_id == am.c.meter_id)
        .where(among(conn, am.c.meter_id, meters), am.c.detached_at.is_(None))
    ).all()
    info = {r.meter_id: MeterInfo(*r) for r in rows}
    unheld = [m for m, i in info.items() if not held(m, i.account_id)]
    if unheld:
        for r in conn.execute(
            sa.select(am.c.meter_id, a.c.opened_at, pm.c.account_id, pm.c.rating_state)
            .join(a, a.c.id == am.c.account_id)
            .outerjoin(pm, pm.c.meter_id == am.c.meter_id)
            .where(among(conn, am.c.meter_id, unheld), am.c.detached_at.is_(None))
        ):
            row = info[r[0]]
            row.opened_at, row.state_account, row.rating_state = r[1], r[2], r[3]
    return info


def pending_replacements(conn: Connection, meters: Container[str]) -> dict[str, list[Any]]:
    """Recorded replacements not applied yet, per meter of `meters`, oldest first."""
    r = t.meter_replacement
    out: dict[str, list[Any]] = {}
    for row in conn.execute(
        sa.select(r.c.id, r.c.meter_id, r.c.at, r.c.final_reading, r.c.initial_reading)
        .where(r.c.applied_at.is_(None))
        .order_by(r.c.at, r.c.id)
    ):
        if row.meter_id in meters:
            out.setdefault(row.meter_id, []).append(row)
    return out


def save_states(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """The meters' baselines, one statement for the batch."""
    if not rows:
        return
    stmt = dialect_insert(conn, t.prepay_meter)
    stmt = stmt.on_conflict_do_update(
        index_elements=["meter_id"],
        set_={
            "account_id": stmt.excluded.account_id,
            "rating_state": stmt.excluded.rating_state,
            "updated_at": stmt.excluded.updated_at,
        },
    )
    conn.execute(stmt, rows)


def add_days(
    conn: Connection,
    days: Mapping[tuple[str, str], tuple[str, int, dict[str, int]]],
    now: datetime,
) -> None:
    """Add consumption to `meter_usage_day` (energy and per rate), a few statements for
    the batch."""
    if not days:
        return
    u = t.meter_usage_day
    # Meters IN (...) AND days IN (...), both columns of the primary key, then the pairs in
    # Python: a (meter, day) IN list of pairs is an OR of ANDs to PostgreSQL's planner
    # (~100 ms a flush at 20,000 meters, in pg_stat_statements).
    existing = {
        (r.meter_id, r.day): r
        for r in conn.execute(
            sa.select(u.c.meter_id, u.c.day, u.c.energy, u.c.by_rate).where(
                among(conn, u.c.meter_id, {m for m, _ in days}),
                among(conn, u.c.day, {d for _, d in days}),
            )
        ).all()
        if (r.meter_id, r.day) in days
    }
    inserts, updates = [], []
    for (meter_id, day), (account_id, units, by_rate) in days.items():
        row = existing.get((meter_id, day))
        if row is None:
            inserts.append(
                {
                    "meter_id": meter_id,
                    "day": day,
                    "account_id": account_id,
                    "energy": units,
                    "by_rate": dict(by_rate),
                    "updated_at": now,
                }
            )
            continue
        merged = {k: int(v) for k, v in (row.by_rate or {}).items()}
        for k, v in by_rate.items():
            merged[k] = merged.get(k, 0) + v
        updates.append(
            {
                "m": meter_id,
                "d": day,
                "energy": int(row.energy) + units,
                "by_rate": merged,
                "updated_at": now,
            }
        )
    if inserts:
        conn.execute(u.insert(), inserts)
    if updates:
        conn.execute(
            u.update().where(u.c.meter_id == sa.bindparam("m"), u.c.day == sa.bindparam("d")),
            updates,
        )
