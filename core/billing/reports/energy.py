"""Energy per meter by day, month or year (electricity or water): from the consumption the
engine keeps per meter and day (`meter_usage_day`), and for meters without an account —
main and public meters — from their registers at the capture instants."""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal

from sqlalchemy.engine import Connection

from ...ledger import RequestError
from ..export import Chart, Table, Value
from ..readings import readings_between
from .common import ReportScope, buckets, energy, rate_order, unbilled_notes, usage_days
from .meter_status import has_data, register_figure, role_of, roles, why_no_figure


def meter_energy(
    scope: ReportScope,
    conn: Connection,
    start: dt.date,
    end: dt.date,
    by: str = "day",
    commodity: str = "electricity",
    meters: Sequence[str] | None = None,
) -> Table:
    if commodity not in ("electricity", "water"):
        raise RequestError("commodity", f"expected electricity or water, got {commodity!r}")
    spans = buckets(start, end, by)
    starts = [d for _, d in spans]
    chosen = list(meters) if meters else scope.meters(commodity)
    unknown = [m for m in chosen if m not in scope.site.devices]
    if unknown:
        raise RequestError("meter", f"unknown meter {unknown[0]!r}")

    def bucket_of(day: dt.date) -> int:
        return bisect.bisect_right(starts, day) - 1

    grid: dict[tuple[str, int], dict[str, int]] = {}
    for meter, day, units, by_rate in usage_days(conn, chosen, start, end):
        cell = grid.setdefault((meter, bucket_of(dt.date.fromisoformat(day))), {})
        cell["total"] = cell.get("total", 0) + int(units)
        for k, v in (by_rate or {}).items():
            cell[k] = cell.get(k, 0) + int(v)
    seen = {m for m, _ in grid}
    # Meters without an account (main, public): from their registers, day by day.
    gaps = _from_registers(
        scope, conn, [m for m in chosen if m not in seen], start, end, grid, bucket_of
    )
    lo, hi = scope.midnight(start), scope.midnight(end)
    with_figure = {m for m, _ in grid}
    empty = [m for m in chosen if m not in with_figure]
    metered = has_data(conn, empty, lo, hi, scope)
    rates = rate_order({k for c in grid.values() for k in c if k != "total"})
    table = _table(scope, commodity, by, start, end, rates)
    known = roles(scope)
    per_bucket = [0] * len(spans)
    rows: list[tuple[str, int, list[Value]]] = []
    for (meter, i), cell in grid.items():
        cells = [energy(cell.get("total", 0)), *[energy(cell.get(r, 0)) for r in rates]]
        rows.append((meter, i, [spans[i][0], *cells, gaps.get(meter, "")]))
        if not role_of(scope, meter, known).startswith("main meter"):
            per_bucket[i] += cell.get("total", 0)
    for meter in empty:
        if meter in metered:
            note = "read, nothing used"
            rows.append((meter, 0, [spans[0][0], energy(0), *[energy(0) for _ in rates], note]))
        else:
            why = why_no_figure(conn, scope, meter, lo, hi)
            rows.append((meter, -1, ["", None, *[None for _ in rates], f"no figure: {why}"]))
    for meter, _i, cells in sorted(rows, key=lambda x: (x[0], x[1])):
        device = scope.site.devices[meter]
        place = device.room or device.building or ""
        table.rows.append([meter, place, role_of(scope, meter, known), *cells])
    table.total = ["total", "", "", "", energy(sum(per_bucket)), *["" for _ in rates], ""]
    table.notes.extend(unbilled_notes(conn, chosen))
    return table


def _table(
    scope: ReportScope, commodity: str, by: str, start: dt.date, end: dt.date, rates: Sequence[str]
) -> Table:
    unit = "m³" if commodity == "water" else "kWh"
    return Table(
        f"{commodity.capitalize()} per meter by {by}, "
        f"{start} to {end - dt.timedelta(days=1)} ({unit})",
        ["meter", "room", "role", by, "total", *rates, "note"],
        sheet=f"{commodity} by {by}"[:31],
        notes=[
            "Basis: reading time. Room meters on an account: the engine's consumption per "
            "day (the day of the readings it was rated from). Main and public "
            "(common-area) meters and meters without an account: their registers captured "
            f"each day at {scope.calendar.freeze_hour:02d}:00, a day counted only between two "
            "fresh readings. A meter without a figure is listed with why (an empty cell is "
            "no data, 0.000 a meter that was read and used nothing). The total leaves the "
            "main meters out: their energy holds the rooms'."
        ],
    )


def _from_registers(
    scope: ReportScope,
    conn: Connection,
    meters: Sequence[str],
    start: dt.date,
    end: dt.date,
    grid: dict[tuple[str, int], dict[str, int]],
    bucket_of: Callable[[dt.date], int],
) -> dict[str, str]:
    """Add the meters' register figures day by day to `grid`; meter → a note on the days
    without a figure and why."""
    if not meters:
        return {}
    series = readings_between(
        conn, meters, scope.calendar.capture_on(start), scope.calendar.capture_on(end)
    )
    gaps: dict[str, str] = {}
    for meter, readings in series.items():
        counted = False
        by_at = {r.at: r for r in readings}
        missing: dict[str, list[str]] = {}
        for day in (start + dt.timedelta(days=i) for i in range((end - start).days)):
            a = by_at.get(scope.calendar.capture_on(day))
            b = by_at.get(scope.calendar.capture_on(day + dt.timedelta(days=1)))
            units, why = register_figure(scope, a, b)
            if units is None:
                missing.setdefault(why, []).append(day.isoformat())
                continue
            cell = grid.setdefault((meter, bucket_of(day)), {})
            cell["total"] = cell.get("total", 0) + units
            counted = True
        if missing and counted:
            gaps[meter] = "; ".join(
                f"no figure on {_days(days)}: {why}" for why, days in missing.items()
            )
    return gaps


def _days(days: Sequence[str]) -> str:
    shown = ", ".join(days[:3])
    return shown + (f" and {len(days) - 3} more day(s)" if len(days) > 3 else "")


def energy_by_bucket(table: Table) -> Table:
    """A chartable summary of `meter_energy`: total energy per bucket (main meters left
    out, as in the table's total)."""
    by = table.columns[3]
    sums: dict[str, Decimal] = {}
    for row in table.rows:
        if row[4] is None or str(row[2]).startswith("main meter"):
            continue
        sums[str(row[3])] = sums.get(str(row[3]), Decimal(0)) + Decimal(row[4])  # type: ignore[arg-type]
    return Table(
        f"{table.title}: total",
        [by, "total"],
        [[k, v] for k, v in sorted(sums.items())],
        chart=Chart("bar", 0, (1,), "Total energy"),
        sheet=f"total by {by}",
    )
