"""Which registers of a model are rated (`RegisterLayout`), batches of `Readings`, meter
`Replacement`s and what the engine remembers per meter between batches (`MeterState`)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np

from ..model import DeviceModel, Sample
from .errors import RatingError
from .units import ENERGY_SCALE


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
        return self.readings_of_rows(self.rows_from_samples(samples))

    def rows_from_samples(self, samples: Iterable[Sample]) -> list[tuple[int, list[int]]]:
        """`from_samples` as (epoch seconds, register counts) pairs, without numpy (the
        service rates a poll or two at a time). The counts round half to even, as
        `numpy.rint` does."""
        rows = []
        steps = [float(r) for r in self.resolution]
        points = self.points
        for s in samples:
            if not s.quality.is_good:
                continue
            values = s.values
            if any(p not in values or not s.quality_of(p).is_good for p in points):
                continue
            scaled = [float(values[p]) / step for p, step in zip(points, steps, strict=True)]
            if not all(map(math.isfinite, scaled)):
                continue  # not a reading of the register (a NaN has no count to bill)
            counts = [round(x) for x in scaled]
            rows.append((int(s.read_at.timestamp()), counts))
        return rows

    def readings_of_rows(self, rows: Sequence[tuple[int, Sequence[int]]]) -> Readings:
        t = np.asarray([r[0] for r in rows], np.int64)
        counts = np.asarray([r[1] for r in rows], np.int64).reshape(len(rows), len(self.points))
        return Readings(t, counts)


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

    def as_tuple(self) -> tuple[Any, ...]:
        """The fields in order (`MeterState(*fields)` builds the state again): what a
        holder of a state for the meter's life keeps (see `prepay.meter_book`)."""
        return (self.last_t, self.last_counts, self.cycle_start, self.cycle_energy, self.opened_at)

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
