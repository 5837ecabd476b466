"""What a meter is in the reports (a room's meter, a pool's main or public meter) and why it
has no figure for a span, instead of leaving it out or showing 0.

A meter has data for a span when the engine recorded consumption for it then
(`meter_usage_day`), when two fresh readings of its registers were captured then, the
later not below the earlier (`billing_reading`), or when it was on an account then and the
engine has read it since the span began (its rating state: a meter that used nothing, a
real zero). Otherwise the reason is said:
the meter was replaced, it has not been read since a time, its register went backwards (a
bad reading), it has one reading only, it is not billed (the engine's billing alarm), or
nothing metered it.

A captured reading is **fresh** when it was taken less than `MAX_AGE` before its capture
instant: a meter that went silent keeps its last reading at every later instant (its
`read_at` says how old it is), and two such copies would show a false zero.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...db import schema as t
from ...db.among import among
from ..readings import Reading, readings_between
from .common import ReportScope

MAX_AGE = dt.timedelta(days=1)


def roles(scope: ReportScope) -> dict[str, str]:
    """meter → "main meter, pool A" / "public meter, pool A" for the pools' meters."""
    out: dict[str, str] = {}
    for pool in scope.pools:
        out[pool.main] = f"main meter, pool {pool.id}"
        for m in pool.public:
            out[m] = f"public meter, pool {pool.id}"
    return out


def role_of(scope: ReportScope, meter: str, known: dict[str, str]) -> str:
    if meter in known:
        return known[meter]
    device = scope.site.devices[meter]
    return "room meter" if device.room else "building meter" if device.building else "meter"


def fresh(r: Reading) -> bool:
    return r.at - r.read_at < MAX_AGE


def register_figure(
    scope: ReportScope, a: Reading | None, b: Reading | None
) -> tuple[int | None, str]:
    """(energy between two captured readings, "") or (None, why there is none)."""
    if a is None or b is None:
        missing = "start" if a is None else "end"
        return None, f"no reading at the {missing}"
    for r in (a, b):
        if not fresh(r):
            return None, f"not read since {_local(scope, r.read_at)}"
    if b.energy < a.energy:
        return None, (
            f"register went backwards {_local(scope, a.at)} → {_local(scope, b.at)} "
            "(bad reading: record a corrected one)"
        )
    return b.energy - a.energy, ""


def has_data(
    conn: Connection, meters: Sequence[str], lo: dt.datetime, hi: dt.datetime, scope: ReportScope
) -> set[str]:
    """The meters of `meters` with data in [lo, hi) (see the module docstring)."""
    ids = sorted(set(meters))
    if not ids:
        return set()
    u = t.meter_usage_day
    first, last = _day(scope, lo), _day(scope, hi)
    out = set(
        conn.execute(
            sa.select(u.c.meter_id).where(
                among(conn, u.c.meter_id, ids), u.c.day >= first, u.c.day < last
            )
        ).scalars()
    )
    for meter, rows in readings_between(conn, ids, lo, hi).items():
        good = [x for x in rows if fresh(x)]
        if any(b.energy >= a.energy for a, b in itertools.pairwise(good)):
            out.add(meter)
    on_account = _on_account(conn, sorted(set(ids) - out), lo, hi)
    rated = _last_rated(conn, sorted(on_account))
    return out | {m for m in on_account if m in rated and rated[m] >= lo}


def _on_account(
    conn: Connection, meters: Sequence[str], lo: dt.datetime, hi: dt.datetime
) -> set[str]:
    """The meters of `meters` attached to an account at some time in [lo, hi)."""
    if not meters:
        return set()
    am = t.account_meter
    return set(
        conn.execute(
            sa.select(am.c.meter_id).where(
                among(conn, am.c.meter_id, meters),
                am.c.attached_at < hi,
                sa.or_(am.c.detached_at.is_(None), am.c.detached_at > lo),
            )
        ).scalars()
    )


def why_no_figure(
    conn: Connection, scope: ReportScope, meter: str, lo: dt.datetime, hi: dt.datetime
) -> str:
    """Why `meter` has no figure for [lo, hi)."""
    rep = conn.execute(
        sa.select(sa.func.max(t.meter_replacement.c.at)).where(
            t.meter_replacement.c.meter_id == meter,
            t.meter_replacement.c.at >= lo,
            t.meter_replacement.c.at < hi,
        )
    ).scalar()
    if rep is not None:
        return f"meter replaced {_local(scope, rep)}: no readings of the new meter on both sides"
    rows = readings_between(conn, [meter], lo, hi).get(meter, [])
    if rows:
        return _why_readings(scope, rows)
    problem = conn.execute(
        sa.select(t.prepay_meter.c.billing_problem).where(t.prepay_meter.c.meter_id == meter)
    ).scalar()
    if problem:
        return f"not billed: {problem}"
    rated = _last_rated(conn, [meter]).get(meter)
    since = rated if rated is not None and rated < lo else _last_read(conn, meter, lo)
    if since is not None:
        return f"not read since {_local(scope, since)}"
    if _on_account(conn, [meter], lo, hi):
        return "no readings in range (on an account, but not read by the engine)"
    return "no readings in range (no account, and no reading captured or entered)"


def _why_readings(scope: ReportScope, rows: Sequence[Reading]) -> str:
    good = [r for r in rows if fresh(r)]
    if not good:
        return f"not read since {_local(scope, max(r.read_at for r in rows))}"
    if len(good) == 1:
        return f"one reading only in range ({_local(scope, good[0].at)})"
    for a, b in itertools.pairwise(good):
        if b.energy < a.energy:
            return register_figure(scope, a, b)[1]
    return "no two fresh readings a capture apart"


def _last_rated(conn: Connection, meters: Sequence[str]) -> dict[str, dt.datetime]:
    """meter → the last reading the engine rated (from the rating state it keeps)."""
    if not meters:
        return {}
    out = {}
    for meter, state in conn.execute(
        sa.select(t.prepay_meter.c.meter_id, t.prepay_meter.c.rating_state).where(
            among(conn, t.prepay_meter.c.meter_id, meters)
        )
    ).all():
        last_t = (state or {}).get("last_t")
        if last_t is not None:
            out[meter] = dt.datetime.fromtimestamp(int(last_t), dt.UTC)
    return out


def _last_read(conn: Connection, meter: str, lo: dt.datetime) -> dt.datetime | None:
    r = t.billing_reading
    return conn.execute(
        sa.select(sa.func.max(r.c.read_at)).where(r.c.meter_id == meter, r.c.at < lo)
    ).scalar()


def _local(scope: ReportScope, at: dt.datetime) -> str:
    return f"{at.astimezone(scope.tz):%Y-%m-%d %H:%M}"


def _day(scope: ReportScope, at: dt.datetime) -> str:
    return at.astimezone(scope.tz).date().isoformat()
