"""Rating: energy (or water) from the meter's cumulative registers, turned into money.

This is one of the two places that handle money (the other is the ledger). Prices are
`Decimal`; energy is an integer count; cost is exact; only `round_fen` rounds, and only
the accrual (`Accrual`) and the bill (`bill_usage`) call it.

Units used inside (all integers, never floats near money):

- energy: 1/1000 kWh or m³ (`ENERGY_SCALE`): Wh for electricity, litres for water. A
  register with resolution 0.01 kWh counts 10 units per step.
- price: 1e-6 CNY per kWh or m³ (`PRICE_SCALE`).
- cost: energy × price = 1e-9 CNY; `COST_PER_FEN` of them make a fen. Exact amounts handed
  to the ledger are `Fraction`s of a fen.

The engine (`RatingEngine`) is numpy-vectorised over a batch of readings of one meter:

1. register counts are differenced against the last accepted reading (the baseline kept in
   `MeterState`); a register that wraps is taken modulo its maximum (ROLLOVER); any other
   drop is never negative usage: the reading is flagged DECREASE, not billed, and the
   baseline is held; a jump above `max_per_hour` is flagged SPIKE and held the same way;
2. time-of-use energy comes from the meter's own T1..T4 registers, mapped to rate names per
   model (default 尖/峰/平/谷 = sharp/peak/flat/valley), never from read timestamps;
3. energy accumulates per tier cycle (settlement instant in the site's time zone,
   thresholds prorated for a partial first cycle) and "≤ threshold stays in the lower
   tier"; meter replacement closes the old meter at its final reading, opens the new one at
   its initial reading and carries the cycle energy;
4. cost per interval = Σ T-energy × rate + tier adders (M1: per tier; M2: per tier and
   rate, split chronologically — interval by interval — and pro-rata inside the one
   interval that crosses a threshold).

An interval belongs to the version, tier cycle and day in which it *ends*; one ending
exactly on a boundary belongs to the period before it. `rating_reference.py` is a
pure-Python implementation of the same rules used to cross-check this one.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from ..errors import OpenPrepayError
from ..model import DeviceModel, Sample
from .tariffs import SINGLE_RATE, Tariff, TariffVersion, TierMethod, Tiers, to_decimal

ENERGY_SCALE = 1000
PRICE_SCALE = 1_000_000
COST_PER_FEN = ENERGY_SCALE * PRICE_SCALE // 100
#: Default meaning of the rate registers T1..T4 (domain.md §2.6).
DEFAULT_REGISTER_RATES = ("sharp", "peak", "flat", "valley")
_INF = np.int64(1) << np.int64(62)


class RatingError(OpenPrepayError):
    """A meter cannot be rated with a tariff (missing registers, unpriced rate...)."""


# -- rounding -------------------------------------------------------------------------------


class Rounding(enum.StrEnum):
    """How an exact amount becomes whole fen (domain.md §5.4; half-up is the default)."""

    HALF_UP = "half_up"  # 四舍五入, halves away from zero
    HALF_EVEN = "half_even"  # banker's rounding (GB 8170 "5 to even")
    DOWN = "down"  # towards zero (what a meter display shows)
    UP = "up"  # away from zero


def round_fen(amount_fen: Fraction | int | Decimal, mode: Rounding = Rounding.HALF_UP) -> int:
    """The one place an exact amount of fen is rounded to an integer."""
    x = Fraction(amount_fen)
    sign = -1 if x < 0 else 1
    a = abs(x)
    whole, rest = divmod(a.numerator, a.denominator)
    frac = Fraction(rest, a.denominator)
    if frac == 0:
        return sign * whole
    if mode is Rounding.DOWN:
        up = False
    elif mode is Rounding.UP:
        up = True
    elif frac != Fraction(1, 2):
        up = frac > Fraction(1, 2)
    else:
        up = mode is Rounding.HALF_UP or whole % 2 == 1
    return sign * (whole + (1 if up else 0))


def largest_remainder(total_fen: int, exact_fen: Sequence[Fraction]) -> list[int]:
    """Whole-fen parts that sum to `total_fen`, as close as possible to `exact_fen`.

    floor every part, then give the fen still missing (or take the fen in excess) to the
    parts with the largest (smallest) fractional remainder; ties go to the larger part,
    then to the earlier one. Used for bill lines, so lines add up to the amount posted.
    """
    floors = [int(x.numerator // x.denominator) for x in exact_fen]
    rest = total_fen - sum(floors)
    order = sorted(
        range(len(exact_fen)),
        key=lambda i: (-(exact_fen[i] - floors[i]), -exact_fen[i], i),
    )
    out = list(floors)
    if not order:
        return out
    if rest >= 0:
        for k in range(rest):
            out[order[k % len(order)]] += 1
    else:
        for k in range(-rest):
            out[order[-1 - k % len(order)]] -= 1
    return out


def fen_from_cost(cost: int | Fraction) -> Fraction:
    """Internal cost units (1e-9 CNY) as an exact Fraction of a fen."""
    return Fraction(cost) / COST_PER_FEN


@dataclass(slots=True)
class Accrual:
    """Deduction without drift (domain.md §5.4), one per meter per billing cycle.

    `add(cost)` adds the exact (unrounded) cost of new usage and returns the whole fen to
    post now: `round(cum_exact) − posted`. However the usage is sliced, the fen posted sum to
    the rounded total of the cycle. The ledger persists (`cum_exact_fen`, `posted_fen`) —
    `to_record()` / `from_record()` — in the same transaction as the posting.
    """

    cum_exact_fen: Fraction = Fraction(0)
    posted_fen: int = 0
    rounding: Rounding = Rounding.HALF_UP

    def add(self, cost_fen: Fraction | int | Decimal) -> int:
        self.cum_exact_fen += Fraction(cost_fen)
        target = round_fen(self.cum_exact_fen, self.rounding)
        post = target - self.posted_fen
        self.posted_fen = target
        return post

    def preview(self, cost_fen: Fraction | int | Decimal) -> int:
        """What `add` would return, without changing the accrual."""
        return round_fen(self.cum_exact_fen + Fraction(cost_fen), self.rounding) - self.posted_fen

    @property
    def remainder_fen(self) -> Fraction:
        """Accrued but not yet posted (in (−1, 1) fen for the default rounding)."""
        return self.cum_exact_fen - self.posted_fen

    def to_record(self) -> dict[str, Any]:
        return {
            "cum_exact_fen": str(self.cum_exact_fen),
            "posted_fen": self.posted_fen,
            "rounding": self.rounding.value,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Accrual:
        return cls(
            Fraction(str(record["cum_exact_fen"])),
            int(record["posted_fen"]),
            Rounding(record.get("rounding", Rounding.HALF_UP.value)),
        )


# -- registers and readings -----------------------------------------------------------------


def _decimal_of(x: float | None) -> Decimal | None:
    return None if x is None else Decimal(repr(float(x)))


@dataclass(frozen=True, slots=True)
class RegisterLayout:
    """Which cumulative registers of a model are rated, as integer counts.

    Column 0 is the total register (if the model has one), then T1..Tn.
    """

    model: str
    points: tuple[str, ...]
    has_total: bool
    #: Register resolution in kWh or m³ per count (0.01 for a ×0.01 kWh register).
    resolution: tuple[Decimal, ...]
    #: Internal energy units per count (10 for 0.01 kWh).
    unit_factor: tuple[int, ...]
    #: Counts at which a register wraps to zero; None for registers that do not wrap.
    modulus: tuple[int | None, ...]

    @property
    def tou_points(self) -> tuple[str, ...]:
        return self.points[1:] if self.has_total else self.points

    @classmethod
    def from_model(cls, model: DeviceModel) -> RegisterLayout:
        names: list[str] = []
        if model.total_point:
            names.append(model.total_point)
        names.extend(model.tariff_points)
        if not names:
            raise RatingError(f"model {model.name} has no cumulative register to rate")
        res, factor, modulus = [], [], []
        for name in names:
            spec = model.point(name)
            r = _decimal_of(spec.resolution) or Decimal(1) / ENERGY_SCALE
            f = r * ENERGY_SCALE
            if f != f.to_integral_value() or f < 1:
                raise RatingError(
                    f"{model.name}.{name}: resolution {r} is finer than 0.001 or not a "
                    "decimal step; rating counts energy in 0.001 units"
                )
            res.append(r)
            factor.append(int(f))
            roll = _decimal_of(spec.rollover)
            modulus.append(None if roll is None else int((roll / r).to_integral_value()))
        return cls(
            model.name,
            tuple(names),
            bool(model.total_point),
            tuple(res),
            tuple(factor),
            tuple(modulus),
        )

    @classmethod
    def simple(
        cls,
        *,
        total: bool = True,
        tou: int = 4,
        resolution: Decimal | str = "0.01",
        modulus: int | None = 1 << 32,
        model: str = "test",
    ) -> RegisterLayout:
        """A layout without a DeviceModel (tests, benchmarks, the CLI calculator)."""
        n = int(total) + tou
        r = Decimal(resolution)
        names = (("total",) if total else ()) + tuple(f"T{i + 1}" for i in range(tou))
        return cls(model, names, total, (r,) * n, (int(r * ENERGY_SCALE),) * n, (modulus,) * n)

    def counts(self, values: Mapping[str, float]) -> tuple[int, ...]:
        """Engineering values of one reading (point name → value) as register counts."""
        out = []
        for name, r in zip(self.points, self.resolution, strict=True):
            if name not in values:
                raise RatingError(f"reading lacks register {name!r} of {self.model}")
            out.append(int((_decimal_of(values[name]) / r).to_integral_value()))  # type: ignore[operator]
        return tuple(out)

    def readings(
        self, times: Sequence[dt.datetime] | np.ndarray, values: Mapping[str, Any]
    ) -> Readings:
        """Readings from times (aware datetimes or epoch seconds) and engineering values
        per point (sequences or arrays of floats)."""
        t = _epochs(times)
        cols = []
        for name, r in zip(self.points, self.resolution, strict=True):
            v = np.asarray(values[name], dtype=np.float64)
            cols.append(np.rint(v / float(r)).astype(np.int64))
        counts = np.stack(cols, axis=1) if cols else np.zeros((len(t), 0), np.int64)
        return Readings(t, counts)

    def from_samples(self, samples: Iterable[Sample]) -> Readings:
        """Readings from Good samples that carry every rated register (others are skipped:
        billing waits for good data, it never reuses a previous value)."""
        times: list[int] = []
        rows: list[list[float]] = []
        for s in samples:
            if not s.quality.is_good:
                continue
            if any(p not in s.values or not s.quality_of(p).is_good for p in self.points):
                continue
            times.append(int(s.read_at.timestamp()))
            rows.append([float(s.values[p]) for p in self.points])
        arr = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(self.points))
        res = np.asarray([float(r) for r in self.resolution])
        return Readings(np.asarray(times, np.int64), np.rint(arr / res).astype(np.int64))


def _epochs(times: Sequence[dt.datetime] | np.ndarray) -> np.ndarray:
    if isinstance(times, np.ndarray) and times.dtype.kind in "iu":
        return times.astype(np.int64)
    out = []
    for t in times:
        if isinstance(t, dt.datetime):
            if t.tzinfo is None:
                raise RatingError("reading times must be timezone-aware (UTC)")
            out.append(int(t.timestamp()))
        else:
            out.append(int(t))
    return np.asarray(out, np.int64)


def epoch(t: dt.datetime | int) -> int:
    if isinstance(t, dt.datetime):
        if t.tzinfo is None:
            raise RatingError("times must be timezone-aware (UTC)")
        return int(t.timestamp())
    return int(t)


@dataclass(frozen=True, slots=True)
class Readings:
    """A batch of readings of one meter: times (UTC epoch seconds) and register counts in
    the layout's column order."""

    t: np.ndarray
    counts: np.ndarray

    def __len__(self) -> int:
        return len(self.t)


@dataclass(frozen=True, slots=True)
class Replacement:
    """A meter exchange: the old meter is closed at its final reading and the new one
    opened at its initial reading, both at `at`. Readings at or before `at` belong to the
    old meter, later ones to the new. The tier cycle energy carries over."""

    at: dt.datetime | int
    old_final: tuple[int, ...]
    new_initial: tuple[int, ...]

    @classmethod
    def from_values(
        cls,
        layout: RegisterLayout,
        at: dt.datetime | int,
        old_final: Mapping[str, float],
        new_initial: Mapping[str, float],
    ) -> Replacement:
        return cls(at, layout.counts(old_final), layout.counts(new_initial))


@dataclass(frozen=True, slots=True)
class MeterState:
    """What the engine remembers about a meter between batches (persist it per meter).

    `last_counts` is the baseline: the last accepted reading. `cycle_energy` is the energy
    (internal units, 0.001 kWh or m³) of the tier cycle that started at `cycle_start`.
    `opened_at` (the account's opening) prorates the thresholds of a partial first cycle.
    A state without `cycle_start` holds energy of the cycle its first reading falls in (an
    account opened with a year-to-date figure).
    """

    last_t: int | None = None
    last_counts: tuple[int, ...] | None = None
    cycle_start: int | None = None
    cycle_energy: int = 0
    opened_at: int | None = None

    @property
    def cycle_energy_units(self) -> Decimal:
        return Decimal(self.cycle_energy) / ENERGY_SCALE

    def to_record(self) -> dict[str, Any]:
        return {
            "last_t": self.last_t,
            "last_counts": None if self.last_counts is None else list(self.last_counts),
            "cycle_start": self.cycle_start,
            "cycle_energy": self.cycle_energy,
            "opened_at": self.opened_at,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> MeterState:
        counts = record.get("last_counts")
        return cls(
            record.get("last_t"),
            None if counts is None else tuple(int(c) for c in counts),
            record.get("cycle_start"),
            int(record.get("cycle_energy", 0)),
            record.get("opened_at"),
        )

    @classmethod
    def opening(
        cls,
        opened_at: dt.datetime | int | None = None,
        *,
        cycle_energy_units: Decimal | str | int = 0,
        cycle_start: dt.datetime | int | None = None,
    ) -> MeterState:
        """A fresh meter: no baseline yet; optionally energy already used this cycle."""
        units = Decimal(str(cycle_energy_units)) * ENERGY_SCALE
        if units != units.to_integral_value():
            raise RatingError("cycle energy has at most 3 decimal places")
        return cls(
            None,
            None,
            None if cycle_start is None else epoch(cycle_start),
            int(units),
            None if opened_at is None else epoch(opened_at),
        )


class Flag(enum.IntFlag):
    """What happened to one reading (several may apply)."""

    #: The first reading of a meter (or of the new meter after a replacement): no delta.
    BASELINE = 1
    #: A register wrapped; its delta was taken modulo the register maximum.
    ROLLOVER = 2
    #: Lower than the baseline and not a plausible rollover: not billed, baseline held.
    DECREASE = 4
    #: More energy than `max_per_hour` allows since the baseline: not billed, held.
    SPIKE = 8
    #: More than `gap_s` since the baseline: billed (registers are cumulative), flagged.
    GAP = 16
    #: Δtotal differs from ΣΔT1..Tn by more than one count per register.
    MISMATCH = 32
    #: At or before the baseline time: already rated, ignored.
    STALE = 64
    #: The final reading of a replaced meter.
    REPLACED = 128
    #: The interval crosses a tier settlement instant (all of it counts in the new cycle).
    CYCLE_SPAN = 256
    #: The interval crosses a tariff version's start (all of it at the new version).
    VERSION_SPAN = 512

    @property
    def billed(self) -> bool:
        return not self & (Flag.BASELINE | Flag.DECREASE | Flag.SPIKE | Flag.STALE)


NOT_BILLED = int(Flag.BASELINE | Flag.DECREASE | Flag.SPIKE | Flag.STALE)


@dataclass(frozen=True, slots=True)
class RatingOptions:
    #: Largest plausible consumption per hour (kWh/h or m³/h); above it a reading is a SPIKE.
    #: Metering sets it per meter from the meter's plausibility limits (core/field/plausibility.py).
    max_per_hour: Decimal | None = None
    #: More than this many seconds between a reading and its baseline flags a GAP.
    gap_s: int | None = 3600
    #: A drop counts as a rollover only when the wrapped delta is at most this share of the
    #: register range (otherwise it is a DECREASE).
    rollover_window: Fraction = Fraction(1, 100)


# -- the tariff as integer tables -----------------------------------------------------------


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
        self.thresholds = np.full((nv, max(ntiers - 1, 1)), _INF, np.int64)
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
        return np.asarray(self._cycles, np.int64)

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
        finite = out < _INF
        out[finite] = (out[finite] * factor.numerator) // factor.denominator
        return out


def _price_units(price: Decimal) -> int:
    units = price * PRICE_SCALE
    if units != units.to_integral_value():
        raise RatingError(f"price {price} has more than 6 decimal places")
    return int(units)


# -- the result -----------------------------------------------------------------------------


@dataclass
class RatedBatch:
    """The rated intervals of one batch, one row per reading (and per replacement reading).

    Arrays: `t` (epoch s, end of the interval), `flags` (`Flag` bits), `energy` (billed,
    internal units), `rate_energy` (per rated register column), `tier_energy` (per tier),
    `cost` (1e-9 CNY; for the rare M2 interval split pro-rata across a threshold it is the
    floor and the exact remainder is in `cost_extra`), `version` (tariff version index),
    `cycle` (epoch s of the tier cycle's start, or -1).
    """

    compiled: CompiledTariff
    t: np.ndarray
    flags: np.ndarray
    energy: np.ndarray
    rate_energy: np.ndarray
    tier_energy: np.ndarray
    cost: np.ndarray
    version: np.ndarray
    cycle: np.ndarray
    cost_extra: Fraction
    state: MeterState

    def __len__(self) -> int:
        return len(self.t)

    @property
    def cost_fen(self) -> Fraction:
        """The exact cost of the batch in fen: hand it to `Accrual.add`."""
        return fen_from_cost(int(self.cost.sum(dtype=np.int64)) + self.cost_extra)

    @property
    def energy_units(self) -> Decimal:
        """Billed energy in kWh or m³."""
        return Decimal(int(self.energy.sum(dtype=np.int64))) / ENERGY_SCALE

    def flagged(self, flag: Flag) -> np.ndarray:
        return (self.flags & int(flag)) != 0

    def anomalies(self) -> list[tuple[dt.datetime, Flag]]:
        """Readings flagged with anything but BASELINE/GAP-free normal billing, for audit."""
        noteworthy = int(
            Flag.DECREASE
            | Flag.SPIKE
            | Flag.GAP
            | Flag.MISMATCH
            | Flag.ROLLOVER
            | Flag.REPLACED
            | Flag.CYCLE_SPAN
            | Flag.VERSION_SPAN
        )
        idx = np.nonzero(self.flags & noteworthy)[0]
        return [
            (dt.datetime.fromtimestamp(int(self.t[i]), dt.UTC), Flag(int(self.flags[i])))
            for i in idx
        ]

    def energy_by_rate(self) -> dict[str, Decimal]:
        """Billed energy per rate name (kWh or m³)."""
        out: dict[str, int] = {}
        for vi, names in enumerate(self.compiled.rate_names):
            rows = self.version == vi
            if not rows.any():
                continue
            sums = self.rate_energy[rows].sum(axis=0, dtype=np.int64)
            for c, name in enumerate(names):
                out[name or "tiered"] = out.get(name or "tiered", 0) + int(sums[c])
        return {k: Decimal(v) / ENERGY_SCALE for k, v in out.items() if v}

    def energy_by_tier(self) -> list[Decimal]:
        sums = self.tier_energy.sum(axis=0, dtype=np.int64)
        return [Decimal(int(s)) / ENERGY_SCALE for s in sums]


# -- the engine -----------------------------------------------------------------------------


class RatingEngine:
    """Rates batches of readings of meters of one model with one tariff (numpy).

    Build one per (tariff, model) and reuse it for every meter: `rate(readings, state)`
    returns the rated rows and the meter's next state. Pure: nothing is stored here.
    """

    def __init__(
        self,
        tariff: Tariff,
        layout: RegisterLayout,
        tz: ZoneInfo | str,
        *,
        register_rates: Sequence[str] | None = None,
        options: RatingOptions | None = None,
        small_batch: int = 16,
    ) -> None:
        self.compiled = CompiledTariff(tariff, layout, tz, register_rates)
        #: Batches of at most this many rows are rated by the pure-Python reference.
        self.small_batch = small_batch
        self.options = options or RatingOptions()
        self.layout = layout
        m = len(layout.points)
        self._used = np.asarray(list(range(m)) if self.compiled.time_of_use else [0], np.int64)
        self._factor = np.asarray(layout.unit_factor, np.int64)[self._used]
        mod = [layout.modulus[c] for c in self._used]
        self._modulus = np.asarray([x or 0 for x in mod], np.int64)
        win = self.options.rollover_window
        self._window = np.asarray(
            [(x * win.numerator) // win.denominator if x else -1 for x in mod], np.int64
        )
        mph = self.options.max_per_hour
        self._max_ph = None if mph is None else int(Decimal(str(mph)) * ENERGY_SCALE)
        self._slack = 2 * int(self._factor.max())
        self._all_used = len(self._used) == m
        # columns of the used registers that are billed, and the total column (if any)
        if self.compiled.time_of_use:
            cols = self.compiled.columns
            self._bill_cols = np.asarray(cols, np.int64)
            self._bill_slice = slice(cols[0], cols[-1] + 1)
            self._total_col = 0 if layout.has_total else -1
        else:
            self._bill_cols = np.asarray([0], np.int64)
            self._bill_slice = slice(0, 1)
            self._total_col = -1
        self._tolerance = int(self._factor[self._bill_cols].sum())

    # ---------------------------------------------------------------------------------
    def rate(
        self,
        readings: Readings,
        state: MeterState | None = None,
        replacements: Sequence[Replacement] = (),
    ) -> RatedBatch:
        """Rate a batch of one meter's readings (any order) from `state`.

        Small batches (a poll or two) go through the pure-Python reference, which has less
        overhead per call; property tests hold both implementations to identical results.
        """
        if len(readings) + 2 * len(replacements) <= self.small_batch:
            from .reference import rate_reference

            return rate_reference(self.compiled, readings, state, replacements, self.options)
        return self.rate_vectorised(readings, state, replacements)

    def rate_vectorised(
        self,
        readings: Readings,
        state: MeterState | None = None,
        replacements: Sequence[Replacement] = (),
    ) -> RatedBatch:
        """`rate` with numpy, whatever the batch size."""
        state = state or MeterState()
        t, counts, kind = self._rows(readings, replacements, state)
        n = len(t)
        compiled = self.compiled
        flags = np.zeros(n, np.int64)
        if state.last_t is not None:
            stale = (kind == 0) & (t <= state.last_t)
            any_stale = bool(stale.any())
        else:
            any_stale = False
        live = np.nonzero(~stale)[0] if any_stale else None
        Lt = t[live] if any_stale else t
        Lc = counts[live] if any_stale else counts
        Lk = kind[live] if any_stale else kind
        # the processing sequence: the state's baseline (if any), then the live rows;
        # its first row is always a baseline
        has_base = state.last_counts is not None
        if has_base:
            base_row = np.asarray(state.last_counts, np.int64).reshape(1, -1)
            Pt = np.concatenate([np.asarray([state.last_t], np.int64), Lt])
            Pfull = np.concatenate([base_row, Lc])
            Pk = np.concatenate([np.asarray([2], np.int64), Lk])
        else:
            Pt, Pfull, Pk = Lt, Lc, Lk.copy()
            if len(Pk):
                Pk[0] = 2  # the very first reading is a baseline
        PC = Pfull if self._all_used else Pfull[:, self._used]
        npr = len(Pt)
        is_base = Pk == 2
        base_rows = np.nonzero(is_base)[0]
        # fast path: each row against the one before it
        E, pflags, bad, base_idx = self._deltas(PC, Pt, None, base_rows)
        if bad.any():
            base_idx = self._held_baselines(PC, Pt, is_base)
            E, pflags, bad, base_idx = self._deltas(PC, Pt, base_idx, base_rows)
        accepted = ~bad
        accepted[base_rows] = False
        pflags[base_rows] |= int(Flag.BASELINE)
        pflags[Pk == 1] |= int(Flag.REPLACED)
        rejected = np.nonzero(~accepted)[0]
        E[rejected] = 0
        R = E[:, self._bill_slice]
        energy = R.sum(axis=1)
        if self._total_col >= 0:
            mism = np.abs(E[:, self._total_col] - energy) > self._tolerance
            mism[rejected] = False
            pflags[mism] |= int(Flag.MISMATCH)
        if base_idx is None:  # every row's baseline is the row before it
            bt = np.empty_like(Pt)
            if npr:
                bt[0] = Pt[0]
                bt[1:] = Pt[:-1]
        else:
            bt = np.where(base_idx >= 0, Pt[np.maximum(base_idx, 0)], Pt)
        if self.options.gap_s is not None:
            pflags[accepted & (Pt - bt > self.options.gap_s)] |= int(Flag.GAP)
        vs = compiled.version_starts
        if len(vs):
            vidx = np.searchsorted(vs, Pt, side="left")
            vspan = accepted & (vidx - np.searchsorted(vs, bt, side="right") > 0)
            pflags[vspan] |= int(Flag.VERSION_SPAN)
            single = npr == 0 or vidx[0] == vidx[-1]
        else:
            vidx = np.zeros(npr, np.int64)
            single = True
        v0 = int(vidx[0]) if npr else 0
        cost = R @ compiled.price[v0] if single else (R * compiled.price[vidx]).sum(axis=1)

        ntiers = compiled.ntiers
        TE = np.zeros((npr, ntiers), np.int64)
        cycle = np.full(npr, -1, np.int64)
        new_cycle_start, new_cycle_energy = state.cycle_start, state.cycle_energy
        extra = Fraction(0)
        acc_rows = np.nonzero(accepted)[0]
        if compiled.tiers is not None and npr:
            B = compiled.cycle_boundaries(int(Pt[0]), int(Pt[-1]))
            cidx = np.searchsorted(B, Pt, side="left")
            cycle = B[cidx - 1]
            cspan = accepted & (cidx - np.searchsorted(B, bt, side="right") > 0)
            pflags[cspan] |= int(Flag.CYCLE_SPAN)
            # energy accumulates per cycle over all rows (rejected rows carry 0); the
            # state's energy carries into its own cycle
            starts = np.flatnonzero(np.diff(cidx)) + 1
            cs = np.cumsum(energy)
            cum = cs.copy()
            # a state without a cycle start holds energy of the cycle of its first row
            own = state.cycle_start is None or state.cycle_start == int(cycle[0])
            carry = state.cycle_energy if own else 0
            cum += carry
            if len(starts):
                owner = np.zeros(npr, np.int64)
                owner[starts] = starts
                np.maximum.accumulate(owner, out=owner)
                before = np.where(owner > 0, cs[np.maximum(owner - 1, 0)], 0)
                cum -= before
                cum[owner > 0] -= carry
            prev = cum - energy
            th = self._row_thresholds(vidx, single, v0, cycle, state)
            lo = 0
            for j in range(ntiers):
                hi = th[:, j] if j < ntiers - 1 else _INF
                TE[:, j] = np.minimum(np.maximum(cum, lo), hi) - np.minimum(
                    np.maximum(prev, lo), hi
                )
                lo = hi
            if len(acc_rows):
                last_acc = int(acc_rows[-1])
                new_cycle_start = int(cycle[last_acc])
                new_cycle_energy = int(cum[last_acc])
            if not compiled.per_rate.any():
                flat = compiled.adders[:, :, 0]
                tier_cost = TE @ flat[v0] if single else (TE * flat[vidx]).sum(axis=1)
            else:
                nz = TE > 0
                jstar = np.argmax(nz, axis=1)
                tier_cost = (R * compiled.adders[vidx, jstar]).sum(axis=1)
                for i in np.flatnonzero(nz.sum(axis=1) > 1):
                    v = int(vidx[i])
                    if not compiled.per_rate[v]:
                        tier_cost[i] = int((TE[i] * compiled.adders[v, :, 0]).sum())
                        continue
                    exact = _split_cost(TE[i], R[i], compiled.adders[v])
                    floor = exact.numerator // exact.denominator
                    tier_cost[i] = floor
                    extra += exact - floor
            cost = cost + tier_cost
        # the new baseline: the last accepted or baseline row
        keep = max(
            int(acc_rows[-1]) if len(acc_rows) else -1, int(base_rows[-1]) if len(base_rows) else -1
        )
        if keep >= 0:
            new_state = replace(
                state,
                last_t=int(Pt[keep]),
                last_counts=tuple(int(x) for x in Pfull[keep]),
                cycle_start=new_cycle_start,
                cycle_energy=new_cycle_energy,
            )
        else:
            new_state = replace(state, cycle_start=new_cycle_start, cycle_energy=new_cycle_energy)
        # back to one row per input row
        off = 1 if has_base else 0
        if not any_stale:
            outputs = [a[off:] for a in (pflags, energy, R, TE, cost, vidx, cycle)]
            out_flags, out_energy, rate_energy, tier_energy, out_cost, out_version, out_cycle = (
                outputs
            )
        else:
            k = R.shape[1]
            out_flags = flags | int(Flag.STALE) * stale
            out_flags[live] |= pflags[off:]
            rate_energy = np.zeros((n, k), np.int64)
            rate_energy[live] = R[off:]
            tier_energy = np.zeros((n, ntiers), np.int64)
            tier_energy[live] = TE[off:]
            out_energy = np.zeros(n, np.int64)
            out_energy[live] = energy[off:]
            out_cost = np.zeros(n, np.int64)
            out_cost[live] = cost[off:]
            out_version = np.zeros(n, np.int64)
            out_version[live] = vidx[off:]
            out_cycle = np.full(n, -1, np.int64)
            out_cycle[live] = cycle[off:]
        return RatedBatch(
            compiled,
            t,
            out_flags,
            out_energy,
            np.ascontiguousarray(rate_energy),
            tier_energy,
            out_cost,
            out_version,
            out_cycle,
            extra,
            new_state,
        )

    def _row_thresholds(
        self,
        vidx: np.ndarray,
        single: bool,
        v0: int,
        cycle: np.ndarray,
        state: MeterState,
    ) -> np.ndarray:
        """Tier thresholds per row (internal units), prorated in the account's first cycle."""
        compiled = self.compiled
        factors = {}
        if state.opened_at is not None and compiled.tiers.proration.value != "none":
            for cstart in np.unique(cycle).tolist():
                f = compiled.proration(state.opened_at, int(cstart))
                if f != 1:
                    factors[cstart] = f
        if single and not factors:
            return compiled.thresholds[v0][None, :]
        th = compiled.thresholds[vidx]
        for cstart, f in factors.items():
            rows = cycle == cstart
            th[rows] = compiled.prorated_thresholds(f)[vidx[rows]]
        return th

    def _rows(
        self, readings: Readings, replacements: Sequence[Replacement], state: MeterState
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Times, counts and kinds (0 reading, 1 old meter's final, 2 new meter's initial),
        sorted by time."""
        t = np.asarray(readings.t, np.int64)
        counts = np.asarray(readings.counts, np.int64).reshape(len(t), len(self.layout.points))
        kind = np.zeros(len(t), np.int64)
        if replacements:
            extra_t, extra_c, extra_k = [], [], []
            for rep in replacements:
                at = epoch(rep.at)
                if state.last_t is not None and at <= state.last_t:
                    raise RatingError(
                        "a replacement must be later than the meter's last rated reading"
                    )
                extra_t += [at, at]
                extra_c += [rep.old_final, rep.new_initial]
                extra_k += [1, 2]
            t = np.concatenate([t, np.asarray(extra_t, np.int64)])
            counts = np.concatenate([counts, np.asarray(extra_c, np.int64)])
            kind = np.concatenate([kind, np.asarray(extra_k, np.int64)])
            order = np.lexsort((kind, t))
            return t[order], counts[order], kind[order]
        if len(t) > 1 and (np.diff(t) < 0).any():
            order = np.argsort(t, kind="stable")
            return t[order], counts[order], kind
        return t, counts, kind

    def _deltas(
        self,
        PC: np.ndarray,
        Pt: np.ndarray,
        base_idx: np.ndarray | None,
        base_rows: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Energy (internal units) per register since each row's baseline — the row
        before it when `base_idx` is None — with rollover, DECREASE and SPIKE flags."""
        npr = len(PC)
        pflags = np.zeros(npr, np.int64)
        bad = np.zeros(npr, bool)
        if npr == 0:
            return np.zeros_like(PC), pflags, bad, base_idx
        if base_idx is None:
            D = np.empty_like(PC)
            D[0] = 0
            np.subtract(PC[1:], PC[:-1], out=D[1:])
            dt_s = np.empty_like(Pt)
            dt_s[0] = 0
            np.subtract(Pt[1:], Pt[:-1], out=dt_s[1:])
        else:
            bi = np.maximum(base_idx, 0)
            D = PC - PC[bi]
            dt_s = Pt - Pt[bi]
        D[base_rows] = 0
        neg = D < 0
        if neg.any():
            mod = np.where(self._modulus > 0, self._modulus, 1)
            wrapped = np.mod(D, mod[None, :])
            roll = neg & (self._modulus[None, :] > 0) & (wrapped <= self._window[None, :])
            D = np.where(roll, wrapped, D)
            pflags[roll.any(axis=1)] |= int(Flag.ROLLOVER)
            dec = (neg & ~roll).any(axis=1)
            pflags[dec] |= int(Flag.DECREASE)
            bad |= dec
        E = D * self._factor
        if self._max_ph is not None:
            e = E[:, self._bill_slice].sum(axis=1)
            cap = (self._max_ph * dt_s) // 3600 + self._slack
            spike = ~bad & (e > cap)
            pflags[spike] |= int(Flag.SPIKE)
            bad |= spike
        bad[base_rows] = False
        pflags[base_rows] = 0
        return E, pflags, bad, base_idx

    def _held_baselines(self, PC: np.ndarray, Pt: np.ndarray, is_base: np.ndarray) -> np.ndarray:
        """Baseline index per row when rejected readings hold the baseline (slow path,
        only for batches that contain a DECREASE or SPIKE)."""
        npr = len(PC)
        out = np.full(npr, -1, np.int64)
        modulus = self._modulus.tolist()
        window = self._window.tolist()
        factor = self._factor.tolist()
        bill = set(self._bill_cols.tolist())
        rows = PC.tolist()
        times = Pt.tolist()
        base = -1
        for i in range(npr):
            if is_base[i]:
                base = i
                continue
            out[i] = base
            if base < 0:
                continue
            ok = True
            e = 0
            for c, (a, b) in enumerate(zip(rows[i], rows[base], strict=True)):
                d = a - b
                if d < 0:
                    m = modulus[c]
                    if m and (d % m) <= window[c]:
                        d %= m
                    else:
                        ok = False
                        break
                if c in bill:
                    e += d * factor[c]
            if ok and self._max_ph is not None:
                ok = e <= (self._max_ph * (times[i] - times[base])) // 3600 + self._slack
            if ok:
                base = i
        return out


def _split_cost(te: np.ndarray, r: np.ndarray, adders: np.ndarray) -> Fraction:
    """Exact tier cost of an interval that crosses thresholds under M2: the energy of each
    tier is split across the rates pro-rata to the interval's rate energy."""
    total = int(r.sum())
    out = Fraction(0)
    for j, e in enumerate(te.tolist()):
        if e:
            for c, rc in enumerate(r.tolist()):
                if rc:
                    out += Fraction(e * rc * int(adders[j, c]), total)
    return out


# -- bills from totals (worked examples, calculators, post-paid lines) -----------------------


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


def fen_text(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"
