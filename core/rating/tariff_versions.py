"""One version of a tariff assembled from the components its table (and the tariff's own
table) give, cross-checked against each other: rates, tiers, day tables, seasons and the
register mapping."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..config.reader import TableReader
from ..errors import FieldError
from .tariff_day_tables import uncovered_days
from .tariffs import (
    DEFAULT_DAY_TABLE,
    SINGLE_RATE,
    DayTable,
    Season,
    TariffVersion,
    TierMethod,
    Tiers,
)


@dataclass
class TariffParts:
    """The components one table (the tariff or a version) gives, with where they were given."""

    values: dict[str, Any] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)

    def error(self, r: TableReader, component: str, message: str) -> None:
        """Report a problem at the entry that gave `component` (or at the table)."""
        r.errors.append(FieldError(self.paths.get(component, r.path), message))


def build_version(
    effective: dt.date | None, parts: TariffParts, r: TableReader, unit: str
) -> TariffVersion | None:
    """Cross-check the components of one version and assemble it."""
    v, paths = parts.values, parts.paths
    errors_before = len(r.errors)
    tiers: Tiers | None = v.get("tiers")
    if "tiers" in paths and tiers is None:
        return None  # its own errors are recorded
    priced = _rates(parts, tiers, r)
    if priced is None:
        return None
    rates, tou = priced
    if tiers is not None:
        _check_tiers_fit(parts, tiers, rates, tou, r)
    day_tables = _day_tables(parts, rates, tou, unit, r)
    if ("periods" in paths and v.get("periods") is None) or any(
        t is None for t, _ in (v.get("day_tables") or {}).values()
    ):
        return None
    seasons: tuple[Season, ...] = ()
    if tou and "seasons" in v:
        if v["seasons"] is None:
            return None
        seasons = _seasons(parts, day_tables, r)
    elif tou and DEFAULT_DAY_TABLE not in day_tables and day_tables:
        parts.error(r, "day_tables", "without `seasons` the tariff needs its own `periods` table")
    registers = v.get("registers")
    if registers is not None:
        _check_registers(parts, registers, rates, tou, r)
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


def _rates(
    parts: TariffParts, tiers: Tiers | None, r: TableReader
) -> tuple[dict[str, Decimal], bool] | None:
    """The version's rates and whether it is time of use; None when it cannot be priced."""
    v, paths = parts.values, parts.paths
    if "price" in v and "rates" in v:
        parts.error(
            r, "rates", "give either `price` (single rate) or `rates` (time of use), not both"
        )
        return None
    if "price" in v:
        return {SINGLE_RATE: v["price"]}, False
    if "rates" in v:
        return dict(v["rates"]), True
    if "price" in paths or "rates" in paths:
        return None
    if tiers is None or tiers.method is not TierMethod.PRICES:
        r.error(
            "a tariff needs `price` (single rate), `rates` with `periods` (time of use) "
            "or `[tiers]` with `prices` (pure tiered)"
        )
        return None
    return {}, False


def _check_tiers_fit(
    parts: TariffParts, tiers: Tiers, rates: dict[str, Decimal], tou: bool, r: TableReader
) -> None:
    """Tier prices stand alone; adders need rates to add to; M2 adders name known rates."""
    if tiers.method is TierMethod.PRICES and rates:
        parts.error(
            r,
            "tiers",
            "tier `prices` make a pure tiered tariff; with a `price` or `rates` give the "
            "tier `adders` (M1) or `period_adders` (M2) instead",
        )
    if tiers.method is not TierMethod.PRICES and not rates:
        parts.error(r, "tiers", "tier adders need a base `price` or `rates` to add to")
    if tiers.method is not TierMethod.M2:
        return
    if not tou:
        parts.error(r, "tiers", "`period_adders` (M2) need time-of-use `rates`; use `adders` (M1)")
    for k, adders in enumerate(tiers.period_adders):
        for rate in adders:
            if rate not in rates:
                r.errors.append(
                    FieldError(
                        f"{parts.paths['tiers']}.period_adders[{k}].{rate}",
                        f"unknown rate {rate!r} (rates: {', '.join(rates) or 'none'})",
                    )
                )


def _day_tables(
    parts: TariffParts, rates: dict[str, Decimal], tou: bool, unit: str, r: TableReader
) -> dict[str, DayTable]:
    """The day tables of a time-of-use version, each period at a known rate; a single-rate
    version must have none."""
    v, paths = parts.values, parts.paths
    day_tables: dict[str, DayTable] = {}
    if not tou:
        for component in ("periods", "day_tables", "seasons"):
            if component in v:
                parts.error(
                    r,
                    component,
                    "only a time-of-use tariff (`rates`) has day tables and seasons"
                    + ("; water is billed by volume, not by time" if unit == "m³" else ""),
                )
        return day_tables
    if "periods" not in v and "day_tables" not in v:
        parts.error(
            r, "rates", "time-of-use `rates` need a day table: add `periods` (24 h exactly)"
        )
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
    return day_tables


def _seasons(
    parts: TariffParts, day_tables: dict[str, DayTable], r: TableReader
) -> tuple[Season, ...]:
    """The seasons, each naming a known day table; without a default table they must cover
    every day of the year."""
    season_list = parts.values["seasons"]
    seasons = tuple(s for s, _ in season_list)
    for i, (season, _) in enumerate(season_list):
        if season.day_table not in day_tables:
            r.errors.append(
                FieldError(
                    f"{parts.paths['seasons']}[{i}].day_table",
                    f"unknown day table {season.day_table!r} (defined: "
                    f"{', '.join(day_tables) or 'none'})",
                )
            )
    if DEFAULT_DAY_TABLE not in day_tables:
        uncovered = uncovered_days(seasons)
        if uncovered:
            parts.error(
                r,
                "seasons",
                f"days {uncovered} are in no season and there is no default `periods` "
                "table; add a season for them or a `periods` table",
            )
    return seasons


def _check_registers(
    parts: TariffParts,
    registers: tuple[str, ...],
    rates: dict[str, Decimal],
    tou: bool,
    r: TableReader,
) -> None:
    """`registers` maps T1..Tn to known rates, and only in a time-of-use version."""
    for i, name in enumerate(registers):
        if name not in rates:
            r.errors.append(
                FieldError(
                    f"{parts.paths['registers']}[{i}]",
                    f"unknown rate {name!r} for register T{i + 1} "
                    f"(rates: {', '.join(rates) or 'none'})",
                )
            )
    if not tou:
        parts.error(r, "registers", "only a time-of-use tariff maps registers T1..Tn to rates")
