"""A tariff turned into integer tables for one register layout (`CompiledTariff`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import numpy as np

from .errors import RatingError
from .layout import RegisterLayout
from .tariffs import SINGLE_RATE, Tariff, TariffVersion, TierMethod, Tiers
from .units import ENERGY_SCALE, PRICE_SCALE

#: Default meaning of the rate registers T1..T4 (domain.md §2.6).
DEFAULT_REGISTER_RATES = ("sharp", "peak", "flat", "valley")
#: The threshold above the last tier: no energy ever reaches it.
NO_LIMIT = np.int64(1) << np.int64(62)


class CompiledTariff:
    """A tariff turned into integer tables for one register layout (shared by the numpy
    engine and the reference implementation)."""

    def __init__(
        self,
        tariff: Tariff,
        layout: RegisterLayout,
        tz: ZoneInfo | str,
        register_rates: Sequence[str] | None = None,
    ) -> None:
        self.tariff = tariff
        self.layout = layout
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        versions = tariff.versions
        tou = {v.time_of_use for v in versions}
        if len(tou) != 1:
            raise RatingError(f"tariff {tariff.id} mixes time-of-use and single-rate versions")
        self.time_of_use = tou.pop()
        nt = len(layout.tou_points)
        if self.time_of_use:
            if nt == 0:
                raise RatingError(
                    f"tariff {tariff.id} is time-of-use but model {layout.model} has no rate "
                    "registers (T1..T4); rate it with a single-rate or tiered tariff"
                )
            self.columns = tuple(range(int(layout.has_total), int(layout.has_total) + nt))
        else:
            if not layout.has_total:
                raise RatingError(f"model {layout.model} has no total register to rate")
            self.columns = (0,)
        k = len(self.columns)
        tiers = [v.tiers for v in versions if v.tiers is not None]
        self.tiers: Tiers | None = tiers[0] if tiers else None
        for t in tiers[1:]:
            assert self.tiers is not None
            if (t.cycle, t.settlement_month, t.settlement_day, t.settlement_hour, t.proration) != (
                self.tiers.cycle,
                self.tiers.settlement_month,
                self.tiers.settlement_day,
                self.tiers.settlement_hour,
                self.tiers.proration,
            ):
                raise RatingError(
                    f"tariff {tariff.id}: versions change the tier cycle; keep one cycle "
                    "per tariff (define a new tariff instead)"
                )
        ntiers = max([t.count for t in tiers] or [1])
        nv = len(versions)
        self.rate_names: list[tuple[str, ...]] = []
        self.price = np.zeros((nv, k), np.int64)
        self.adders = np.zeros((nv, ntiers, k), np.int64)
        self.thresholds = np.full((nv, max(ntiers - 1, 1)), NO_LIMIT, np.int64)
        self.per_rate = np.zeros(nv, bool)  # M2: adders differ between rates
        for vi, v in enumerate(versions):
            names = self._column_rates(v, register_rates, nt)
            self.rate_names.append(names)
            for c, name in enumerate(names):
                if name:
                    self.price[vi, c] = _price_units(v.rates[name])
            t = v.tiers
            if t is None:
                continue
            for j, th in enumerate(t.thresholds):
                self.thresholds[vi, j] = int(th * ENERGY_SCALE)
            for j in range(t.count):
                for c, name in enumerate(names):
                    if t.method is TierMethod.M2:
                        self.adders[vi, j, c] = _price_units(t.adder(j, name))
                    else:
                        self.adders[vi, j, c] = _price_units(t.amounts[j])
            self.per_rate[vi] = t.method is TierMethod.M2
        self.ntiers = ntiers
        self.version_starts = np.asarray(
            [int(s.timestamp()) for s in tariff.version_starts(self.tz)], np.int64
        )
        self._cycles: list[int] = []
        self._cycle_span: tuple[int, int] | None = None

    def _column_rates(
        self, v: TariffVersion, register_rates: Sequence[str] | None, nt: int
    ) -> tuple[str, ...]:
        if not self.time_of_use:
            return (SINGLE_RATE,) if v.rates else ("",)
        mapping = tuple(v.registers or register_rates or DEFAULT_REGISTER_RATES)
        if len(mapping) < nt:
            raise RatingError(
                f"register mapping {list(mapping)} names {len(mapping)} rates but model "
                f"{self.layout.model} has {nt} rate registers"
            )
        mapping = mapping[:nt]
        for i, name in enumerate(mapping):
            if name not in v.rates:
                raise RatingError(
                    f"tariff {self.tariff.id} (from {v.effective_from}) has no rate {name!r} "
                    f"for register T{i + 1} of {self.layout.model}; add the rate, or map the "
                    f"registers with `registers = [...]` in the tariff or "
                    f"[prepay.register_rates] (rates: {', '.join(v.rates)})"
                )
        return mapping

    # -- calendars ------------------------------------------------------------------------
    def cycle_boundaries(self, t_min: int, t_max: int) -> np.ndarray:
        """Settlement instants (epoch s) from one at or before `t_min` to one after `t_max`."""
        if self.tiers is None:
            return np.zeros(0, np.int64)
        return np.asarray(self.cycle_boundary_list(t_min, t_max), np.int64)

    def cycle_boundary_list(self, t_min: int, t_max: int) -> list[int]:
        """`cycle_boundaries` as a list (the cached one: do not change it); empty without
        tiers."""
        if self.tiers is None:
            return []
        span = self._cycle_span
        if span is None or t_min < span[0] or t_max >= span[1]:
            lo = min(t_min, span[0]) if span else t_min
            hi = max(t_max, span[1] - 1) if span else t_max
            tiers = self.tiers
            start, _ = tiers.cycle_bounds(dt.datetime.fromtimestamp(lo - 1, dt.UTC), self.tz)
            out = [start]
            while int(out[-1].timestamp()) <= hi:
                out.append(tiers.cycle_bounds(out[-1], self.tz)[1])
            self._cycles = [int(b.timestamp()) for b in out]
            self._cycle_span = (self._cycles[0] + 1, self._cycles[-1])
        return self._cycles

    def cycle_end(self, cycle_start: int) -> int:
        assert self.tiers is not None
        start = dt.datetime.fromtimestamp(cycle_start, dt.UTC)
        return int(self.tiers.cycle_bounds(start, self.tz)[1].timestamp())

    def proration(self, opened_at: int | None, cycle_start: int) -> Fraction:
        if self.tiers is None or opened_at is None:
            return Fraction(1)
        start = dt.datetime.fromtimestamp(cycle_start, dt.UTC)
        end = dt.datetime.fromtimestamp(self.cycle_end(cycle_start), dt.UTC)
        opened = dt.datetime.fromtimestamp(opened_at, dt.UTC)
        return self.tiers.proration_factor(opened, (start, end), self.tz)

    def prorated_thresholds(self, factor: Fraction) -> np.ndarray:
        """Thresholds × factor, floored to whole units: `e ≤ T·f` ⇔ `e ≤ ⌊T·f⌋` for
        integer energy, so this is exact, not a rounding."""
        if factor == 1:
            return self.thresholds
        out = self.thresholds.copy()
        finite = out < NO_LIMIT
        out[finite] = (out[finite] * factor.numerator) // factor.denominator
        return out


def _price_units(price: Decimal) -> int:
    units = price * PRICE_SCALE
    if units != units.to_integral_value():
        raise RatingError(f"price {price} has more than 6 decimal places")
    return int(units)
