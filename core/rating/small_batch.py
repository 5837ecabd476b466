"""The scalar path of the rating engine: a poll or two of one meter, in plain Python ints.

numpy pays a fixed cost per array operation, which dominates when a batch holds one or a few
readings (the service rates every poll as it arrives). `SmallBatchRater` walks the rows one
by one instead, over the same `CompiledTariff` tables and `RegisterChecks` as the vectorised
path, and returns identical rows; property tests hold both paths and the test oracle to that.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction

import numpy as np

from .checks import Flag, RegisterChecks
from .compiled import NO_LIMIT, CompiledTariff
from .errors import RatingError
from .layout import MeterState, Readings, Replacement, epoch
from .rated import RatedBatch, RatedRows

_STALE = int(Flag.STALE)
_BASELINE = int(Flag.BASELINE)
_REPLACED = int(Flag.REPLACED)
_ROLLOVER = int(Flag.ROLLOVER)
_DECREASE = int(Flag.DECREASE)
_SPIKE = int(Flag.SPIKE)
_MISMATCH = int(Flag.MISMATCH)
_GAP = int(Flag.GAP)
_VERSION_SPAN = int(Flag.VERSION_SPAN)
_CYCLE_SPAN = int(Flag.CYCLE_SPAN)
#: Kinds of row: a reading, the old meter's final reading, the new meter's initial one.
_READING, _OLD_FINAL, _NEW_INITIAL = 0, 1, 2
#: Proration factors kept per (account opening, cycle start) before the cache starts over.
_PRORATION_CACHE = 4096


class SmallBatchRater:
    """Rates a small batch of one meter's readings row by row (see the module docstring)."""

    def __init__(self, compiled: CompiledTariff, checks: RegisterChecks) -> None:
        self.compiled = compiled
        self.checks = checks
        self._price = compiled.price.tolist()
        self._adders = compiled.adders.tolist()
        self._thresholds = compiled.thresholds.tolist()
        self._per_rate = compiled.per_rate.tolist()
        self._version_starts = compiled.version_starts.tolist()
        self._prorates = compiled.tiers is not None and compiled.tiers.proration.value != "none"
        self._prorated: dict[tuple[int, int], list[int]] = {}

    def rate(
        self,
        readings: Readings,
        state: MeterState | None,
        replacements: Sequence[Replacement] = (),
    ) -> RatedBatch:
        """`RatingEngine.rate` for a small batch."""
        rows = list(zip(readings.t.tolist(), readings.counts.tolist(), strict=True))
        out, extra, new_state = self._rate(rows, state or MeterState(), replacements)
        return self._batch(out, len(self.checks.bill), self.compiled.ntiers, extra, new_state)

    def rate_rows(
        self,
        readings: Sequence[tuple[int, list[int]]],
        state: MeterState | None,
        replacements: Sequence[Replacement] = (),
    ) -> RatedRows:
        """`rate` of readings given as (epoch seconds, register counts) pairs, with the
        result as lists (`RatedRows`): no numpy at all on the way."""
        out, extra, new_state = self._rate(list(readings), state or MeterState(), replacements)
        k = len(self.checks.bill)
        return RatedRows(
            self.compiled,
            [r[0] for r in out],
            [r[1] for r in out],
            [r[2] for r in out],
            [r[6 : 6 + k] for r in out],
            [r[3] for r in out],
            [r[4] for r in out],
            extra,
            new_state,
        )

    def _rate(
        self,
        readings: list[tuple[int, list[int]]],
        state: MeterState,
        replacements: Sequence[Replacement],
    ) -> tuple[list[list[int]], Fraction, MeterState]:
        """The rated rows (time, flags, energy, cost, version, cycle, per rate, per tier),
        the exact remainder of the cost and the meter's next state."""
        ck = self.checks
        rows = self._rows(readings, replacements, state)
        cycles: list[int] = []
        if self.compiled.tiers is not None and rows:
            lo = rows[0][0] if state.last_t is None else min(rows[0][0], state.last_t)
            cycles = self.compiled.cycle_boundary_list(lo, rows[-1][0])
        stale_until = state.last_t
        base_t, base = state.last_t, state.last_counts
        cycle_start, cycle_energy = state.cycle_start, state.cycle_energy
        # a state without a cycle start holds energy of the cycle of its baseline (or of the
        # first live reading when it has none)
        origin = _cycle_of(cycles, base_t) if cycles and base_t is not None else None
        ntiers = self.compiled.ntiers
        k = len(ck.bill)
        out: list[list[int]] = []
        extra = Fraction(0)
        for t, kind, counts in rows:
            version = bisect.bisect_left(self._version_starts, t)
            cyc = _cycle_of(cycles, t) if cycles else -1
            if kind == _READING and stale_until is not None and t <= stale_until:
                out.append([t, _STALE, 0, 0, 0, -1, *([0] * (k + ntiers))])
                continue
            if origin is None and cycles:
                origin = cyc
            if kind == _NEW_INITIAL or base is None or base_t is None:
                base, base_t = counts, t
                out.append([t, _BASELINE, 0, 0, version, cyc, *([0] * (k + ntiers))])
                continue
            flags, deltas = self._deltas(counts, base, t - base_t)
            if kind == _OLD_FINAL:
                flags |= _REPLACED
            if deltas is None:
                out.append([t, flags, 0, 0, version, cyc, *([0] * (k + ntiers))])
                continue
            rate_e = deltas[ck.bill[0] : ck.bill[-1] + 1]
            energy = sum(rate_e)
            flags |= self._interval_flags(deltas, energy, t, base_t, cycles)
            cost = sum(map(operator.mul, rate_e, self._price[version]))
            tier_e = [0] * ntiers
            if cycles:
                if cycle_start is None:
                    cycle_start = origin
                if cyc != cycle_start:
                    cycle_start, cycle_energy = cyc, 0
                ths = self._row_thresholds(version, state.opened_at, cyc)
                tier_e = _tier_split(cycle_energy, cycle_energy + energy, ths, ntiers)
                cycle_energy += energy
                tier_cost, tier_extra = self._tier_cost(version, rate_e, tier_e, energy)
                cost += tier_cost
                if tier_extra:
                    extra += tier_extra
            base, base_t = counts, t
            out.append([t, flags, energy, cost, version, cyc, *rate_e, *tier_e])
        new_state = replace(
            state,
            last_t=base_t,
            last_counts=None if base is None else tuple(base),
            cycle_start=cycle_start,
            cycle_energy=cycle_energy,
        )
        return out, extra, new_state

    def _rows(
        self,
        readings: list[tuple[int, list[int]]],
        replacements: Sequence[Replacement],
        state: MeterState,
    ) -> list[tuple[int, int, list[int]]]:
        """(time, kind, counts) per row, sorted by time (the old meter's final first)."""
        rows = [(t, _READING, c) for t, c in readings]
        for rep in replacements:
            at = epoch(rep.at)
            if state.last_t is not None and at <= state.last_t:
                raise RatingError("a replacement must be later than the meter's last rated reading")
            rows.append((at, _OLD_FINAL, list(rep.old_final)))
            rows.append((at, _NEW_INITIAL, list(rep.new_initial)))
        if len(rows) > 1:
            rows.sort(key=lambda r: (r[0], r[1]))
        return rows

    def _deltas(
        self, counts: Sequence[int], base: Sequence[int], seconds: int
    ) -> tuple[int, list[int] | None]:
        """Flags and energy per used register since the baseline; None when the reading is
        rejected (DECREASE or SPIKE) and holds the baseline."""
        ck = self.checks
        flags = 0
        ok = True
        deltas = []
        for p, c in enumerate(ck.used):
            d = counts[c] - base[c]
            if d < 0:
                m = ck.modulus[p]
                if m and d % m <= ck.window[p]:
                    d %= m
                    flags |= _ROLLOVER
                else:
                    flags |= _DECREASE
                    ok = False
            deltas.append(d * ck.factor[p])
        if ok and ck.max_per_hour is not None:
            billed = sum(deltas[ck.bill[0] : ck.bill[-1] + 1])
            if billed > (ck.max_per_hour * seconds) // 3600 + ck.slack:
                flags |= _SPIKE
                ok = False
        return flags, deltas if ok else None

    def _interval_flags(
        self, deltas: list[int], energy: int, t: int, base_t: int, cycles: list[int]
    ) -> int:
        """MISMATCH, GAP, VERSION_SPAN and CYCLE_SPAN of an accepted interval."""
        ck = self.checks
        flags = 0
        if ck.total >= 0 and abs(deltas[ck.total] - energy) > ck.tolerance:
            flags |= _MISMATCH
        if ck.gap_s is not None and t - base_t > ck.gap_s:
            flags |= _GAP
        vs = self._version_starts
        if bisect.bisect_left(vs, t) > bisect.bisect_right(vs, base_t):
            flags |= _VERSION_SPAN
        if cycles and bisect.bisect_left(cycles, t) > bisect.bisect_right(cycles, base_t):
            flags |= _CYCLE_SPAN
        return flags

    def _row_thresholds(self, version: int, opened_at: int | None, cycle: int) -> list[int]:
        """Tier thresholds of a version, prorated in the account's first cycle."""
        ths = self._thresholds[version]
        if opened_at is None or not self._prorates:
            return ths
        key = (opened_at, cycle)
        factors = self._prorated
        if key not in factors:
            if len(factors) >= _PRORATION_CACHE:
                factors.clear()
            f = self.compiled.proration(opened_at, cycle)
            factors[key] = [] if f == 1 else [f.numerator, f.denominator]
        f = factors[key]
        if not f:
            return ths
        return [th if th >= NO_LIMIT else (th * f[0]) // f[1] for th in ths]

    def _tier_cost(
        self, version: int, rate_e: list[int], tier_e: list[int], energy: int
    ) -> tuple[int, Fraction | int]:
        """Tier adders of an interval: whole cost units and the exact remainder (0 but for
        an M2 interval split pro-rata across a threshold)."""
        adders = self._adders[version]
        used_tiers = [j for j, e in enumerate(tier_e) if e]
        if len(used_tiers) <= 1:
            j = used_tiers[0] if used_tiers else 0
            return sum(map(operator.mul, rate_e, adders[j])), 0
        if not self._per_rate[version]:
            return sum(e * adders[j][0] for j, e in enumerate(tier_e)), 0
        exact = Fraction(0)
        for j in used_tiers:
            for c, rc in enumerate(rate_e):
                if rc:
                    exact += Fraction(tier_e[j] * rc * adders[j][c], energy)
        floor = exact.numerator // exact.denominator
        return floor, exact - floor

    def _batch(
        self, out: list[list[int]], k: int, ntiers: int, extra: Fraction, state: MeterState
    ) -> RatedBatch:
        """The rows as one integer table, cut into the batch's arrays."""
        table = np.array(out, np.int64).reshape(len(out), 6 + k + ntiers)
        return RatedBatch(
            self.compiled,
            table[:, 0].copy(),
            table[:, 1].copy(),
            table[:, 2].copy(),
            table[:, 6 : 6 + k].copy(),
            table[:, 6 + k :].copy(),
            table[:, 3].copy(),
            table[:, 4].copy(),
            table[:, 5].copy(),
            extra,
            state,
        )


def _cycle_of(cycles: list[int], t: int) -> int:
    """Start of the tier cycle an instant belongs to (one on a boundary: the cycle before)."""
    return cycles[bisect.bisect_left(cycles, t) - 1]


def _tier_split(before: int, after: int, thresholds: list[int], ntiers: int) -> list[int]:
    """Energy per tier of the cycle energy going from `before` to `after`."""
    out = []
    lo = 0
    for j in range(ntiers):
        hi = thresholds[j] if j < ntiers - 1 else NO_LIMIT
        out.append(min(max(after, lo), hi) - min(max(before, lo), hi))
        lo = hi
    return out
