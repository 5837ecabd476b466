"""The result of rating one batch of one meter's readings (`RatedBatch`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

import numpy as np

from .checks import Flag
from .compiled import CompiledTariff
from .layout import MeterState
from .rounding import fen_from_cost
from .units import ENERGY_SCALE


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

    def as_rows(self) -> RatedRows:
        return RatedRows(
            self.compiled,
            self.t.tolist(),
            self.flags.tolist(),
            self.energy.tolist(),
            self.rate_energy.tolist(),
            self.cost.tolist(),
            self.version.tolist(),
            self.cost_extra,
            self.state,
        )


@dataclass(slots=True)
class RatedRows:
    """A `RatedBatch` as plain Python lists, one entry per row (the same rows and meaning).

    The service rates a poll or two per meter at a time; numpy's fixed cost per array
    operation is most of the work at that size, so metering reads these lists instead.
    """

    compiled: CompiledTariff
    t: list[int]
    flags: list[int]
    energy: list[int]
    rate_energy: list[list[int]]
    cost: list[int]
    version: list[int]
    cost_extra: Fraction
    state: MeterState

    def __len__(self) -> int:
        return len(self.t)

    @property
    def cost_fen(self) -> Fraction:
        """The exact cost of the rows in fen: hand it to `Accrual.add`."""
        return fen_from_cost(sum(self.cost) + self.cost_extra)
