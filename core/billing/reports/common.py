"""What every report shares: the site it reports on, day buckets in the site's time zone,
energy for display, the meters of a commodity, their daily usage, and the note on meters
that are not billed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...config.site import Site
from ...db import schema as t
from ...db.among import among
from ...ledger import RequestError
from ...model import DeviceModel, MeterKind
from ...prepay.binding import tariff_for
from ...rating.compiled import DEFAULT_REGISTER_RATES
from ...rating.tariffs import TariffCatalogue
from ..periods import Calendar
from ..settings import Pool

BY = ("day", "month", "year", "range")


@dataclass(frozen=True)
class ReportScope:
    """The site a report is about, with what pricing its energy needs."""

    site: Site
    models: Mapping[str, DeviceModel]
    catalogue: TariffCatalogue
    calendar: Calendar
    register_rates: Mapping[str, Sequence[str]] = field(default_factory=dict)
    default_tariffs: Mapping[str, str] = field(default_factory=dict)
    #: The common-area pools: their main and public meters are marked in energy reports.
    pools: Sequence[Pool] = ()

    @property
    def tz(self) -> Any:
        return self.site.info.tz

    def midnight(self, day: dt.date) -> dt.datetime:
        """Site-local midnight starting `day`, in UTC."""
        return dt.datetime.combine(day, dt.time(), tzinfo=self.tz).astimezone(dt.UTC)

    def tariff_for(self, kind: str, tariff_id: str | None) -> str | None:
        return tariff_for(self.catalogue, self.default_tariffs, kind, tariff_id)

    def meters(self, commodity: str) -> list[str]:
        """The site's electricity (or water) meters, sorted."""
        kind = MeterKind.WATER if commodity == "water" else MeterKind.ELECTRIC
        out = []
        for d in self.site.devices.values():
            model = self.models.get(d.model)
            if model is not None and model.kind is kind:
                out.append(d.id)
        return sorted(out)


def energy(units: int) -> Decimal:
    """0.001 kWh or m³ as exact Decimal kWh or m³ with three decimals (display)."""
    return Decimal(int(units)).scaleb(-3)


def parse_day(text: str, field: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise RequestError(field, f"expected a date such as 2025-03-01, got {text!r}") from None


def buckets(start: dt.date, end: dt.date, by: str) -> list[tuple[str, dt.date]]:
    """(label, first day) of each bucket of [start, end)."""
    if by not in BY:
        raise RequestError("by", f"expected one of {', '.join(BY)}; got {by!r}")
    if end <= start:
        raise RequestError("to", f"the span must end after it starts ({start} → {end})")
    if by == "range":
        return [(f"{start}..{end - dt.timedelta(days=1)}", start)]
    out = []
    day = start
    while day < end:
        if by == "day":
            out.append((day.isoformat(), day))
            day += dt.timedelta(days=1)
        elif by == "month":
            out.append((f"{day:%Y-%m}", day))
            day = (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
        else:
            out.append((f"{day:%Y}", day))
            day = dt.date(day.year + 1, 1, 1)
    return out


def bucket_of(column: Any, bounds: Sequence[dt.datetime]) -> Any:
    """SQL: the index of the bucket [bounds[i], bounds[i+1]) `column` falls in (-1: none)."""
    return sa.case(
        *[(column < bounds[i + 1], sa.literal(i)) for i in range(len(bounds) - 1)],
        else_=sa.literal(-1),
    )


def usage_days(conn: Connection, meters: Sequence[str], start: dt.date, end: dt.date) -> list[Any]:
    """(meter, day, energy, by_rate) of `meters` on the days of [start, end)."""
    u = t.meter_usage_day
    return list(
        conn.execute(
            sa.select(u.c.meter_id, u.c.day, u.c.energy, u.c.by_rate).where(
                among(conn, u.c.meter_id, meters),
                u.c.day >= start.isoformat(),
                u.c.day < end.isoformat(),
            )
        ).all()
    )


def unbilled_notes(conn: Connection, meters: Sequence[str]) -> list[str]:
    """A note counting the meters of open accounts that are not billed now (billing
    alarms), each with why: their consumption is missing from the money columns."""
    pm = t.prepay_meter
    rows = conn.execute(
        sa.select(pm.c.meter_id, pm.c.billing_problem, pm.c.billing_problem_at)
        .where(pm.c.billing_problem.is_not(None), among(conn, pm.c.meter_id, meters))
        .order_by(pm.c.meter_id)
    ).all()
    if not rows:
        return []
    listed = "; ".join(
        f"{r.meter_id} since {r.billing_problem_at:%Y-%m-%d %H:%M} UTC: {r.billing_problem}"
        for r in rows
    )
    return [f"NOT BILLED: {len(rows)} meter(s) of open accounts — {listed}"]


def rate_order(names: set[str]) -> list[str]:
    """Rate names in register order (尖/峰/平/谷 first), then the others sorted."""
    known = [r for r in DEFAULT_REGISTER_RATES if r in names]
    return known + sorted(names - set(known) - {"total"})
