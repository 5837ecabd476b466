"""Bills from totals, without interval data (`bill_usage`): post-paid lines, the CLI
calculator and the worked examples."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any

from .errors import RatingError
from .rounding import Rounding, largest_remainder, round_fen
from .tariff_values import to_decimal
from .tariffs import SINGLE_RATE, Tariff, TariffVersion, TierMethod


@dataclass(frozen=True, slots=True)
class BillLine:
    label: str
    quantity: Fraction
    unit: str
    unit_price: Decimal
    amount_exact_fen: Fraction
    #: Whole fen; the lines of a bill add up to its total (largest remainder).
    amount_fen: int = 0

    @property
    def quantity_text(self) -> str:
        return _fraction_text(self.quantity, 2)


@dataclass(frozen=True, slots=True)
class Bill:
    tariff: str
    lines: tuple[BillLine, ...]
    total_exact_fen: Fraction
    total_fen: int
    energy: Fraction
    unit: str
    cycle_energy_after: Fraction = Fraction(0)
    notes: tuple[str, ...] = field(default=())

    @property
    def total_cny(self) -> Decimal:
        return Decimal(self.total_fen) / 100


def bill_usage(
    tariff: Tariff,
    usage: Mapping[str, Any] | Any,
    *,
    on: dt.date | None = None,
    period: tuple[dt.date, dt.date] | None = None,
    cycle_energy_before: Any = 0,
    threshold_factor: Fraction = Fraction(1),
    rounding: Rounding = Rounding.HALF_UP,
) -> Bill:
    """Bill a period's usage from totals (no interval data), exactly.

    `usage` is energy per rate name for a time-of-use tariff, or one quantity (kWh or m³).
    Tiers start from `cycle_energy_before` (year- or month-to-date). M2 splits tier energy
    across rates pro-rata to the period's rate shares (domain.md §2.4). With `period`
    (start, end exclusive) spanning a version change, usage is split by days across the
    versions (domain.md §2.2) and rated in order. Lines are exact and their fen add up to
    the rounded total.
    """
    if isinstance(usage, Mapping):
        energy = {str(k): _fraction(v) for k, v in usage.items()}
    else:
        energy = {SINGLE_RATE: _fraction(usage)}
    segments: list[tuple[TariffVersion, Fraction, str]] = []
    if period is not None:
        start, end = period
        days = (end - start).days
        if days <= 0:
            raise RatingError("the period must end after it starts")
        cuts = (
            [start]
            + [v.effective_from for v in tariff.versions if start < v.effective_from < end]
            + [end]
        )
        for a, b in itertools.pairwise(cuts):
            label = f" ({a}–{b - dt.timedelta(days=1)})" if len(cuts) > 2 else ""
            segments.append((tariff.version_on(a), Fraction((b - a).days, days), label))
    else:
        segments.append((tariff.version_on(on or dt.date.today()), Fraction(1), ""))
    lines: list[BillLine] = []
    cum = _fraction(cycle_energy_before)
    notes = []
    unit = tariff.unit
    for version, share, label in segments:
        seg = {k: v * share for k, v in energy.items()}
        cum = _bill_segment(tariff, version, seg, cum, threshold_factor, lines, label, unit)
    if len(segments) > 1:
        notes.append("usage split by days across the tariff's versions (domain.md §2.2)")
    total_exact = sum((ln.amount_exact_fen for ln in lines), Fraction(0))
    total_fen = round_fen(total_exact, rounding)
    fen = largest_remainder(total_fen, [ln.amount_exact_fen for ln in lines])
    lines = [replace(ln, amount_fen=f) for ln, f in zip(lines, fen, strict=True)]
    return Bill(
        tariff.id,
        tuple(lines),
        total_exact,
        total_fen,
        sum(energy.values(), Fraction(0)),
        unit,
        cum,
        tuple(notes),
    )


def _bill_segment(
    tariff: Tariff,
    version: TariffVersion,
    energy: Mapping[str, Fraction],
    cum: Fraction,
    factor: Fraction,
    lines: list[BillLine],
    label: str,
    unit: str,
) -> Fraction:
    tiers = version.tiers
    if version.time_of_use:
        for rate in energy:
            if rate not in version.rates:
                raise RatingError(
                    f"tariff {tariff.id} has no rate {rate!r} (rates: {', '.join(version.rates)})"
                )
    else:
        energy = {SINGLE_RATE: sum(energy.values(), Fraction(0))}
    total = sum(energy.values(), Fraction(0))
    for rate, qty in energy.items():
        if rate in version.rates and qty:
            price = version.rates[rate]
            name = rate if version.time_of_use else "energy"
            lines.append(BillLine(f"{name}{label}", qty, unit, price, qty * Fraction(price) * 100))
    if tiers is None:
        return cum + total
    bounds = [Fraction(th) * factor for th in tiers.thresholds]
    lo = Fraction(0)
    after = cum + total
    for j in range(tiers.count):
        hi = bounds[j] if j < len(bounds) else None
        a = max(cum, lo) if hi is None else min(max(cum, lo), hi)
        b = max(after, lo) if hi is None else min(max(after, lo), hi)
        e = b - a
        lo = hi if hi is not None else lo
        if not e:
            continue
        name = f"tier {j + 1}"
        if tiers.method is TierMethod.PRICES:
            price = tiers.amounts[j]
            lines.append(BillLine(f"{name}{label}", e, unit, price, e * Fraction(price) * 100))
        elif tiers.method is TierMethod.M1:
            price = tiers.amounts[j]
            if price:
                lines.append(
                    BillLine(f"{name} surcharge{label}", e, unit, price, e * Fraction(price) * 100)
                )
        else:
            for rate, qty in energy.items():
                price = tiers.adder(j, rate)
                if price and qty:
                    part = e * qty / total
                    lines.append(
                        BillLine(
                            f"{name} {rate} surcharge{label}",
                            part,
                            unit,
                            price,
                            part * Fraction(price) * 100,
                        )
                    )
    return after


def _fraction(value: Any) -> Fraction:
    if isinstance(value, Fraction):
        return value
    d = to_decimal(value)
    if d is None:
        raise RatingError(f"expected a quantity, got {value!r}")
    return Fraction(d)


def _fraction_text(x: Fraction, places: int) -> str:
    q = Decimal(x.numerator) / Decimal(x.denominator)
    return f"{q.quantize(Decimal(1).scaleb(-places)):f}"
