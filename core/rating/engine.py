"""The rating engine: a batch of readings of one meter rated with numpy.

`RatingEngine.rate` hands a poll or two to the scalar path (`small_batch`), which has less
overhead per call, and everything larger to `rate_vectorised`. Both give identical rows;
property tests hold them and the test oracle (`tests/core/rating/reference.py`) to that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction
from zoneinfo import ZoneInfo

import numpy as np

from .checks import Flag, RatingOptions, RegisterChecks
from .compiled import NO_LIMIT, CompiledTariff
from .errors import RatingError
from .layout import MeterState, Readings, RegisterLayout, Replacement, epoch
from .rated import RatedBatch, RatedRows
from .small_batch import SmallBatchRater
from .tariffs import Tariff


class RatingEngine:
    """Rates batches of readings of meters of one model with one tariff.

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
        #: Batches of at most this many rows are rated by the scalar path.
        self.small_batch = small_batch
        self.options = options or RatingOptions()
        self.layout = layout
        self.checks = RegisterChecks.of(self.compiled, self.options)
        self._small = SmallBatchRater(self.compiled, self.checks)
        ck = self.checks
        self._used = np.asarray(ck.used, np.int64)
        self._all_used = len(ck.used) == len(layout.points)
        self._factor = np.asarray(ck.factor, np.int64)
        self._modulus = np.asarray(ck.modulus, np.int64)
        self._window = np.asarray(ck.window, np.int64)
        self._max_ph = ck.max_per_hour
        self._slack = ck.slack
        self._bill_cols = np.asarray(ck.bill, np.int64)
        self._bill_slice = slice(ck.bill[0], ck.bill[-1] + 1)
        self._total_col = ck.total
        self._tolerance = ck.tolerance

    # ---------------------------------------------------------------------------------
    def rate(
        self,
        readings: Readings,
        state: MeterState | None = None,
        replacements: Sequence[Replacement] = (),
    ) -> RatedBatch:
        """Rate a batch of one meter's readings (any order) from `state`.

        Small batches (a poll or two) go through the scalar path, which has less overhead
        per call; property tests hold both paths to identical results.
        """
        if len(readings) + 2 * len(replacements) <= self.small_batch:
            return self._small.rate(readings, state, replacements)
        return self.rate_vectorised(readings, state, replacements)

    def rate_rows(
        self,
        readings: Sequence[tuple[int, list[int]]],
        state: MeterState | None = None,
        replacements: Sequence[Replacement] = (),
    ) -> RatedRows:
        """`rate` of (epoch seconds, register counts) pairs, the result as lists: what the
        service's metering calls for every poll (`RegisterLayout.rows_from_samples`)."""
        if len(readings) + 2 * len(replacements) <= self.small_batch:
            return self._small.rate_rows(readings, state, replacements)
        return self.rate_vectorised(
            self.layout.readings_of_rows(readings), state, replacements
        ).as_rows()

    def rate_vectorised(
        self,
        readings: Readings,
        state: MeterState | None = None,
        replacements: Sequence[Replacement] = (),
    ) -> RatedBatch:
        """`rate` with numpy, whatever the batch size.

        The steps work on the *processing sequence*: the state's baseline (if any), then the
        live (not stale) rows in time order; its first row is always a baseline.
        """
        state = state or MeterState()
        t, counts, kind = self._rows(readings, replacements, state)
        live = self._live_rows(t, kind, state)
        Pt, Pfull, Pk = self._sequence(t, counts, kind, live, state)
        E, pflags, accepted, base_idx, base_rows = self._accept(Pfull, Pt, Pk)
        R = E[:, self._bill_slice]
        energy = R.sum(axis=1)
        if self._total_col >= 0:
            mism = accepted & (np.abs(E[:, self._total_col] - energy) > self._tolerance)
            pflags[mism] |= int(Flag.MISMATCH)
        bt = self._baseline_times(Pt, base_idx)
        if self.options.gap_s is not None:
            pflags[accepted & (Pt - bt > self.options.gap_s)] |= int(Flag.GAP)
        vidx, single, v0 = self._versions(Pt, bt, accepted, pflags)
        price = self.compiled.price
        cost = R @ price[v0] if single else (R * price[vidx]).sum(axis=1)
        acc_rows = np.nonzero(accepted)[0]
        TE, cycle, tier_cost, extra, cycle_start, cycle_energy = self._tiers(
            Pt, bt, energy, R, accepted, acc_rows, pflags, vidx, single, v0, state
        )
        if tier_cost is not None:
            cost = cost + tier_cost
        new_state = self._next_state(
            state, Pt, Pfull, acc_rows, base_rows, cycle_start, cycle_energy
        )
        off = 1 if state.last_counts is not None else 0
        per_row = [a[off:] for a in (pflags, energy, R, TE, cost, vidx, cycle)]
        if live is not None:
            per_row = self._with_stale_rows(per_row, len(t), live)
        out_flags, out_energy, rate_energy, tier_energy, out_cost, out_version, out_cycle = per_row
        return RatedBatch(
            self.compiled,
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

    @staticmethod
    def _live_rows(t: np.ndarray, kind: np.ndarray, state: MeterState) -> np.ndarray | None:
        """Indices of the rows that are not stale (at or before the baseline time), or None
        when none is stale."""
        if state.last_t is None:
            return None
        stale = (kind == 0) & (t <= state.last_t)
        if not stale.any():
            return None
        return np.nonzero(~stale)[0]

    @staticmethod
    def _sequence(
        t: np.ndarray,
        counts: np.ndarray,
        kind: np.ndarray,
        live: np.ndarray | None,
        state: MeterState,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Times, counts and kinds of the processing sequence (kind 2 marks a baseline)."""
        Lt, Lc, Lk = (t, counts, kind) if live is None else (t[live], counts[live], kind[live])
        if state.last_counts is not None:
            base_row = np.asarray(state.last_counts, np.int64).reshape(1, -1)
            Pt = np.concatenate([np.asarray([state.last_t], np.int64), Lt])
            Pfull = np.concatenate([base_row, Lc])
            Pk = np.concatenate([np.asarray([2], np.int64), Lk])
            return Pt, Pfull, Pk
        Pk = Lk.copy()
        if len(Pk):
            Pk[0] = 2  # the very first reading is a baseline
        return Lt, Lc, Pk

    def _accept(
        self, Pfull: np.ndarray, Pt: np.ndarray, Pk: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """Energy per used register since each row's baseline (0 for rows not billed), the
        row flags, which rows are accepted, each row's baseline index (None: the row before
        it) and the baseline rows."""
        PC = Pfull if self._all_used else Pfull[:, self._used]
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
        E[~accepted] = 0
        return E, pflags, accepted, base_idx, base_rows

    @staticmethod
    def _baseline_times(Pt: np.ndarray, base_idx: np.ndarray | None) -> np.ndarray:
        """The time of each row's baseline (its own time for a baseline row)."""
        if base_idx is not None:
            return np.where(base_idx >= 0, Pt[np.maximum(base_idx, 0)], Pt)
        # every row's baseline is the row before it
        bt = np.empty_like(Pt)
        if len(Pt):
            bt[0] = Pt[0]
            bt[1:] = Pt[:-1]
        return bt

    def _versions(
        self, Pt: np.ndarray, bt: np.ndarray, accepted: np.ndarray, pflags: np.ndarray
    ) -> tuple[np.ndarray, bool, int]:
        """Tariff version per row (flagging VERSION_SPAN), whether one version covers all
        rows, and the first row's version."""
        vs = self.compiled.version_starts
        npr = len(Pt)
        if not len(vs):
            return np.zeros(npr, np.int64), True, 0
        vidx = np.searchsorted(vs, Pt, side="left")
        vspan = accepted & (vidx - np.searchsorted(vs, bt, side="right") > 0)
        pflags[vspan] |= int(Flag.VERSION_SPAN)
        single = npr == 0 or vidx[0] == vidx[-1]
        return vidx, single, int(vidx[0]) if npr else 0

    def _tiers(
        self,
        Pt: np.ndarray,
        bt: np.ndarray,
        energy: np.ndarray,
        R: np.ndarray,
        accepted: np.ndarray,
        acc_rows: np.ndarray,
        pflags: np.ndarray,
        vidx: np.ndarray,
        single: bool,
        v0: int,
        state: MeterState,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Fraction, int | None, int]:
        """Energy per tier, tier cycle start and tier cost per row (None without tiers),
        the exact M2 remainder, and the cycle start and energy after the last accepted row.
        Flags CYCLE_SPAN."""
        compiled = self.compiled
        npr = len(Pt)
        TE = np.zeros((npr, compiled.ntiers), np.int64)
        cycle = np.full(npr, -1, np.int64)
        if compiled.tiers is None or not npr:
            return TE, cycle, None, Fraction(0), state.cycle_start, state.cycle_energy
        B = compiled.cycle_boundaries(int(Pt[0]), int(Pt[-1]))
        cidx = np.searchsorted(B, Pt, side="left")
        cycle = B[cidx - 1]
        cspan = accepted & (cidx - np.searchsorted(B, bt, side="right") > 0)
        pflags[cspan] |= int(Flag.CYCLE_SPAN)
        cum = self._cycle_energy(energy, cidx, cycle, state)
        th = self._row_thresholds(vidx, single, v0, cycle, state)
        _fill_tier_energy(TE, cum, cum - energy, th)
        cycle_start, cycle_energy = state.cycle_start, state.cycle_energy
        if len(acc_rows):
            last_acc = int(acc_rows[-1])
            cycle_start, cycle_energy = int(cycle[last_acc]), int(cum[last_acc])
        tier_cost, extra = self._tier_cost(TE, R, vidx, single, v0)
        return TE, cycle, tier_cost, extra, cycle_start, cycle_energy

    @staticmethod
    def _cycle_energy(
        energy: np.ndarray, cidx: np.ndarray, cycle: np.ndarray, state: MeterState
    ) -> np.ndarray:
        """Cycle energy after each row: energy accumulates per cycle over all rows (rejected
        rows carry 0); the state's energy carries into its own cycle."""
        starts = np.flatnonzero(np.diff(cidx)) + 1
        cs = np.cumsum(energy)
        cum = cs.copy()
        # a state without a cycle start holds energy of the cycle of its first row
        own = state.cycle_start is None or state.cycle_start == int(cycle[0])
        carry = state.cycle_energy if own else 0
        cum += carry
        if len(starts):
            owner = np.zeros(len(energy), np.int64)
            owner[starts] = starts
            np.maximum.accumulate(owner, out=owner)
            before = np.where(owner > 0, cs[np.maximum(owner - 1, 0)], 0)
            cum -= before
            cum[owner > 0] -= carry
        return cum

    def _tier_cost(
        self, TE: np.ndarray, R: np.ndarray, vidx: np.ndarray, single: bool, v0: int
    ) -> tuple[np.ndarray, Fraction]:
        """Tier adders per row (M1 per tier, M2 per tier and rate) and the exact remainder
        of M2 intervals split pro-rata across a threshold."""
        compiled = self.compiled
        extra = Fraction(0)
        if not compiled.per_rate.any():
            flat = compiled.adders[:, :, 0]
            return (TE @ flat[v0] if single else (TE * flat[vidx]).sum(axis=1)), extra
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
        return tier_cost, extra

    @staticmethod
    def _next_state(
        state: MeterState,
        Pt: np.ndarray,
        Pfull: np.ndarray,
        acc_rows: np.ndarray,
        base_rows: np.ndarray,
        cycle_start: int | None,
        cycle_energy: int,
    ) -> MeterState:
        """The new baseline is the last accepted or baseline row."""
        keep = max(
            int(acc_rows[-1]) if len(acc_rows) else -1, int(base_rows[-1]) if len(base_rows) else -1
        )
        if keep < 0:
            return replace(state, cycle_start=cycle_start, cycle_energy=cycle_energy)
        return replace(
            state,
            last_t=int(Pt[keep]),
            last_counts=tuple(int(x) for x in Pfull[keep]),
            cycle_start=cycle_start,
            cycle_energy=cycle_energy,
        )

    @staticmethod
    def _with_stale_rows(per_row: list[np.ndarray], n: int, live: np.ndarray) -> list[np.ndarray]:
        """Per-row arrays of the live rows spread back over all `n` input rows; the stale
        ones are flagged STALE and carry nothing (cycle -1)."""
        flags, energy, R, TE, cost, vidx, cycle = per_row
        out_flags = np.full(n, int(Flag.STALE), np.int64)
        out_flags[live] = flags
        rate_energy = np.zeros((n, R.shape[1]), np.int64)
        rate_energy[live] = R
        tier_energy = np.zeros((n, TE.shape[1]), np.int64)
        tier_energy[live] = TE
        out_energy = np.zeros(n, np.int64)
        out_energy[live] = energy
        out_cost = np.zeros(n, np.int64)
        out_cost[live] = cost
        out_version = np.zeros(n, np.int64)
        out_version[live] = vidx
        out_cycle = np.full(n, -1, np.int64)
        out_cycle[live] = cycle
        return [out_flags, out_energy, rate_energy, tier_energy, out_cost, out_version, out_cycle]

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


def _fill_tier_energy(TE: np.ndarray, cum: np.ndarray, prev: np.ndarray, th: np.ndarray) -> None:
    """Energy per tier of each row whose cycle energy goes from `prev` to `cum`."""
    ntiers = TE.shape[1]
    lo = 0
    for j in range(ntiers):
        hi = th[:, j] if j < ntiers - 1 else NO_LIMIT
        TE[:, j] = np.minimum(np.maximum(cum, lo), hi) - np.minimum(np.maximum(prev, lo), hi)
        lo = hi


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
