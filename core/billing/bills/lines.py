"""A bill's lines: the usage of each POSTPAID meter rated by `rating.bill_usage` (with a
line recording its readings), the billed items, and the late fees of overdue bills.
Computing writes nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy.engine import Connection

from ...config.site import Site
from ...ledger import format_fen
from ...model import MeterKind
from ...prepay.settings import PrepaySettings
from ...rating.bills import bill_usage
from ...rating.compiled import DEFAULT_REGISTER_RATES
from ...rating.engine import RatingError, RegisterLayout
from ...rating.rounding import Rounding, round_fen
from ...rating.tariffs import SINGLE_RATE, Tariff, TariffCatalogue
from ...rating.units import ENERGY_SCALE
from ..readings import difference, modulus_units
from ..settings import BillSettings
from .inputs import BillInputs
from .store import OpenItem, OverdueBill

#: account → (lines, problems, inputs digest) of its bill.
Computed = dict[str, tuple[list[dict[str, Any]], list[str], str]]


def late_fee_fen(
    settings: BillSettings, rounding: Rounding, outstanding_fen: int, days: int
) -> int:
    """Late fee of `outstanding_fen` overdue for `days` days (0 when off or not due)."""
    rate = settings.late_fee_per_day
    if rate <= 0 or days <= 0 or outstanding_fen <= 0:
        return 0
    fen = round_fen(Fraction(outstanding_fen) * Fraction(rate) * days, rounding)
    return max(fen, settings.late_fee_min_fen)


def item_line(item: OpenItem) -> dict[str, Any]:
    """The line of a billed item (posted when it was charged: confirming only attaches it)."""
    return {
        "kind": item.kind,
        "description": item.description,
        "quantity": item.quantity,
        "unit_price": item.unit_price,
        "amount_fen": int(item.amount_fen),
        "item": int(item.id),
        "posted": True,
    }


class BillLines:
    """Computes the lines of a site's bills (see the module docstring)."""

    def __init__(
        self,
        site: Site,
        settings: BillSettings,
        prepay: PrepaySettings,
        catalogue: TariffCatalogue,
        inputs: BillInputs,
    ) -> None:
        self.site = site
        self.settings = settings
        self.prepay = prepay
        self.rounding: Rounding = prepay.rounding
        self.catalogue = catalogue
        self.inputs = inputs
        self.calendar = inputs.calendar
        self._how: dict[tuple[str, str, dt.date], tuple[Tariff, tuple[str, ...]]] = {}

    def compute(
        self, conn: Connection, period: str, accounts: Sequence[str] | None = None
    ) -> Computed:
        """account → (lines, problems, inputs digest) of its bill for `period` (nothing
        is written)."""
        ids, inputs, shared = self.inputs.gather(conn, period, accounts)
        instants = self.calendar.bounds(period)
        dates = self.calendar.dates(period)
        out: Computed = {}
        for account_id in ids:
            mine = inputs[account_id]
            lines: list[dict[str, Any]] = []
            problems: list[str] = []
            for meter, kind in mine["meters"]:
                self.usage_lines(
                    meter,
                    kind,
                    mine["tariff"],
                    (shared["start"].get(meter), shared["end"].get(meter)),
                    instants,
                    dates,
                    shared["ytd"].get(meter, Fraction(0)),
                    lines,
                    problems,
                )
            lines.extend(item_line(item) for item in mine["items"])
            for bill_row in mine["overdue"]:
                line = self.late_fee_line(bill_row, *dates)
                if line is not None:
                    lines.append(line)
            if lines or problems:
                out[account_id] = (lines, problems, self.inputs.digest(period, mine, shared))
        return out

    # -- usage -------------------------------------------------------------------------------
    def usage_lines(
        self,
        meter: str,
        kind: str,
        tariff_id: str | None,
        readings: tuple[Any, Any],
        instants: tuple[dt.datetime, dt.datetime],
        dates: tuple[dt.date, dt.date],
        before: Fraction,
        lines: list[dict[str, Any]],
        problems: list[str],
    ) -> None:
        """Append `meter`'s rated lines and its reading line to `lines`, or why it cannot
        be billed to `problems`. `before`: its energy earlier in the tier cycle."""
        start, end = readings
        problems.extend(self._missing_readings(meter, readings, instants))
        if start is None or end is None:
            return
        layout = self.inputs.layout(meter)
        delta = difference(start, end, modulus_units(layout) if layout else None)
        if delta is None:
            problems.append(
                f"{meter} reads lower at the end of the period than at its start "
                "(replaced meter? record its readings by hand)"
            )
            return
        tariff_key = self.inputs.tariff_for(kind, tariff_id)
        if tariff_key is None:
            problems.append(f"no tariff prices {meter} (set the account's tariff)")
            return
        tariff, names = self._rating_of(tariff_key, self.site.devices[meter].model, dates, layout)
        usage = self._usage_by_rate(meter, start, end, delta, layout, names, problems)
        if usage is None:
            return
        try:
            bill = bill_usage(
                tariff, usage, period=dates, cycle_energy_before=before, rounding=self.rounding
            )
        except RatingError as exc:
            problems.append(f"{meter}: {exc}")
            return
        revenue = "water" if kind == MeterKind.WATER.value else "electricity"
        for ln in bill.lines:
            if not ln.amount_fen:
                continue
            lines.append(
                {
                    "kind": revenue,
                    "meter": meter,
                    "description": f"{meter} {ln.label}" if ln.label != SINGLE_RATE else meter,
                    "quantity": f"{ln.quantity_text} {ln.unit}",
                    # The quantity at the precision of the reading (0.428 m³, where
                    # `quantity` says 0.43): what a printed bill shows.
                    "quantity_value": reading_text(ln.quantity),
                    "unit": ln.unit,
                    "unit_price": str(ln.unit_price),
                    "amount_fen": ln.amount_fen,
                }
            )
        lines.append(_reading_line(meter, start, end, delta, tariff))

    def _missing_readings(
        self, meter: str, readings: tuple[Any, Any], instants: tuple[dt.datetime, dt.datetime]
    ) -> list[str]:
        local = self.site.info.tz
        return [
            f"no reading of {meter} at {at.astimezone(local):%Y-%m-%d %H:%M} "
            "(record one: openprepay billing reading)"
            for reading, at in zip(readings, instants, strict=True)
            if reading is None
        ]

    def _rating_of(
        self,
        tariff_key: str,
        model: str,
        dates: tuple[dt.date, dt.date],
        layout: RegisterLayout | None,
    ) -> tuple[Tariff, tuple[str, ...]]:
        """The tariff, and which rate each T register counts (per model; none when the
        usage is billed from the total register)."""
        key = (tariff_key, model, dates[0])
        how = self._how.get(key)
        if how is None:
            tariff = self.catalogue.get(tariff_key)
            version = tariff.version_on(dates[0])
            names: tuple[str, ...] = ()
            if version.time_of_use and layout is not None:
                mapping = version.registers or self.prepay.rates_for(model)
                names = tuple(mapping or DEFAULT_REGISTER_RATES)[: len(layout.tou_points)]
            how = self._how[key] = (tariff, names)
        return how

    @staticmethod
    def _usage_by_rate(
        meter: str,
        start: Any,
        end: Any,
        delta: int,
        layout: RegisterLayout | None,
        names: tuple[str, ...],
        problems: list[str],
    ) -> Fraction | dict[str, Fraction] | None:
        """The period's usage: per rate from the T registers when `names` map them, else
        the total register's `delta`; None (with a problem) when a rate register fails."""
        if not names:
            return Fraction(delta, ENERGY_SCALE)
        assert layout is not None
        units: dict[str, int] = {}
        for point, name in zip(layout.tou_points, names, strict=False):
            a, b = start.registers.get(point), end.registers.get(point)
            if a is None or b is None or b < a:
                problems.append(f"{meter}: rate register {point} missing or lower at the end")
                return None
            units[name] = units.get(name, 0) + b - a
        return {name: Fraction(u, ENERGY_SCALE) for name, u in units.items()}

    # -- late fees -----------------------------------------------------------------------------
    def late_fee(self, outstanding_fen: int, days: int) -> int:
        """Late fee of `outstanding_fen` overdue for `days` days (0 when off or not due)."""
        return late_fee_fen(self.settings, self.rounding, outstanding_fen, days)

    def late_fee_line(
        self, row: OverdueBill, start: dt.date, end: dt.date
    ) -> dict[str, Any] | None:
        """The late fee of an overdue bill for the days of [start, end) it was overdue."""
        if row.due_date is None:
            return None
        first_overdue = dt.date.fromisoformat(row.due_date) + dt.timedelta(days=1)
        since = max(first_overdue, start)
        days = (end - since).days
        outstanding = int(row.total_fen) - int(row.paid_fen)
        fen = self.late_fee(outstanding, days)
        if not fen:
            return None
        return {
            "kind": "late_fee",
            "description": (
                f"late fee: bill {row.number} {format_fen(outstanding)} overdue "
                f"{days} day(s) from {since} × {self.settings.late_fee_per_day}/day"
            ),
            "quantity": f"{days} days",
            "unit_price": str(self.settings.late_fee_per_day),
            "amount_fen": fen,
            "bill": row.number,
            "posted": False,
        }


def _reading_line(meter: str, start: Any, end: Any, delta: int, tariff: Tariff) -> dict[str, Any]:
    """The zero-amount line that records the readings a meter was billed from (tier
    cycles of later bills add up its `energy`)."""
    return {
        "kind": "meter_reading",
        "meter": meter,
        "description": (
            f"{meter}: {Decimal(start.energy) / ENERGY_SCALE} → "
            f"{Decimal(end.energy) / ENERGY_SCALE} = "
            f"{Decimal(delta) / ENERGY_SCALE} {tariff.unit} ({tariff.id})"
        ),
        "energy": delta,
        "start": start.energy,
        "end": end.energy,
        "unit": tariff.unit,
        "amount_fen": 0,
    }


def reading_text(quantity: Fraction) -> str:
    """A quantity at the precision of the readings it comes from (0.001 kWh or m³), half
    up: a share split by days may not end there."""
    places = Decimal(1) / ENERGY_SCALE
    exact = Decimal(quantity.numerator) / Decimal(quantity.denominator)
    return f"{exact.quantize(places, rounding=ROUND_HALF_UP):f}"
