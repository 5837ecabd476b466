"""The `[tiers]` table of a tariff (阶梯): cycle, settlement, thresholds and the tier prices,
M1 adders or M2 per-rate adders, read and checked."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from ..config.reader import TableReader
from .tariff_values import read_decimal_key, read_decimal_list
from .tariffs import (
    ENERGY_PLACES,
    MAX_PRICE,
    MAX_THRESHOLD,
    PRICE_PLACES,
    Proration,
    TierCycle,
    TierMethod,
    Tiers,
)

#: The key that gives the tier amounts, for each method.
_METHODS = {"prices": TierMethod.PRICES, "adders": TierMethod.M1, "period_adders": TierMethod.M2}


def read_tiers(r: TableReader, commodity: str | None) -> Tiers | None:
    """The tiers of a tariff, or None when anything in them is wrong (all is reported)."""
    before = len(r.errors)
    cycle = r.str("cycle", choices=[c.value for c in TierCycle])
    month = r.int("settlement_month", None, low=1, high=12)
    day = r.int("settlement_day", 1, low=1, high=28)
    hour = r.int("settlement_hour", 0, low=0, high=23)
    proration = r.str(
        "proration", Proration.ACTUAL_DAYS.value, choices=[p.value for p in Proration]
    )
    thresholds = read_decimal_list(
        r, "thresholds", ENERGY_PLACES, low=Decimal(0), high=MAX_THRESHOLD, positive=True
    )
    given = [k for k in _METHODS if r.has(k)]
    r._seen.update(_METHODS)
    _check_cycle(r, cycle, month, proration)
    if thresholds is not None:
        _check_thresholds(r, thresholds)
    if len(given) != 1:
        r.error(
            "give exactly one of `prices` (pure tiered), `adders` (M1, added to every rate) or "
            f"`period_adders` (M2, per rate){'; got ' + ', '.join(given) if given else ''}"
        )
        r.finish()
        return None
    need = None if thresholds is None else len(thresholds) + 1
    method = _METHODS[given[0]]
    amounts: tuple[Decimal, ...] = ()
    period_adders: tuple[Mapping[str, Decimal], ...] = ()
    if method is TierMethod.M2:
        period_adders = _read_period_adders(r, need)
    else:
        amounts = _read_amounts(r, given[0], need)
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


def _check_cycle(
    r: TableReader, cycle: str | None, month: int | None, proration: str | None
) -> None:
    if cycle == TierCycle.MONTHLY and month is not None:
        r.error(
            "a monthly cycle settles every month: give settlement_day/hour only", "settlement_month"
        )
    if cycle == TierCycle.ANNUAL and proration == Proration.DAYS_30:
        r.error("days_30 proration is for monthly cycles; use actual_days", "proration")


def _check_thresholds(r: TableReader, thresholds: list[Decimal]) -> None:
    if not thresholds:
        r.error("expected at least one threshold", "thresholds")
    for i in range(1, len(thresholds)):
        if thresholds[i] <= thresholds[i - 1]:
            r.error(
                f"must be greater than thresholds[{i - 1}] ({thresholds[i - 1]}); "
                "thresholds must increase",
                f"thresholds[{i}]",
            )


def _read_period_adders(r: TableReader, need: int | None) -> tuple[Mapping[str, Decimal], ...]:
    """M2: one { rate = adder } table per tier."""
    raw = r.raw("period_adders")
    if not isinstance(raw, list):
        r.error("expected a list with one { rate = adder } table per tier", "period_adders")
        return ()
    tables = []
    for k, entry in enumerate(raw):
        tr = TableReader(entry, r.at(f"period_adders[{k}]"), r.errors)
        table = {}
        for rate in tr.data:
            # An adder only adds: a negative one could price energy below zero.
            value = read_decimal_key(tr, rate, PRICE_PLACES, low=Decimal(0), high=MAX_PRICE)
            if value is not None:
                table[rate] = value
        tables.append(table)
    if need is not None and len(tables) != need:
        r.error(
            f"expected {need} tables (one per tier: {need - 1} thresholds make {need} "
            f"tiers), got {len(tables)}",
            "period_adders",
        )
    return tuple(tables)


def _read_amounts(r: TableReader, key: str, need: int | None) -> tuple[Decimal, ...]:
    """Tier prices or M1 adders: one amount per tier."""
    # Tier prices and M1 adders are never negative (an adder below zero could rate a
    # bill to less than nothing).
    values = read_decimal_list(r, key, PRICE_PLACES, low=Decimal(0), high=MAX_PRICE)
    if values is None:
        return ()
    if need is not None and len(values) != need:
        r.error(
            f"expected {need} values (one per tier: {need - 1} thresholds make {need} "
            f"tiers), got {len(values)}",
            key,
        )
    return tuple(values)
