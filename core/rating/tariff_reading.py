"""Reading the site file's `[tariffs]` catalogue into `Tariff`s: each tariff's own table,
its `[[versions]]` merged onto it, and the checks that hold across versions. Validation
collects every problem with the exact entry (`tariffs.residential.periods[2]: overlaps
periods[1] (08:00–11:30) ...`); the components are read by `tariff_day_tables`,
`tariff_tiers` and `tariff_values`, and cross-checked by `tariff_versions`."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from ..config.reader import ID_PATTERN, TableReader
from ..errors import ConfigError, FieldError
from .tariff_day_tables import read_periods, read_seasons
from .tariff_tiers import read_tiers
from .tariff_values import read_date, read_decimal_key
from .tariff_versions import TariffParts, build_version
from .tariffs import (
    DEFAULT_DAY_TABLE,
    MAX_PRICE,
    PRICE_PLACES,
    Commodity,
    DayTable,
    Tariff,
    TariffCatalogue,
    TariffVersion,
)


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


def _read_tariff(tariff_id: str, r: TableReader) -> Tariff | None:
    before = len(r.errors)
    name = r.str("name", tariff_id)
    commodity = r.str("commodity", "electricity", choices=[c.value for c in Commodity])
    base_from = read_date(r, "effective_from", dt.date.min)
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
    built.append((base_from or dt.date.min, r.path, build_version(base_from, base, r, unit)))
    for i, raw in enumerate(versions_raw):
        vr = TableReader(raw, f"{r.path}.versions[{i}]", r.errors)
        effective = read_date(vr, "effective_from")
        own = _read_parts(vr, commodity)
        vr.finish()
        merged = TariffParts(dict(base.values), dict(base.paths))
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
        built.append((effective, vr.path, build_version(effective, merged, vr, unit)))
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


def _read_parts(r: TableReader, commodity: str | None) -> TariffParts:
    parts = TariffParts()
    if r.has("price"):
        price = read_decimal_key(r, "price", PRICE_PLACES, low=Decimal(0), high=MAX_PRICE)
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
            value = read_decimal_key(rates_r, rate, PRICE_PLACES, low=Decimal(0), high=MAX_PRICE)
            if value is not None:
                rates[rate] = value
        if not rates_r.data:
            r.error('expected at least one rate (e.g. { peak = "0.6170" })', "rates")
        parts.values["rates"] = rates
        parts.paths["rates"] = r.at("rates")
    else:
        r._seen.add("rates")
    if r.has("periods"):
        parts.values["periods"] = read_periods(r, "periods", DEFAULT_DAY_TABLE)
        parts.paths["periods"] = r.at("periods")
    else:
        r._seen.add("periods")
    if r.has("day_tables"):
        tables: dict[str, tuple[DayTable | None, str]] = {}
        for name, tr in r.entries("day_tables"):
            if name == DEFAULT_DAY_TABLE:
                tr.error(f"{name!r} is the name of the tariff's own `periods`; pick another")
                continue
            tables[name] = (read_periods(tr, "periods", name), tr.at("periods"))
            tr.finish()
        parts.values["day_tables"] = tables
        parts.paths["day_tables"] = r.at("day_tables")
    else:
        r._seen.add("day_tables")
    if r.has("seasons"):
        parts.values["seasons"] = read_seasons(r)
        parts.paths["seasons"] = r.at("seasons")
    else:
        r._seen.add("seasons")
    if r.has("tiers"):
        parts.values["tiers"] = read_tiers(r.table("tiers"), commodity)
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
