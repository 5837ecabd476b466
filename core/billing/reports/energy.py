"""Energy per meter by day, month or year (electricity or water): from the consumption the
engine keeps per meter and day (`meter_usage_day`), and for meters without an account —
main and public meters — from their registers at the capture instants."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy.engine import Connection

from ...ledger import RequestError
from ..export import Chart, Table
from ..readings import readings_between
from .common import ReportScope, buckets, energy, rate_order, unbilled_notes, usage_days


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
        i = 0
        while i + 1 < len(starts) and starts[i + 1] <= day:
            i += 1
        return i

    grid: dict[tuple[str, int], dict[str, int]] = {}
    seen = set()
    for meter, day, units, by_rate in usage_days(conn, chosen, start, end):
        seen.add(meter)
        cell = grid.setdefault((meter, bucket_of(dt.date.fromisoformat(day))), {})
        cell["total"] = cell.get("total", 0) + int(units)
        for k, v in (by_rate or {}).items():
            cell[k] = cell.get(k, 0) + int(v)
    # Meters without an account (main, public): from their registers, day by day.
    rest = [m for m in chosen if m not in seen]
    if rest:
        series = readings_between(
            conn, rest, scope.calendar.capture_on(start), scope.calendar.capture_on(end)
        )
        for meter, readings in series.items():
            for a, b in itertools.pairwise(readings):
                if b.at - a.at != dt.timedelta(days=1) or b.energy < a.energy:
                    continue
                day = a.at.astimezone(scope.tz).date()
                cell = grid.setdefault((meter, bucket_of(day)), {})
                cell["total"] = cell.get("total", 0) + b.energy - a.energy
    rates = rate_order({k for c in grid.values() for k in c if k != "total"})
    unit = "m³" if commodity == "water" else "kWh"
    table = Table(
        f"{commodity.capitalize()} per meter by {by}, "
        f"{start} to {end - dt.timedelta(days=1)} ({unit})",
        ["meter", "room", by, "total", *rates],
        sheet=f"{commodity} by {by}"[:31],
    )
    per_bucket = [0] * len(spans)
    for (meter, i), cell in sorted(grid.items()):
        room = scope.site.devices[meter].room or scope.site.devices[meter].building or ""
        table.rows.append(
            [
                meter,
                room,
                spans[i][0],
                energy(cell.get("total", 0)),
                *[energy(cell.get(r, 0)) for r in rates],
            ]
        )
        per_bucket[i] += cell.get("total", 0)
    table.total = ["total", "", "", energy(sum(per_bucket)), *["" for _ in rates]]
    table.notes.extend(unbilled_notes(conn, chosen))
    return table


def energy_by_bucket(table: Table) -> Table:
    """A chartable summary of `meter_energy`: total energy per bucket."""
    by = table.columns[2]
    sums: dict[str, Decimal] = {}
    for row in table.rows:
        sums[str(row[2])] = sums.get(str(row[2]), Decimal(0)) + Decimal(row[3])  # type: ignore[arg-type]
    out = Table(
        f"{table.title}: total",
        [by, "total"],
        [[k, v] for k, v in sorted(sums.items())],
        chart=Chart("bar", 0, (1,), "Total energy"),
        sheet=f"total by {by}",
    )
    return out
