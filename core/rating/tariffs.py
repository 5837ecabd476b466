"""Tariffs: the price plans of a site, read from the site file's `[tariffs]` catalogue.

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
evaluated in the site's time zone. Validation collects every problem with the exact entry
(`tariffs.residential.periods[2]: overlaps periods[1] (08:00–11:30) ...`).
"""

from __future__ import annotations

import bisect
import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from ..config.reader import ID_PATTERN, NUMBER_LIMIT, TableReader, describe
from ..errors import ConfigError, FieldError
from ..numbers import NumberRefused, read_decimal

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


# -- loading --------------------------------------------------------------------------------


def load_tariffs(site: Any) -> TariffCatalogue:
    """The `[tariffs]` catalogue of a loaded `Site`; `ConfigError` naming every bad entry."""
    errors: list[FieldError] = []
    catalogue = parse_tariffs(site.sections.get("tariffs", {}), errors, timezone=site.info.timezone)
    if errors:
        raise ConfigError(str(site.path or "site"), errors)
    return catalogue


def check_tariffs(site: Any) -> list[FieldError]:
    """Every problem of the `[tariffs]` section (empty when it is valid)."""
    errors: list[FieldError] = []
    parse_tariffs(site.sections.get("tariffs", {}), errors, timezone=site.info.timezone)
    return errors


def parse_tariffs(
    data: Any, errors: list[FieldError], timezone: str = "Asia/Shanghai"
) -> TariffCatalogue:
    root = TableReader(data, "tariffs", errors)
    tariffs: dict[str, Tariff] = {}
    for tariff_id, value in root.data.items():
        root._seen.add(tariff_id)
        if not ID_PATTERN.match(tariff_id):
            root.error("id must be letters, digits, '_', '-', '.' (at most 64)", tariff_id)
            continue
        tariff = _read_tariff(tariff_id, TableReader(value, root.at(tariff_id), errors))
        if tariff is not None:
            tariffs[tariff_id] = tariff
    return TariffCatalogue(tariffs, timezone)


_COMPONENTS = ("price", "rates", "periods", "day_tables", "seasons", "tiers", "registers")


@dataclass
class _Parts:
    """The components one table (the tariff or a version) gives, with where they were given."""

    values: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)


def _read_tariff(tariff_id: str, r: TableReader) -> Tariff | None:
    before = len(r.errors)
    name = r.str("name", tariff_id)
    commodity = r.str("commodity", "electricity", choices=[c.value for c in Commodity])
    base_from = _read_date(r, "effective_from", dt.date.min)
    base = _read_parts(r, commodity)
    versions_raw = r.raw("versions", [])
    r.finish()
    if not isinstance(versions_raw, list):
        r.error("expected a list of version tables ([[tariffs.<id>.versions]])", "versions")
        versions_raw = []
    if commodity is None:
        return None
    unit = Commodity(commodity).unit

    built: list[tuple[dt.date, str, TariffVersion | None]] = []
    built.append((base_from or dt.date.min, r.path, _build_version(base_from, base, r, unit)))
    for i, raw in enumerate(versions_raw):
        vr = TableReader(raw, f"{r.path}.versions[{i}]", r.errors)
        effective = _read_date(vr, "effective_from")
        own = _read_parts(vr, commodity)
        vr.finish()
        merged = _Parts(dict(base.values), dict(base.paths))
        merged.values.update(own.values)
        merged.paths.update(own.paths)
        if "price" in own.values:
            merged.values.pop("rates", None)
            for key in ("periods", "day_tables", "seasons", "registers"):
                if key not in own.values:
                    merged.values.pop(key, None)
                    merged.paths.pop(key, None)
        if "rates" in own.values:
            merged.values.pop("price", None)
        if effective is None:
            continue
        if effective <= (base_from or dt.date.min):
            vr.error(
                f"must be after the tariff's own effective_from ({base_from}); "
                "a version changes the tariff from a later date",
                "effective_from",
            )
        for j, (other, _, _) in enumerate(built[1:]):
            if other == effective:
                vr.error(
                    f"same date as versions[{j}] ({other}); each version needs its own "
                    "effective_from — merge them or change one date",
                    "effective_from",
                )
                break
        built.append((effective, vr.path, _build_version(effective, merged, vr, unit)))
    if len(r.errors) > before or any(v is None for _, _, v in built):
        return None
    _check_versions_agree(built, r)
    if len(r.errors) > before:
        return None
    versions = tuple(sorted((v for _, _, v in built if v is not None), key=_version_key))
    return Tariff(tariff_id, name or tariff_id, Commodity(commodity), versions)


def _check_versions_agree(
    built: list[tuple[dt.date, str, TariffVersion | None]], r: TableReader
) -> None:
    """A tariff keeps its structure (time of use or not) and its tier cycle across versions:
    a tier cycle cannot change in the middle of one."""
    _, _, base = built[0]
    assert base is not None
    cycles = {
        (t.cycle, t.settlement_month, t.settlement_day, t.settlement_hour, t.proration)
        for _, _, v in built
        if v is not None and (t := v.tiers) is not None
    }
    for _, path, v in built[1:]:
        assert v is not None
        if v.time_of_use != base.time_of_use:
            r.errors.append(
                FieldError(
                    path,
                    "switches between time of use and a single rate; define a new tariff and "
                    "move the accounts to it instead",
                )
            )
    if len(cycles) > 1:
        r.errors.append(
            FieldError(
                f"{r.path}.versions",
                "versions change the tier cycle (cycle, settlement or proration); a tariff "
                "keeps one cycle — define a new tariff for the new cycle",
            )
        )


def _version_key(v: TariffVersion) -> dt.date:
    return v.effective_from


def _read_parts(r: TableReader, commodity: str | None) -> _Parts:
    parts = _Parts()
    if r.has("price"):
        price = _read_decimal(r, "price", PRICE_PLACES, low=Decimal(0), high=MAX_PRICE)
        parts.paths["price"] = r.at("price")
        if price is not None:
            parts.values["price"] = price
    else:
        r._seen.add("price")
    if r.has("rates"):
        rates_r = r.table("rates")
        rates: dict[str, Decimal] = {}
        for rate in rates_r.data:
            if not ID_PATTERN.match(rate):
                rates_r.error("rate names are letters, digits, '_', '-', '.'", rate)
                continue
            value = _read_decimal(rates_r, rate, PRICE_PLACES, low=Decimal(0), high=MAX_PRICE)
            if value is not None:
                rates[rate] = value
        if not rates_r.data:
            r.error('expected at least one rate (e.g. { peak = "0.6170" })', "rates")
        parts.values["rates"] = rates
        parts.paths["rates"] = r.at("rates")
    else:
        r._seen.add("rates")
    if r.has("periods"):
        parts.values["periods"] = _read_periods(r, "periods", DEFAULT_DAY_TABLE)
        parts.paths["periods"] = r.at("periods")
    else:
        r._seen.add("periods")
    if r.has("day_tables"):
        tables: dict[str, tuple[DayTable | None, str]] = {}
        for name, tr in r.entries("day_tables"):
            if name == DEFAULT_DAY_TABLE:
                tr.error(f"{name!r} is the name of the tariff's own `periods`; pick another")
                continue
            tables[name] = (_read_periods(tr, "periods", name), tr.at("periods"))
            tr.finish()
        parts.values["day_tables"] = tables
        parts.paths["day_tables"] = r.at("day_tables")
    else:
        r._seen.add("day_tables")
    if r.has("seasons"):
        parts.values["seasons"] = _read_seasons(r)
        parts.paths["seasons"] = r.at("seasons")
    else:
        r._seen.add("seasons")
    if r.has("tiers"):
        parts.values["tiers"] = _read_tiers(r.table("tiers"), commodity)
        parts.paths["tiers"] = r.at("tiers")
    else:
        r._seen.add("tiers")
    if r.has("registers"):
        names = r.str_list("registers")
        if names is not None and not 1 <= len(names) <= 8:
            r.error(
                f"expected the rate names of T1..Tn (1 to 8 names), got {len(names)}", "registers"
            )
            names = None
        if names is not None:
            parts.values["registers"] = tuple(names)
        parts.paths["registers"] = r.at("registers")
    else:
        r._seen.add("registers")
    return parts


def _build_version(
    effective: dt.date | None, parts: _Parts, r: TableReader, unit: str
) -> TariffVersion | None:
    """Cross-check the components of one version and assemble it."""
    v, paths = parts.values, parts.paths
    errors_before = len(r.errors)

    def err(component: str, message: str) -> None:
        r.errors.append(FieldError(paths.get(component, r.path), message))

    tiers: Tiers | None = v.get("tiers")
    if "tiers" in paths and tiers is None:
        return None  # its own errors are recorded
    rates: dict[str, Decimal]
    if "price" in v and "rates" in v:
        err("rates", "give either `price` (single rate) or `rates` (time of use), not both")
        return None
    if "price" in v:
        rates, tou = {SINGLE_RATE: v["price"]}, False
    elif "rates" in v:
        rates, tou = dict(v["rates"]), True
    else:
        rates, tou = {}, False
        if "price" in paths or "rates" in paths:
            return None
        if tiers is None or tiers.method is not TierMethod.PRICES:
            r.error(
                "a tariff needs `price` (single rate), `rates` with `periods` (time of use) "
                "or `[tiers]` with `prices` (pure tiered)"
            )
            return None
    if tiers is not None:
        if tiers.method is TierMethod.PRICES and rates:
            err(
                "tiers",
                "tier `prices` make a pure tiered tariff; with a `price` or `rates` give the "
                "tier `adders` (M1) or `period_adders` (M2) instead",
            )
        if tiers.method is not TierMethod.PRICES and not rates:
            err("tiers", "tier adders need a base `price` or `rates` to add to")
        if tiers.method is TierMethod.M2:
            if not tou:
                err("tiers", "`period_adders` (M2) need time-of-use `rates`; use `adders` (M1)")
            for k, adders in enumerate(tiers.period_adders):
                for rate in adders:
                    if rate not in rates:
                        r.errors.append(
                            FieldError(
                                f"{paths['tiers']}.period_adders[{k}].{rate}",
                                f"unknown rate {rate!r} (rates: {', '.join(rates) or 'none'})",
                            )
                        )

    day_tables: dict[str, DayTable] = {}
    if tou:
        if "periods" not in v and "day_tables" not in v:
            err("rates", "time-of-use `rates` need a day table: add `periods` (24 h exactly)")
        if v.get("periods") is not None:
            day_tables[DEFAULT_DAY_TABLE] = v["periods"]
        for name, (table, _path) in (v.get("day_tables") or {}).items():
            if table is not None:
                day_tables[name] = table
        for name, table in day_tables.items():
            where = paths["periods"] if name == DEFAULT_DAY_TABLE else (v["day_tables"][name][1])
            for i, p in enumerate(table.given):
                if p.rate not in rates:
                    r.errors.append(
                        FieldError(
                            f"{where}[{i}].rate",
                            f"unknown rate {p.rate!r} (rates: {', '.join(rates)}); "
                            "add it to `rates` or use one of those",
                        )
                    )
    else:
        for component in ("periods", "day_tables", "seasons"):
            if component in v:
                err(
                    component,
                    "only a time-of-use tariff (`rates`) has day tables and seasons"
                    + ("; water is billed by volume, not by time" if unit == "m³" else ""),
                )
    if ("periods" in paths and v.get("periods") is None) or any(
        t is None for t, _ in (v.get("day_tables") or {}).values()
    ):
        return None

    seasons: tuple[Season, ...] = ()
    if tou and "seasons" in v:
        season_list = v["seasons"]
        if season_list is None:
            return None
        seasons = tuple(s for s, _ in season_list)
        for i, (season, _) in enumerate(season_list):
            if season.day_table not in day_tables:
                r.errors.append(
                    FieldError(
                        f"{paths['seasons']}[{i}].day_table",
                        f"unknown day table {season.day_table!r} (defined: "
                        f"{', '.join(day_tables) or 'none'})",
                    )
                )
        if DEFAULT_DAY_TABLE not in day_tables:
            uncovered = _uncovered_days(seasons)
            if uncovered:
                err(
                    "seasons",
                    f"days {uncovered} are in no season and there is no default `periods` "
                    "table; add a season for them or a `periods` table",
                )
    elif tou and DEFAULT_DAY_TABLE not in day_tables and day_tables:
        err("day_tables", "without `seasons` the tariff needs its own `periods` table")

    registers = v.get("registers")
    if registers is not None:
        for i, name in enumerate(registers):
            if name not in rates:
                r.errors.append(
                    FieldError(
                        f"{paths['registers']}[{i}]",
                        f"unknown rate {name!r} for register T{i + 1} "
                        f"(rates: {', '.join(rates) or 'none'})",
                    )
                )
        if not tou:
            err("registers", "only a time-of-use tariff maps registers T1..Tn to rates")
    if len(r.errors) > errors_before:
        return None
    return TariffVersion(
        effective_from=effective or dt.date.min,
        rates=rates,
        time_of_use=tou,
        day_tables=day_tables,
        seasons=seasons,
        tiers=tiers,
        registers=registers,
    )


# -- periods and seasons --------------------------------------------------------------------


def _read_periods(r: TableReader, key: str, name: str) -> DayTable | None:
    raw = r.raw(key, [])
    path = r.at(key)
    if not isinstance(raw, list) or not raw:
        r.error(
            'expected a list of { start = "HH:MM", end = "HH:MM", rate = "..." } covering 24 h',
            key,
        )
        return None
    given: list[tuple[int, int, str] | None] = []
    ok = True
    for i, entry in enumerate(raw):
        er = TableReader(entry, f"{path}[{i}]", r.errors)
        start = _read_hhmm(er, "start")
        end = _read_hhmm(er, "end")
        rate = er.str("rate")
        er.finish()
        if start is None or end is None or rate is None:
            given.append(None)
            ok = False
            continue
        if start == end:
            er.error(f"empty period {hhmm(start)}–{hhmm(end)}; for the whole day use 00:00–24:00")
            given.append(None)
            ok = False
            continue
        if start == MINUTES_PER_DAY:
            er.error("a period cannot start at 24:00", "start")
            given.append(None)
            ok = False
            continue
        given.append((start, end, rate))
    if not ok:
        return None
    pieces: list[tuple[int, int, int]] = []  # (start, end, index)
    for i, g in enumerate(given):
        assert g is not None
        start, end, _ = g
        mine = [(start, end)] if end > start else [(start, MINUTES_PER_DAY), (0, end)]
        mine = [(a, b) for a, b in mine if b > a]
        for a, b in mine:
            for pa, pb, j in pieces:
                if a < pb and pa < b and j != i:
                    ja, jb, _ = given[j]  # type: ignore[misc]
                    r.errors.append(
                        FieldError(
                            f"{path}[{i}]",
                            f"overlaps {key}[{j}] ({hhmm(ja)}–{hhmm(jb)}); periods must not "
                            f"overlap — end one where the next starts",
                        )
                    )
                    ok = False
                    break
            else:
                continue
            break
        pieces.extend((a, b, i) for a, b in mine)
    if not ok:
        return None
    pieces.sort()
    cursor = 0
    gaps = []
    for a, b, _ in pieces:
        if a > cursor:
            gaps.append((cursor, a))
        cursor = max(cursor, b)
    if cursor < MINUTES_PER_DAY:
        gaps.append((cursor, MINUTES_PER_DAY))
    for a, b in gaps:
        r.errors.append(
            FieldError(
                path,
                f"{hhmm(a)}–{hhmm(b)} is not covered by any period; a day table must cover "
                f"24 h exactly — add a period for it or extend a neighbour",
            )
        )
    if gaps:
        return None
    merged: list[Period] = []
    for a, b, i in pieces:
        rate = given[i][2]  # type: ignore[index]
        if merged and merged[-1].rate == rate and merged[-1].end == a:
            merged[-1] = Period(merged[-1].start, b, rate)
        else:
            merged.append(Period(a, b, rate))
    written = tuple(Period(g[0], g[1], g[2]) for g in given if g is not None)
    return DayTable(name, tuple(merged), written)


def _read_seasons(r: TableReader) -> list[tuple[Season, str]] | None:
    raw = r.raw("seasons", [])
    path = r.at("seasons")
    if not isinstance(raw, list) or not raw:
        r.error('expected a list of { from = "MM-DD", to = "MM-DD", day_table = "..." }', "seasons")
        return None
    out: list[tuple[Season, str]] = []
    ok = True
    for i, entry in enumerate(raw):
        sr = TableReader(entry, f"{path}[{i}]", r.errors)
        start = _read_month_day(sr, "from")
        end = _read_month_day(sr, "to")
        table = sr.str("day_table")
        sr.finish()
        if start is None or end is None or table is None:
            ok = False
            continue
        season = Season(start, end, table)
        for j, (other, _) in enumerate(out):
            if _seasons_overlap(season, other):
                sr.error(
                    f"overlaps seasons[{j}] ({other}); seasons must not overlap — end one "
                    "the day before the next starts"
                )
                ok = False
                break
        out.append((season, sr.path))
    return out if ok else None


_LEAP_DAYS = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(366)]


def _seasons_overlap(a: Season, b: Season) -> bool:
    return any(a.contains(d) and b.contains(d) for d in _LEAP_DAYS)


def _uncovered_days(seasons: Sequence[Season]) -> str:
    missing = [d for d in _LEAP_DAYS if not any(s.contains(d) for s in seasons)]
    if not missing:
        return ""
    spans: list[list[dt.date]] = []
    for d in missing:
        if spans and (d - spans[-1][1]).days == 1:
            spans[-1][1] = d
        else:
            spans.append([d, d])
    return ", ".join(f"{a:%m-%d}" if a == b else f"{a:%m-%d}–{b:%m-%d}" for a, b in spans)


# -- tiers ----------------------------------------------------------------------------------


def _read_tiers(r: TableReader, commodity: str | None) -> Tiers | None:
    before = len(r.errors)
    cycle = r.str("cycle", choices=[c.value for c in TierCycle])
    month = r.int("settlement_month", None, low=1, high=12)
    day = r.int("settlement_day", 1, low=1, high=28)
    hour = r.int("settlement_hour", 0, low=0, high=23)
    proration = r.str(
        "proration", Proration.ACTUAL_DAYS.value, choices=[p.value for p in Proration]
    )
    thresholds = _read_decimal_list(
        r, "thresholds", ENERGY_PLACES, low=Decimal(0), high=MAX_THRESHOLD, positive=True
    )
    given = [k for k in ("prices", "adders", "period_adders") if r.has(k)]
    r._seen.update(("prices", "adders", "period_adders"))
    if cycle == TierCycle.MONTHLY and month is not None:
        r.error(
            "a monthly cycle settles every month: give settlement_day/hour only", "settlement_month"
        )
    if cycle == TierCycle.ANNUAL and proration == Proration.DAYS_30:
        r.error("days_30 proration is for monthly cycles; use actual_days", "proration")
    if thresholds is not None:
        if not thresholds:
            r.error("expected at least one threshold", "thresholds")
        for i in range(1, len(thresholds)):
            if thresholds[i] <= thresholds[i - 1]:
                r.error(
                    f"must be greater than thresholds[{i - 1}] ({thresholds[i - 1]}); "
                    "thresholds must increase",
                    f"thresholds[{i}]",
                )
    if len(given) != 1:
        r.error(
            "give exactly one of `prices` (pure tiered), `adders` (M1, added to every rate) or "
            f"`period_adders` (M2, per rate){'; got ' + ', '.join(given) if given else ''}"
        )
        r.finish()
        return None
    need = None if thresholds is None else len(thresholds) + 1
    method = {"prices": TierMethod.PRICES, "adders": TierMethod.M1, "period_adders": TierMethod.M2}[
        given[0]
    ]
    amounts: tuple[Decimal, ...] = ()
    period_adders: tuple[Mapping[str, Decimal], ...] = ()
    if method is TierMethod.M2:
        raw = r.raw("period_adders")
        if not isinstance(raw, list):
            r.error("expected a list with one { rate = adder } table per tier", "period_adders")
        else:
            tables = []
            for k, entry in enumerate(raw):
                tr = TableReader(entry, r.at(f"period_adders[{k}]"), r.errors)
                table = {}
                for rate in tr.data:
                    # An adder only adds: a negative one could price energy below zero.
                    value = _read_decimal(tr, rate, PRICE_PLACES, low=Decimal(0), high=MAX_PRICE)
                    if value is not None:
                        table[rate] = value
                tables.append(table)
            period_adders = tuple(tables)
            if need is not None and len(tables) != need:
                r.error(
                    f"expected {need} tables (one per tier: {need - 1} thresholds make {need} "
                    f"tiers), got {len(tables)}",
                    "period_adders",
                )
    else:
        # Tier prices and M1 adders are never negative (an adder below zero could rate a
        # bill to less than nothing).
        values = _read_decimal_list(r, given[0], PRICE_PLACES, low=Decimal(0), high=MAX_PRICE)
        if values is not None:
            amounts = tuple(values)
            if need is not None and len(values) != need:
                r.error(
                    f"expected {need} values (one per tier: {need - 1} thresholds make {need} "
                    f"tiers), got {len(values)}",
                    given[0],
                )
    r.finish()
    if len(r.errors) > before or thresholds is None or cycle is None:
        return None
    return Tiers(
        cycle=TierCycle(cycle),
        settlement_month=month or 1,
        settlement_day=day,
        settlement_hour=hour,
        thresholds=tuple(thresholds),
        method=method,
        amounts=amounts,
        period_adders=period_adders,
        proration=Proration(proration),
    )


# -- scalar readers -------------------------------------------------------------------------


def to_decimal(value: Any) -> Decimal | None:
    """A TOML value or typed text as the Decimal a person reads in it (the strict form of
    `core.numbers`: no separators, exponents in text, NaN or infinities; floats by their
    shortest repr), within ±`NUMBER_LIMIT`; None when it is not one."""
    if not isinstance(value, str | int | float | Decimal):
        return None
    limit = Decimal(NUMBER_LIMIT)
    try:
        return read_decimal(value, places=None, low=-limit, high=limit)
    except NumberRefused:
        return None


def _read_decimal(
    r: TableReader, key: str, places: int, low: Decimal, high: Decimal
) -> Decimal | None:
    what = "a price" if places == PRICE_PLACES else "an amount"
    value: Decimal | None = r.decimal(key, None, places=places, low=low, high=high, what=what)
    return value


def _read_decimal_list(
    r: TableReader,
    key: str,
    places: int,
    *,
    low: Decimal,
    high: Decimal,
    positive: bool = False,
) -> list[Decimal] | None:
    present, value = r._get(key, None)
    if not present:
        r.error("missing (required)", key)
        return None
    if not isinstance(value, list):
        r.error(f"expected a list of decimals, got {describe(value)}", key)
        return None
    out = []
    for i, item in enumerate(value):
        at = f"{key}[{i}]"
        if not isinstance(item, str | int | float):
            r.error(f'expected a decimal such as "2880", got {describe(item)}', at)
            continue
        try:
            d = read_decimal(item, places=places, low=low, high=high, example='"2880"')
        except NumberRefused as refused:
            r.error(refused.message, at)
            continue
        if positive and d == 0:
            r.error(f"expected more than 0, got {item}", at)
            continue
        out.append(d)
    return out if len(out) == len(value) else None


def _read_hhmm(r: TableReader, key: str) -> int | None:
    value = r.str(key)
    if value is None:
        return None
    minutes = parse_hhmm(value)
    if minutes is None:
        r.error(f"expected a time HH:MM from 00:00 to 24:00, got {value!r}", key)
    return minutes


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


def _read_month_day(r: TableReader, key: str) -> tuple[int, int] | None:
    value = r.str(key)
    if value is None:
        return None
    try:
        parsed = dt.datetime.strptime("2024-" + value.strip(), "%Y-%m-%d")
    except ValueError:
        r.error(f'expected a day of the year MM-DD such as "07-01", got {value!r}', key)
        return None
    return parsed.month, parsed.day


def _read_date(r: TableReader, key: str, default: Any = None) -> dt.date | None:
    required = default is None
    present, value = r._get(key, None)
    if not present:
        if required:
            r.error("missing (required): the date the version takes effect (YYYY-MM-DD)", key)
        return default
    if isinstance(value, dt.datetime):
        r.error("expected a date (YYYY-MM-DD); versions start at site-local midnight", key)
        return None
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    r.error(f"expected a date YYYY-MM-DD, got {describe(value)}", key)
    return None
