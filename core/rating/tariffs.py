"""Tariffs: the price plans of a site (the model; `tariff_reading` reads them from the site
file's `[tariffs]` catalogue).

A tariff (`[tariffs.<id>]`, referenced by accounts through its id) prices one commodity
(electricity in kWh, water in m³) with one of these structures (domain.md §2):

- single rate: `price = "0.5680"`;
- time of use (分时): `rates` (尖/峰/平/谷 = sharp/peak/flat/valley, any names) and a day
  table `periods` that covers the 24 h exactly; more day tables in `day_tables.<name>` are
  chosen by `seasons` (date ranges, every year);
- tiered (阶梯): `[tiers]` with a monthly or annual cycle, its settlement instant, the
  thresholds ("≤ threshold stays in the lower tier") and either tier `prices` (pure tiered,
  e.g. water), tier `adders` on top of the rate (M1, additive, State Grid) or per-rate
  `period_adders` (M2, Shanghai style).

`[[tariffs.<id>.versions]]` entries change a tariff from their `effective_from` date on
(site-local midnight): each version is the tariff with the keys it gives replaced.

Prices are `Decimal` (up to 6 decimal places; quote them, e.g. `"0.6170"`). Energy
thresholds are `Decimal` kWh or m³ (up to 3 decimal places). Everything calendar-shaped is
evaluated in the site's time zone.
"""

from __future__ import annotations

import bisect
import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

#: Prices may have at most this many decimal places (1e-6 CNY per kWh or m³).
PRICE_PLACES = 6
#: Energy thresholds may have at most this many decimal places (Wh, litres).
ENERGY_PLACES = 3
#: The highest price (and tier adder) per kWh or m³ a tariff may set, in the site currency:
#: far above any real tariff, low enough that a year of usage × price stays exact in rating.
MAX_PRICE = Decimal(1000)
#: The highest tier threshold, kWh or m³ per cycle.
MAX_THRESHOLD = Decimal(100_000_000)
MINUTES_PER_DAY = 24 * 60
#: The rate name a single-rate tariff prices its energy at.
SINGLE_RATE = "all"
#: The name of the day table given by a tariff's own `periods` key.
DEFAULT_DAY_TABLE = "default"


class Commodity(enum.StrEnum):
    ELECTRICITY = "electricity"
    WATER = "water"

    @property
    def unit(self) -> str:
        return "kWh" if self is Commodity.ELECTRICITY else "m³"


class TierCycle(enum.StrEnum):
    MONTHLY = "monthly"
    ANNUAL = "annual"


class TierMethod(enum.StrEnum):
    #: Pure tiered: each tier has its own price; no time of use (water, simple electricity).
    PRICES = "prices"
    #: M1 additive (State Grid local meter): unit price = rate + adder[tier].
    M1 = "M1"
    #: M2 per-period adders (Shanghai): unit price = rate + adder[tier][rate].
    M2 = "M2"


class Proration(enum.StrEnum):
    """How thresholds shrink (or grow) for a partial cycle (move-in mid-cycle)."""

    #: Keep whole thresholds.
    NONE = "none"
    #: Threshold × days / days in the cycle.
    ACTUAL_DAYS = "actual_days"
    #: Threshold × days / 30 (monthly cycles only), e.g. 100 kWh over 45 days → 150 kWh.
    DAYS_30 = "days_30"


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """Minutes [start, end) of the local day priced at `rate` (never wrapping midnight)."""

    start: int
    end: int
    rate: str

    def __str__(self) -> str:
        return f"{hhmm(self.start)}–{hhmm(self.end)} {self.rate}"


@dataclass(frozen=True, slots=True)
class DayTable:
    name: str
    #: Sorted, non-overlapping, covering 00:00–24:00 exactly; a period given as 23:00–07:00
    #: appears as two pieces.
    periods: tuple[Period, ...]
    #: The entries as written in the site file (for error messages), in file order.
    given: tuple[Period, ...] = field(default=(), compare=False, repr=False)

    def rate_at(self, minute: int) -> str:
        starts = [p.start for p in self.periods]
        return self.periods[bisect.bisect_right(starts, minute) - 1].rate

    def minutes_by_rate(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.periods:
            out[p.rate] = out.get(p.rate, 0) + p.end - p.start
        return out


@dataclass(frozen=True, slots=True)
class Season:
    """Days `start`..`end` (month, day), inclusive, every year; may wrap the new year."""

    start: tuple[int, int]
    end: tuple[int, int]
    day_table: str

    def contains(self, day: dt.date) -> bool:
        md = (day.month, day.day)
        if self.end == (2, 28) and md == (2, 29):
            md = (2, 28)  # a season that ends on 28 Feb also covers a leap day
        if self.start <= self.end:
            return self.start <= md <= self.end
        return md >= self.start or md <= self.end

    def __str__(self) -> str:
        return f"{self.start[0]:02d}-{self.start[1]:02d}–{self.end[0]:02d}-{self.end[1]:02d}"


@dataclass(frozen=True, slots=True)
class Tiers:
    cycle: TierCycle
    #: Settlement instant: month (annual cycles), day 1–28, hour 0–23, site-local.
    settlement_month: int
    settlement_day: int
    settlement_hour: int
    #: Upper bounds of tiers 1..n-1 in kWh or m³, strictly increasing.
    thresholds: tuple[Decimal, ...]
    method: TierMethod
    #: PRICES: price per tier; M1: adder per tier; M2: unused (see period_adders).
    amounts: tuple[Decimal, ...] = ()
    #: M2: per tier, adder per rate name (a rate not named adds 0).
    period_adders: tuple[Mapping[str, Decimal], ...] = ()
    proration: Proration = Proration.ACTUAL_DAYS

    @property
    def count(self) -> int:
        return len(self.thresholds) + 1

    def adder(self, tier: int, rate: str) -> Decimal:
        """What tier `tier` (0-based) adds to `rate` (0 below the first threshold, M1/M2)."""
        if self.method is TierMethod.M2:
            return self.period_adders[tier].get(rate, Decimal(0))
        if self.method is TierMethod.M1:
            return self.amounts[tier]
        raise ValueError("a PRICES tier table has prices, not adders")

    # -- the cycle calendar ---------------------------------------------------------------
    def settlement(self, year: int, month: int, tz: ZoneInfo) -> dt.datetime:
        """The settlement instant of the cycle that starts in `year`/`month` (UTC-aware)."""
        if self.cycle is TierCycle.ANNUAL:
            month = self.settlement_month
        local = dt.datetime(year, month, self.settlement_day, self.settlement_hour, tzinfo=tz)
        return local.astimezone(dt.UTC)

    def cycle_bounds(self, instant: dt.datetime, tz: ZoneInfo) -> tuple[dt.datetime, dt.datetime]:
        """[start, end) of the cycle holding `instant`; an instant exactly on a settlement
        starts the new cycle (an interval *ending* there belongs to the old one)."""
        local = instant.astimezone(tz)
        if self.cycle is TierCycle.ANNUAL:
            start = self.settlement(local.year, self.settlement_month, tz)
            if instant < start:
                start = self.settlement(local.year - 1, self.settlement_month, tz)
            end = self.settlement(start.astimezone(tz).year + 1, self.settlement_month, tz)
            return start, end
        y, m = local.year, local.month
        start = self.settlement(y, m, tz)
        if instant < start:
            y, m = (y - 1, 12) if m == 1 else (y, m - 1)
            start = self.settlement(y, m, tz)
        ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
        return start, self.settlement(ny, nm, tz)

    def proration_factor(
        self, opened: dt.datetime, cycle: tuple[dt.datetime, dt.datetime], tz: ZoneInfo
    ) -> Fraction:
        """Factor for the thresholds of `cycle` when the account opened at `opened` inside
        it (1 when it opened before the cycle or proration is off)."""
        start, end = cycle
        if self.proration is Proration.NONE or opened <= start or opened >= end:
            return Fraction(1)
        days = (end.astimezone(tz).date() - opened.astimezone(tz).date()).days
        if self.proration is Proration.DAYS_30:
            return Fraction(days, 30)
        total = (end.astimezone(tz).date() - start.astimezone(tz).date()).days
        return Fraction(days, total)


@dataclass(frozen=True, slots=True)
class TariffVersion:
    effective_from: dt.date
    #: Rate name → price per unit; empty for a pure tiered tariff.
    rates: Mapping[str, Decimal]
    #: True when the rates are time-of-use rates attributed from the meter's T registers.
    time_of_use: bool
    day_tables: Mapping[str, DayTable] = field(default_factory=dict)
    seasons: tuple[Season, ...] = ()
    tiers: Tiers | None = None
    #: Rate names for the meter's registers T1..T4 when this tariff overrides the model's
    #: mapping (`registers = ["peak", "peak", "peak", "valley"]`).
    registers: tuple[str, ...] | None = None

    @property
    def structure(self) -> str:
        parts = []
        if self.time_of_use:
            parts.append(f"time of use ({', '.join(self.rates)})")
        elif self.rates:
            parts.append("single rate")
        if self.tiers is not None:
            t = self.tiers
            how = {
                TierMethod.PRICES: "tier prices",
                TierMethod.M1: "M1 additive tier adders",
                TierMethod.M2: "M2 per-period tier adders",
            }[t.method]
            parts.append(f"{t.count} {t.cycle} tiers, {how}")
        return " + ".join(parts)

    def day_table_on(self, day: dt.date) -> DayTable | None:
        for season in self.seasons:
            if season.contains(day):
                return self.day_tables[season.day_table]
        return self.day_tables.get(DEFAULT_DAY_TABLE)

    def rate_names(self) -> tuple[str, ...]:
        return tuple(self.rates)


@dataclass(frozen=True, slots=True)
class Tariff:
    id: str
    name: str
    commodity: Commodity
    #: Sorted by effective_from; the first applies from the beginning of time.
    versions: tuple[TariffVersion, ...]

    @property
    def unit(self) -> str:
        return self.commodity.unit

    def version_on(self, day: dt.date) -> TariffVersion:
        starts = [v.effective_from for v in self.versions]
        return self.versions[max(bisect.bisect_right(starts, day) - 1, 0)]

    def version_at(self, instant: dt.datetime, tz: ZoneInfo) -> TariffVersion:
        return self.version_on(instant.astimezone(tz).date())

    def version_starts(self, tz: ZoneInfo) -> list[dt.datetime]:
        """UTC instants at which versions 1.. take effect (site-local midnight)."""
        return [
            dt.datetime.combine(v.effective_from, dt.time(), tzinfo=tz).astimezone(dt.UTC)
            for v in self.versions[1:]
        ]

    def rate_at(self, instant: dt.datetime, tz: ZoneInfo) -> str | None:
        """The rate the clock says applies at `instant` (display and meter programming;
        billing attributes energy from the meter's own T registers instead)."""
        version = self.version_at(instant, tz)
        if not version.rates:
            return None
        if not version.time_of_use:
            return SINGLE_RATE
        local = instant.astimezone(tz)
        table = version.day_table_on(local.date())
        assert table is not None
        return table.rate_at(local.hour * 60 + local.minute)


@dataclass(frozen=True, slots=True)
class TariffCatalogue:
    tariffs: Mapping[str, Tariff]
    timezone: str = "Asia/Shanghai"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def get(self, tariff_id: str) -> Tariff:
        try:
            return self.tariffs[tariff_id]
        except KeyError:
            known = ", ".join(sorted(self.tariffs)) or "none defined"
            raise KeyError(f"unknown tariff {tariff_id!r} (defined: {known})") from None

    def __contains__(self, tariff_id: object) -> bool:
        return tariff_id in self.tariffs

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.tariffs.values())

    def __len__(self) -> int:
        return len(self.tariffs)


def parse_hhmm(value: str) -> int | None:
    parts = value.strip().split(":")
    if len(parts) != 2 or not all(p.isdigit() and len(p) == 2 for p in parts):
        return None
    h, m = int(parts[0]), int(parts[1])
    if m > 59 or h > 24 or (h == 24 and m):
        return None
    return h * 60 + m


def hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
