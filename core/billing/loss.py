"""Loss and tamper analysis per building (make theft visible).

Utilities move customers caught stealing electricity to prepaid; a bypass (a cable around
the meter) shows as **a room whose meter stops counting while its supply stays on, at the
time the building's loss grows**. Both come from the registers captured at each day's
freeze hour (`readings`), so main meter and sub-meters are compared at the same instants:

- `series(pool, start, end)` — per day: main, Σ sub, Σ public, loss and loss rate;
- `suspects(pool, end, days)` — rooms of the pool whose consumption in the last `days`
  days fell to (almost) nothing from what it was in the `days` before, while their supply
  was on (no confirmed cut, account open), when the pool's loss grew over the same time.
  Each comes with its evidence and a score: how much of the loss growth the room's drop
  would explain (1.0 = all of it).

A suspect is a lead for an inspection, not a verdict: vacancies, holidays and a broken
meter look alike at first sight.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config.site import Site
from ..db import schema as t
from ..ledger import RequestError
from ..model import DeviceModel
from .export import Chart, Table
from .periods import Calendar
from .readings import Reading, readings_between
from .reports.common import energy
from .settings import BillingSettings, Pool

#: A room counts as "not consuming" below this share of its earlier daily consumption.
DROP_SHARE = Fraction(1, 10)
#: ... when it used at least this much per day before (0.001 kWh): 0.5 kWh/day.
MIN_BASELINE = 500
#: The pool's loss must have grown by at least this many points of the main meter.
MIN_GROWTH = Fraction(1, 100)


@dataclass(frozen=True, slots=True)
class DayLoss:
    day: dt.date
    main: int
    subs: int
    public: int
    #: Meters without two readings that day (the day is not complete).
    missing: tuple[str, ...] = ()

    @property
    def loss(self) -> int:
        return self.main - self.subs - self.public

    @property
    def rate(self) -> Fraction | None:
        return Fraction(self.loss, self.main) if self.main > 0 and not self.missing else None


@dataclass(frozen=True, slots=True)
class Suspect:
    pool: str
    room: str
    meters: tuple[str, ...]
    account: str | None
    #: Daily consumption before and in the window (0.001 units per day).
    before_per_day: Fraction
    recent_per_day: Fraction
    #: The pool's loss rate before and in the window.
    loss_before: Fraction
    loss_recent: Fraction
    #: How much of the loss growth (per day) the room's drop would explain, 0..1.
    score: Fraction
    evidence: str


def _pct(x: Fraction | None) -> str:
    if x is None:
        return ""
    return f"{Decimal(x.numerator * 100) / Decimal(x.denominator):.2f}"


class LossAnalysis:
    def __init__(
        self, site: Site, models: Mapping[str, DeviceModel], settings: BillingSettings
    ) -> None:
        self.site = site
        self.models = models
        self.settings = settings
        self.calendar = Calendar(site.info.tz, settings.freeze_day, settings.freeze_hour)

    def pools(self, building: str | None = None) -> list[Pool]:
        pools = [
            p for p in self.settings.pools.values() if building is None or p.building == building
        ]
        if building is not None and not pools:
            raise RequestError(
                "building",
                f"no common-area pool for building {building!r} (pools: "
                f"{', '.join(sorted(self.settings.pools)) or 'none'})",
            )
        return pools

    def _daily(
        self, conn: Connection, pool: Pool, start: dt.date, end: dt.date
    ) -> tuple[list[DayLoss], dict[str, dict[dt.date, int]]]:
        readings = readings_between(
            conn, pool.meters, self.calendar.capture_on(start), self.calendar.capture_on(end)
        )
        per_meter: dict[str, dict[dt.date, int]] = {}
        for meter, rs in readings.items():
            per_meter[meter] = _per_day(rs, self.site.info.tz)
        days = []
        day = start
        while day < end:
            missing = tuple(m for m in pool.meters if day not in per_meter.get(m, {}))
            get = lambda m, d=day: per_meter.get(m, {}).get(d, 0)  # noqa: E731
            days.append(
                DayLoss(
                    day,
                    get(pool.main),
                    sum(get(m) for m in pool.subs),
                    sum(get(m) for m in pool.public),
                    missing,
                )
            )
            day += dt.timedelta(days=1)
        return days, per_meter

    def series(self, conn: Connection, pool: Pool, start: dt.date, end: dt.date) -> list[DayLoss]:
        return self._daily(conn, pool, start, end)[0]

    def series_table(
        self, conn: Connection, start: dt.date, end: dt.date, building: str | None = None
    ) -> Table:
        table = Table(
            f"Loss per building, {start} to {end - dt.timedelta(days=1)}",
            [
                "pool",
                "building",
                "day",
                "main",
                "subs",
                "public",
                "loss",
                "loss %",
                "missing readings",
            ],
            chart=Chart("line", 2, (7,), "Loss rate %", "%"),
            sheet="Loss",
            notes=[
                "Energy in kWh (or m³) between the day's capture instants; "
                "loss = main − subs − public."
            ],
        )
        for pool in self.pools(building):
            for d in self.series(conn, pool, start, end):
                table.rows.append(
                    [
                        pool.id,
                        pool.building or "",
                        d.day.isoformat(),
                        energy(d.main),
                        energy(d.subs),
                        energy(d.public),
                        energy(d.loss),
                        _pct(d.rate),
                        ", ".join(d.missing[:5]) + (" ..." if len(d.missing) > 5 else ""),
                    ]
                )
        return table

    def suspects(
        self, conn: Connection, end: dt.date, days: int = 14, building: str | None = None
    ) -> list[Suspect]:
        """Rooms that look bypassed in the `days` days before `end` (see the module)."""
        if days < 2:
            raise RequestError("days", f"expected at least 2 days, got {days}")
        start = end - dt.timedelta(days=2 * days)
        middle = end - dt.timedelta(days=days)
        out = []
        cut = self._cut_meters(
            conn, self.calendar.capture_on(middle), self.calendar.capture_on(end)
        )
        accounts = self._accounts(conn)
        for pool in self.pools(building):
            daily, per_meter = self._daily(conn, pool, start, end)
            before = [d for d in daily if d.day < middle and d.rate is not None]
            recent = [d for d in daily if d.day >= middle and d.rate is not None]
            if not before or not recent:
                continue
            loss_before = Fraction(sum(d.loss for d in before), max(1, sum(d.main for d in before)))
            loss_recent = Fraction(sum(d.loss for d in recent), max(1, sum(d.main for d in recent)))
            growth = loss_recent - loss_before
            if growth < MIN_GROWTH:
                continue
            growth_per_day = Fraction(sum(d.loss for d in recent), len(recent)) - Fraction(
                sum(d.loss for d in before), len(before)
            )
            rooms: dict[str, list[str]] = {}
            for meter in pool.subs:
                room = self.site.devices[meter].room
                assert room is not None
                rooms.setdefault(room, []).append(meter)
            for room, meters in sorted(rooms.items()):
                if any(m in cut for m in meters):
                    continue  # supply was cut: no consumption is expected
                account = next((accounts[m] for m in meters if m in accounts), None)
                if account is None:
                    continue  # vacant: nobody to consume
                b = Fraction(_use(per_meter, meters, before), len(before))
                r = Fraction(_use(per_meter, meters, recent), len(recent))
                if b < MIN_BASELINE or r > b * DROP_SHARE:
                    continue
                drop = b - r
                score = (
                    min(Fraction(1), drop / growth_per_day) if growth_per_day > 0 else Fraction(0)
                )
                out.append(
                    Suspect(
                        pool.id,
                        room,
                        tuple(meters),
                        account,
                        b,
                        r,
                        loss_before,
                        loss_recent,
                        score,
                        (
                            f"{energy(round(b))} → {energy(round(r))} {self._unit(pool)}/day with "
                            f"supply on, while the loss of pool {pool.id} went "
                            f"{_pct(loss_before)}% → {_pct(loss_recent)}% "
                            f"(+{energy(round(growth_per_day))} {self._unit(pool)}/day)"
                        ),
                    )
                )
        out.sort(key=lambda s: (-s.score, s.pool, s.room))
        return out

    def suspects_table(
        self, conn: Connection, end: dt.date, days: int = 14, building: str | None = None
    ) -> Table:
        table = Table(
            f"Rooms to inspect (possible bypass), {days} days to {end - dt.timedelta(days=1)}",
            [
                "pool",
                "room",
                "account",
                "meters",
                "before /day",
                "recent /day",
                "loss before %",
                "loss recent %",
                "explains",
                "evidence",
            ],
            sheet="Suspects",
        )
        for s in self.suspects(conn, end, days, building):
            table.rows.append(
                [
                    s.pool,
                    s.room,
                    s.account or "",
                    " ".join(s.meters),
                    energy(round(s.before_per_day)),
                    energy(round(s.recent_per_day)),
                    _pct(s.loss_before),
                    _pct(s.loss_recent),
                    f"{_pct(s.score)}%",
                    s.evidence,
                ]
            )
        return table

    def _unit(self, pool: Pool) -> str:
        return "m³" if pool.commodity == "water" else "kWh"

    def _accounts(self, conn: Connection) -> dict[str, str]:
        am, a = t.account_meter, t.account
        return dict(
            conn.execute(
                sa.select(am.c.meter_id, am.c.account_id)
                .join(a, a.c.id == am.c.account_id)
                .where(am.c.detached_at.is_(None), a.c.state == "OPEN")
            ).all()
        )

    def _cut_meters(self, conn: Connection, start: dt.datetime, end: dt.datetime) -> set[str]:
        """Meters whose supply was cut at some time in [start, end): a confirmed cut in the
        window, or a confirmed cut before it not yet restored."""
        mc = t.meter_command
        rows = conn.execute(
            sa.select(mc.c.meter_id, mc.c.kind, mc.c.finished_at)
            .where(
                mc.c.state == "CONFIRMED",
                mc.c.kind.in_(
                    ["TRIP", "CLOSE", "ALLOW_CLOSE", "RELEASE", "VALVE_CLOSE", "VALVE_OPEN"]
                ),
                mc.c.finished_at < end,
            )
            .order_by(mc.c.finished_at, mc.c.id)
        ).all()
        last: dict[str, str] = {}
        out = set()
        for meter, kind, at in rows:
            if at >= start and kind in ("TRIP", "VALVE_CLOSE"):
                out.add(meter)
            last[meter] = kind
        out |= {m for m, k in last.items() if k in ("TRIP", "VALVE_CLOSE")}
        return out


def _use(
    per_meter: Mapping[str, Mapping[dt.date, int]], meters: Sequence[str], days: Sequence[DayLoss]
) -> int:
    return sum(per_meter.get(m, {}).get(d.day, 0) for m in meters for d in days)


def _per_day(readings: Sequence[Reading], tz: dt.tzinfo) -> dict[dt.date, int]:
    out = {}
    for a, b in itertools.pairwise(readings):
        if b.at - a.at == dt.timedelta(days=1) and b.energy >= a.energy:
            out[a.at.astimezone(tz).date()] = b.energy - a.energy
    return out
