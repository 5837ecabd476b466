"""A pure-Python rating of one meter, reading by reading: the test oracle for the engine.

It implements the rules of `core/rating/` in the most direct way (one loop, Python ints,
`bisect` for calendars) and shares only the tariff's integer tables (`CompiledTariff`)
with the product. Tests check that the vectorised path (`RatingEngine.rate_vectorised`) and
the scalar small-batch path (`core/rating/small_batch.py`) produce identical rows to it on
random inputs. Production code never imports it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import replace
from fractions import Fraction

import numpy as np

from openprepay.core.rating.checks import Flag, RatingOptions
from openprepay.core.rating.compiled import NO_LIMIT, CompiledTariff
from openprepay.core.rating.errors import RatingError
from openprepay.core.rating.layout import MeterState, Readings, Replacement, epoch
from openprepay.core.rating.rated import RatedBatch


def rate_reference(
    compiled: CompiledTariff,
    readings: Readings,
    state: MeterState | None = None,
    replacements: Sequence[Replacement] = (),
    options: RatingOptions | None = None,
) -> RatedBatch:
    """Rate `readings` from `state` reading by reading, as `RatingEngine.rate` does.

    Long because it is the oracle: one loop that reads top to bottom like the rules in
    `core/rating/__init__.py`, with nothing factored out that the product also uses.
    """
    state = state or MeterState()
    options = options or RatingOptions()
    layout = compiled.layout
    tou = compiled.time_of_use
    used = list(range(len(layout.points))) if tou else [0]
    bill = list(compiled.columns) if tou else [0]
    total_col = 0 if (tou and layout.has_total) else None
    factor = layout.unit_factor
    modulus = layout.modulus
    win = options.rollover_window
    window = [None if m is None else (m * win.numerator) // win.denominator for m in modulus]
    max_ph = (
        None if options.max_per_hour is None else int(options.max_per_hour * 1000)  # kWh/h → Wh/h
    )
    slack = 2 * max(factor[c] for c in used)
    version_starts = compiled.version_starts.tolist()
    price = compiled.price.tolist()
    adders = compiled.adders.tolist()
    thresholds = compiled.thresholds.tolist()
    ntiers = compiled.ntiers
    inf = int(NO_LIMIT)

    rows: list[tuple[int, int, tuple[int, ...]]] = [
        (int(t), 0, tuple(int(x) for x in c))
        for t, c in zip(readings.t.tolist(), readings.counts.tolist(), strict=True)
    ]
    for rep in replacements:
        at = epoch(rep.at)
        if state.last_t is not None and at <= state.last_t:
            raise RatingError("a replacement must be later than the meter's last rated reading")
        rows.append((at, 1, tuple(rep.old_final)))
        rows.append((at, 2, tuple(rep.new_initial)))
    rows.sort(key=lambda r: (r[0], r[1]))

    start_t = state.last_t
    base_t = state.last_t
    base = state.last_counts
    cycle_start = state.cycle_start
    cycle_energy = state.cycle_energy
    cycles: list[int] = []
    if compiled.tiers is not None and rows:
        lo = min(r[0] for r in rows)
        lo = min(lo, base_t) if base_t is not None else lo
        cycles = compiled.cycle_boundaries(lo, max(r[0] for r in rows)).tolist()

    out_t, out_flags, out_energy, out_rate, out_tier, out_cost, out_v, out_cycle = (
        [],
        [],
        [],
        [],
        [],
        [],
        [],
        [],
    )
    extra = Fraction(0)
    k = len(bill)
    # a state without a cycle start holds energy of the cycle of its baseline (or of the
    # first reading when it has none)
    origin = None
    if cycles and base_t is not None:
        origin = cycles[bisect.bisect_left(cycles, base_t) - 1]
    for t, kind, counts in rows:
        if origin is None and cycles and not (kind == 0 and start_t is not None and t <= start_t):
            origin = cycles[bisect.bisect_left(cycles, t) - 1]
        flags = 0
        rate_e = [0] * k
        tier_e = [0] * ntiers
        cost = 0
        version = 0
        cyc = -1
        energy = 0
        if kind == 0 and start_t is not None and t <= start_t:
            flags |= Flag.STALE
        elif kind == 2 or base is None:
            flags |= Flag.BASELINE
            base, base_t = counts, t
            version = bisect.bisect_left(version_starts, t)
            if cycles:
                cyc = cycles[bisect.bisect_left(cycles, t) - 1]
        else:
            if kind == 1:
                flags |= Flag.REPLACED
            deltas = {}
            ok = True
            for c in used:
                d = counts[c] - base[c]
                if d < 0:
                    m = modulus[c]
                    if m is not None and d % m <= window[c]:
                        d = d % m
                        flags |= Flag.ROLLOVER
                    else:
                        flags |= Flag.DECREASE
                        ok = False
                deltas[c] = d * factor[c]
            energy_all = sum(deltas[c] for c in bill)
            if ok and max_ph is not None and energy_all > (max_ph * (t - base_t)) // 3600 + slack:
                flags |= Flag.SPIKE
                ok = False
            version = bisect.bisect_left(version_starts, t)
            if cycles:
                cyc = cycles[bisect.bisect_left(cycles, t) - 1]
            if ok:
                rate_e = [deltas[c] for c in bill]
                energy = sum(rate_e)
                if total_col is not None and abs(deltas[total_col] - energy) > sum(
                    factor[c] for c in bill
                ):
                    flags |= Flag.MISMATCH
                if options.gap_s is not None and t - base_t > options.gap_s:
                    flags |= Flag.GAP
                if bisect.bisect_left(version_starts, t) > bisect.bisect_right(
                    version_starts, base_t
                ):
                    flags |= Flag.VERSION_SPAN
                cost = sum(e * p for e, p in zip(rate_e, price[version], strict=True))
                if cycles:
                    if bisect.bisect_left(cycles, t) > bisect.bisect_right(cycles, base_t):
                        flags |= Flag.CYCLE_SPAN
                    if cycle_start is None:
                        cycle_start = origin
                    if cyc != cycle_start:
                        cycle_start, cycle_energy = cyc, 0
                    ths = thresholds[version]
                    f = compiled.proration(state.opened_at, cyc)
                    if f != 1:
                        ths = [
                            th if th >= inf else (th * f.numerator) // f.denominator for th in ths
                        ]
                    before, after = cycle_energy, cycle_energy + energy
                    lo = 0
                    for j in range(ntiers):
                        hi = ths[j] if j < ntiers - 1 else inf
                        tier_e[j] = min(max(after, lo), hi) - min(max(before, lo), hi)
                        lo = hi
                    cycle_energy = after
                    ad = adders[version]
                    used_tiers = [j for j in range(ntiers) if tier_e[j]]
                    if len(used_tiers) <= 1:
                        j = used_tiers[0] if used_tiers else 0
                        cost += sum(e * a for e, a in zip(rate_e, ad[j], strict=True))
                    elif not compiled.per_rate[version]:
                        cost += sum(tier_e[j] * ad[j][0] for j in range(ntiers))
                    else:
                        exact = Fraction(0)
                        for j in used_tiers:
                            for c in range(k):
                                if rate_e[c]:
                                    exact += Fraction(tier_e[j] * rate_e[c] * ad[j][c], energy)
                        floor = exact.numerator // exact.denominator
                        cost += floor
                        extra += exact - floor
                base, base_t = counts, t
        out_t.append(t)
        out_flags.append(int(flags))
        out_energy.append(energy)
        out_rate.append(rate_e)
        out_tier.append(tier_e)
        out_cost.append(cost)
        out_v.append(version)
        out_cycle.append(cyc)

    new_state = replace(
        state,
        last_t=base_t,
        last_counts=None if base is None else tuple(base),
        cycle_start=cycle_start,
        cycle_energy=cycle_energy,
    )
    n = len(out_t)
    return RatedBatch(
        compiled,
        np.asarray(out_t, np.int64),
        np.asarray(out_flags, np.int64),
        np.asarray(out_energy, np.int64),
        np.asarray(out_rate, np.int64).reshape(n, k),
        np.asarray(out_tier, np.int64).reshape(n, ntiers),
        np.asarray(out_cost, np.int64),
        np.asarray(out_v, np.int64),
        np.asarray(out_cycle, np.int64),
        extra,
        new_state,
    )
