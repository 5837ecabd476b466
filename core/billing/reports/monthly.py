"""The comprehensive monthly report per room: total and 尖/峰/平/谷 energy, the cost of each
(the month's usage postings of the room's meters — exactly the ledger's — and the usage
lines of the month's confirmed post-paid bills, split over the rates in proportion to the
exact tariff amounts of the month's energy by `rating.largest_remainder`, tier surcharges
in their own column), and the same month of the previous year with the change."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...db import schema as t
from ...rating.bills import bill_usage
from ...rating.engine import RatingError
from ...rating.rounding import largest_remainder
from ...rating.tariffs import SINGLE_RATE
from ...rating.units import ENERGY_SCALE
from ..export import Chart, Table, yuan
from ..periods import parse_period
from .attribution import usage_by_meter
from .common import ReportScope, energy, rate_order, unbilled_notes, usage_days

#: meter → (account, tariff, tenant name) of the open account it is attached to.
Owners = dict[str, tuple[str, str | None, str]]


def _next_month(first: dt.date) -> dt.date:
    return (first + dt.timedelta(days=32)).replace(day=1)


def monthly(
    scope: ReportScope, conn: Connection, month: str, commodity: str = "electricity"
) -> Table:
    """The comprehensive monthly report per room (see the module docstring)."""
    year, mon = parse_period(month, "month")
    first = dt.date(year, mon, 1)
    nxt = _next_month(first)
    a_year_ago = dt.date(year - 1, mon, 1)
    meters = scope.meters(commodity)
    rooms: dict[str, list[str]] = {}
    for m in meters:
        room = scope.site.devices[m].room
        if room is not None:
            rooms.setdefault(room, []).append(m)
    this = _energy_by_meter(usage_days(conn, meters, first, nxt))
    before: dict[str, int] = {}
    for meter, _day, units, _ in usage_days(conn, meters, a_year_ago, _next_month(a_year_ago)):
        before[meter] = before.get(meter, 0) + int(units)
    cost = _deducted(scope, conn, meters, first, nxt)
    billed = _billed(conn, month, {m for ms in rooms.values() for m in ms})
    owners = _owners(conn, meters)
    rates = rate_order({k for c in this.values() for k in c if k != "total"} - {SINGLE_RATE})
    table = _table(month, commodity, rates, unbilled_notes(conn, meters))
    kind = "water" if commodity == "water" else "electric"
    totals = [0] * (len(rates) + 1)
    cost_totals = [0] * (len(rates) + 2)
    prior_total = 0
    for room in sorted(rooms):
        ms = rooms[room]
        e = {k: sum(this.get(m, {}).get(k, 0) for m in ms) for k in ["total", *rates]}
        money = sum(cost.get(m, 0) + billed.get(m, 0) for m in ms)
        owner = next((owners[m] for m in ms if m in owners), (None, None, None))
        split = _split(scope, conn, ms, owner[1], kind, (first, nxt), rates, e, money)
        last = sum(before.get(m, 0) for m in ms)
        table.rows.append(
            [
                room,
                owner[0] or "",
                owner[2] or "",
                energy(e["total"]),
                *[energy(e[r]) for r in rates],
                *[yuan(f) for f in split],
                yuan(money),
                energy(last),
                _change_pct(e["total"], last),
            ]
        )
        for i, k in enumerate(["total", *rates]):
            totals[i] += e[k]
        for i, f in enumerate([*split, money]):
            cost_totals[i] += f
        prior_total += last
    table.total = [
        "total",
        "",
        "",
        *[energy(x) for x in totals],
        *[yuan(x) for x in cost_totals],
        energy(prior_total),
        "",
    ]
    return table


def _table(month: str, commodity: str, rates: Sequence[str], notes: Sequence[str]) -> Table:
    """The empty monthly report: its title, columns, chart and notes."""
    year, mon = parse_period(month, "month")
    unit = "m³" if commodity == "water" else "kWh"
    return Table(
        f"Monthly {commodity} report {month} per room",
        [
            "room",
            "account",
            "tenant",
            f"total {unit}",
            *[f"{r} {unit}" for r in rates],
            *[f"{r} CNY" for r in rates],
            "tier surcharge CNY",
            "total CNY",
            f"{year - 1}-{mon:02d} {unit}",
            "change %",
        ],
        sheet=f"{commodity} {month}",
        chart=Chart("bar", 0, (3,), f"{commodity} {month} per room", unit),
        notes=[
            "Basis: service period. Cost = the prepaid usage of the room's meters read in "
            "the month (ledger) and the usage lines of the month's confirmed post-paid "
            "bills (however late they were confirmed), split over the rates in proportion "
            "to the tariff's exact amounts for the month's energy — the electricity or water "
            "of `report revenue --basis service` for the month.",
            *notes,
        ],
    )


def _energy_by_meter(usage: Sequence[Any]) -> dict[str, dict[str, int]]:
    """meter → {"total": units, rate: units...} summed over the usage days."""
    out: dict[str, dict[str, int]] = {}
    for meter, _day, units, by_rate in usage:
        cell = out.setdefault(meter, {})
        cell["total"] = cell.get("total", 0) + int(units)
        for k, v in (by_rate or {}).items():
            cell[k] = cell.get(k, 0) + int(v)
    return out


def _change_pct(now: int, last: int) -> Decimal | None:
    """The change against last year in % (a number, so a spreadsheet can sort and chart
    it); None without last year's energy."""
    if not last:
        return None
    pct = Fraction(now - last, last) * 100
    return (Decimal(pct.numerator) / Decimal(pct.denominator)).quantize(Decimal("0.1"))


def _deducted(
    scope: ReportScope, conn: Connection, meters: Sequence[str], first: dt.date, nxt: dt.date
) -> dict[str, int]:
    """meter → what the ledger took for its prepaid usage read in the month (the
    revenue report's service period)."""
    return usage_by_meter(scope, conn, scope.midnight(first), scope.midnight(nxt), meters)


def _billed(conn: Connection, month: str, room_meters: set[str]) -> dict[str, int]:
    """meter → what the month's confirmed post-paid bills charged for its usage."""
    billed: dict[str, int] = {}
    for lines in conn.execute(
        sa.select(t.bill.c.lines).where(
            t.bill.c.period == month, t.bill.c.state.not_in(["DRAFT", "VOID"])
        )
    ).scalars():
        for ln in lines or ():
            if ln.get("kind") in ("electricity", "water") and ln.get("meter") in room_meters:
                billed[ln["meter"]] = billed.get(ln["meter"], 0) + int(ln["amount_fen"])
    return billed


def _owners(conn: Connection, meters: Sequence[str]) -> Owners:
    return {
        m: (a, tariff, name)
        for m, a, tariff, name in conn.execute(
            sa.select(
                t.account_meter.c.meter_id,
                t.account.c.id,
                t.account.c.tariff_id,
                t.account.c.name,
            )
            .join(t.account, t.account.c.id == t.account_meter.c.account_id)
            .where(t.account_meter.c.meter_id.in_(meters), t.account_meter.c.detached_at.is_(None))
        ).all()
    }


def _split(
    scope: ReportScope,
    conn: Connection,
    meters: Sequence[str],
    tariff_id: str | None,
    kind: str,
    month: tuple[dt.date, dt.date],
    rates: Sequence[str],
    e: Mapping[str, int],
    money: int,
) -> list[int]:
    """`money` split over [rates..., tier surcharge] by largest remainder, in
    proportion to the tariff's exact amounts for the month's energy per rate (tiers
    continuing from the tier cycle's earlier consumption). Without time-of-use rates
    there is nothing to split: all zeros (the total column holds the cost)."""
    first, nxt = month
    parts = len(rates) + 1
    key = scope.tariff_for(kind, tariff_id)
    if not money or key is None or not e["total"] or not rates:
        return [0] * parts
    tariff = scope.catalogue.get(key)
    version = tariff.version_on(first)
    if not version.time_of_use:
        return [0] * parts
    before = Fraction(0)
    if version.tiers is not None:
        c0, _ = version.tiers.cycle_bounds(scope.midnight(first), scope.tz)
        c0_day = c0.astimezone(scope.tz).date()
        if c0_day < first:
            ytd = sum(int(r[2]) for r in usage_days(conn, meters, c0_day, first))
            before = Fraction(ytd, ENERGY_SCALE)
    usage = {r: Fraction(e[r], ENERGY_SCALE) for r in rates if e[r] and r in version.rates}
    if not usage:
        return [0] * parts
    try:
        bill = bill_usage(tariff, usage, period=(first, nxt), cycle_energy_before=before)
    except RatingError:
        return [0] * parts
    exact = [Fraction(0)] * parts
    for ln in bill.lines:
        label = ln.label.split(" (")[0]
        exact[rates.index(label) if label in rates else parts - 1] += ln.amount_exact_fen
    whole = sum(exact, Fraction(0))
    if not whole:
        return [0] * parts
    return largest_remainder(money, [x * money / whole for x in exact])
