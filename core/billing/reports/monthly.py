"""The comprehensive monthly report per room: total and 尖/峰/平/谷 energy, the cost of each
(the prepaid usage of the room's meters read in the month — exactly the ledger's — and the
usage lines of the month's confirmed post-paid bills: the service period, split over the
rates in proportion to the exact tariff amounts of the month's energy by
`rating.largest_remainder`, tier surcharges in their own column), the same month of the
previous year and the month before with the changes — "no data" (an empty cell) kept apart
from a real zero — and then the pools' main and public meters from their registers. A room
or meter without a figure says why."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...db import schema as t
from ...db.among import among
from ...rating.bills import bill_usage
from ...rating.engine import RatingError
from ...rating.rounding import largest_remainder
from ...rating.tariffs import SINGLE_RATE
from ...rating.units import ENERGY_SCALE
from ..export import Chart, Table, yuan
from ..periods import parse_period
from ..readings import readings_at
from .attribution import usage_by_meter
from .common import ReportScope, energy, rate_order, unbilled_notes, usage_days
from .meter_status import has_data, register_figure, roles, why_no_figure

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
    meters = scope.meters(commodity)
    rooms = _rooms(scope, meters)
    this = _energy_by_meter(usage_days(conn, meters, first, nxt))
    present = has_data(conn, meters, scope.midnight(first), scope.midnight(nxt), scope)
    year_ago = Past(scope, conn, meters, dt.date(year - 1, mon, 1))
    month_ago = Past(scope, conn, meters, _previous_month(first))
    cost = _deducted(scope, conn, meters, first, nxt)
    billed = _billed(conn, month, {m for ms in rooms.values() for m in ms})
    owners = _owners(conn, meters)
    rates = rate_order({k for c in this.values() for k in c if k != "total"} - {SINGLE_RATE})
    table = _table(month, commodity, rates, unbilled_notes(conn, meters))
    kind = "water" if commodity == "water" else "electric"
    totals = [0] * (len(rates) + 1)
    cost_totals = [0] * (len(rates) + 2)
    for room in sorted(rooms):
        ms = rooms[room]
        e = {k: sum(this.get(m, {}).get(k, 0) for m in ms) for k in ["total", *rates]}
        money = sum(cost.get(m, 0) + billed.get(m, 0) for m in ms)
        owner = next((owners[m] for m in ms if m in owners), (None, None, None))
        split = _split(scope, conn, ms, owner[1], kind, (first, nxt), rates, e, money)
        now = e["total"] if any(m in present for m in ms) else None
        note = "" if now is not None else _why(scope, conn, ms, first, nxt)
        table.rows.append(
            [
                room,
                owner[0] or "",
                owner[2] or "",
                *_energies(now, e, rates),
                *[yuan(f) for f in split],
                yuan(money),
                *year_ago.cells(ms, now),
                *month_ago.cells(ms, now),
                note,
            ]
        )
        for i, k in enumerate(["total", *rates]):
            totals[i] += e[k]
        for i, f in enumerate([*split, money]):
            cost_totals[i] += f
    table.total = [
        "total",
        "",
        "",
        *[energy(x) for x in totals],
        *[yuan(x) for x in cost_totals],
        *year_ago.total(),
        *month_ago.total(),
        "",
    ]
    table.rows.extend(_common_area_rows(scope, conn, commodity, first, rates))
    return table


def _rooms(scope: ReportScope, meters: Sequence[str]) -> dict[str, list[str]]:
    """room → its meters (of `meters`)."""
    rooms: dict[str, list[str]] = {}
    for m in meters:
        room = scope.site.devices[m].room
        if room is not None:
            rooms.setdefault(room, []).append(m)
    return rooms


def _energies(now: int | None, e: Mapping[str, int], rates: Sequence[str]) -> list[Any]:
    """The energy cells of a room: empty without data, 0.000 for a real zero."""
    if now is None:
        return [None for _ in ["total", *rates]]
    return [energy(e["total"]), *[energy(e[r]) for r in rates]]


def _why(
    scope: ReportScope, conn: Connection, meters: Sequence[str], first: dt.date, nxt: dt.date
) -> str:
    lo, hi = scope.midnight(first), scope.midnight(nxt)
    return "no data: " + "; ".join(f"{m} {why_no_figure(conn, scope, m, lo, hi)}" for m in meters)


class Past:
    """A month to compare with (a year or a month before): each room's energy, or no data
    (None) when none of its meters was metered then — never 0, which is a real zero."""

    def __init__(
        self, scope: ReportScope, conn: Connection, meters: Sequence[str], first: dt.date
    ) -> None:
        nxt = _next_month(first)
        self.label = f"{first:%Y-%m}"
        self.energy: dict[str, int] = {}
        for meter, _day, units, _ in usage_days(conn, meters, first, nxt):
            self.energy[meter] = self.energy.get(meter, 0) + int(units)
        self.present = has_data(conn, meters, scope.midnight(first), scope.midnight(nxt), scope)
        self.sum = 0
        self.missing = 0
        self.found = 0

    def of(self, meters: Sequence[str]) -> int | None:
        if not any(m in self.present for m in meters):
            return None
        return sum(self.energy.get(m, 0) for m in meters)

    def cells(self, meters: Sequence[str], now: int | None) -> list[Any]:
        """[energy then, change %]: empty cells without data (then or now)."""
        then = self.of(meters)
        if then is None:
            self.missing += 1
            return [None, None]
        self.sum += then
        self.found += 1
        return [energy(then), change_pct(now, then)]

    def total(self) -> list[Any]:
        return [energy(self.sum) if self.found else None, ""]


def change_pct(now: int | None, then: int | None) -> Decimal | None:
    """The change in % (a number, so a spreadsheet can sort and chart it); None without
    data either side, or from a real zero (no % of nothing)."""
    if now is None or not then:
        return None
    pct = Fraction(now - then, then) * 100
    return (Decimal(pct.numerator) / Decimal(pct.denominator)).quantize(Decimal("0.1"))


def _common_area_rows(
    scope: ReportScope, conn: Connection, commodity: str, first: dt.date, rates: Sequence[str]
) -> list[list[Any]]:
    """The pools' main and public meters of the commodity, from their registers at the
    capture instants starting this month, a year and a month before."""
    wanted = set(scope.meters(commodity))
    known = roles(scope)
    out = []
    for meter in sorted(m for m in known if m in wanted):
        now, why = _registers(scope, conn, meter, first)
        cells: list[Any] = []
        for past in (dt.date(first.year - 1, first.month, 1), _previous_month(first)):
            then, _ = _registers(scope, conn, meter, past)
            cells += [None if then is None else energy(then), change_pct(now, then)]
        out.append(
            [
                f"{meter} ({known[meter]})",
                "",
                "",
                None if now is None else energy(now),
                *[None for _ in rates],
                *[None for _ in rates],
                None,
                None,
                *cells,
                f"no data: {why}" if now is None else "common area: not in the total",
            ]
        )
    return out


def _registers(
    scope: ReportScope, conn: Connection, meter: str, first: dt.date
) -> tuple[int | None, str]:
    """A meter's energy over the month starting `first`, from its captured registers."""
    lo, hi = scope.calendar.capture_on(first), scope.calendar.capture_on(_next_month(first))
    a = readings_at(conn, [meter], lo, registers=False).get(meter)
    b = readings_at(conn, [meter], hi, registers=False).get(meter)
    units, why = register_figure(scope, a, b)
    if units is None and (a is None or b is None):
        why = why_no_figure(conn, scope, meter, lo, hi)
    return units, why


def _previous_month(first: dt.date) -> dt.date:
    return (first - dt.timedelta(days=1)).replace(day=1)


def _table(month: str, commodity: str, rates: Sequence[str], notes: Sequence[str]) -> Table:
    """The empty monthly report: its title, columns, chart and notes."""
    year, mon = parse_period(month, "month")
    prev = _previous_month(dt.date(year, mon, 1))
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
            "YoY %",
            f"{prev:%Y-%m} {unit}",
            "MoM %",
            "note",
        ],
        sheet=f"{commodity} {month}",
        chart=Chart("bar", 0, (3,), f"{commodity} {month} per room", unit),
        notes=[
            "Basis: service period. Cost = the prepaid usage of the room's meters read in "
            "the month (ledger) and the usage lines of the month's confirmed post-paid "
            "bills (however late they were confirmed), split over the rates in proportion "
            "to the tariff's exact amounts for the month's energy — the electricity or water "
            "of `report revenue --basis service` for the month.",
            "An empty energy cell is no data (the room's meters were on no account and were "
            "not read then; the note says why); 0.000 is a real zero (metered, nothing "
            "used). YoY and MoM % are empty without data either side or from a zero.",
            "Common-area meters (the pools' main and public meters) follow the rooms, from "
            "their registers at the capture instants; they are not in the total.",
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
            .where(
                among(conn, t.account_meter.c.meter_id, meters),
                t.account_meter.c.detached_at.is_(None),
            )
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
