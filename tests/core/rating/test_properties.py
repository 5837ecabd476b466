"""Properties: the numpy path, the scalar small-batch path and the pure-Python test oracle
(`reference.py`) agree on random inputs and random tariffs; slicing a series into batches
changes nothing; the accrual never drifts."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openprepay.core.rating.checks import RatingOptions
from openprepay.core.rating.engine import RatingEngine
from openprepay.core.rating.layout import MeterState, Readings, RegisterLayout, Replacement
from openprepay.core.rating.rounding import Accrual, Rounding, largest_remainder, round_fen
from openprepay.core.rating.small_batch import SmallBatchRater

from .conftest import TZ, catalogue_from
from .reference import rate_reference

SH = dt.timezone(dt.timedelta(hours=8))
START = int(dt.datetime(2025, 12, 20, tzinfo=SH).timestamp())  # spans a new year

TARIFFS = """
[tariffs.m1]
rates = { sharp = "0.72", peak = "0.60", flat = "0.50", valley = "0.20" }
periods = [{ start = "00:00", end = "24:00", rate = "flat" }]
[tariffs.m1.tiers]
cycle = "monthly"
settlement_day = 25
settlement_hour = 6
thresholds = ["1.5", "4"]
adders = ["0", "0.05", "0.30"]
[[tariffs.m1.versions]]
effective_from = 2025-12-28
rates = { sharp = "0.80", peak = "0.66", flat = "0.55", valley = "0.22" }

[tariffs.m2]
rates = { sharp = "0.70", peak = "0.617", flat = "0.5", valley = "0.307" }
periods = [{ start = "00:00", end = "24:00", rate = "flat" }]
[tariffs.m2.tiers]
cycle = "annual"
thresholds = ["2", "3.5"]
period_adders = [{}, { peak = "0.06", valley = "0.03", sharp = "0.07" },
                 { peak = "0.36", valley = "0.18", flat = "0.2" }]

[tariffs.water]
commodity = "water"
[tariffs.water.tiers]
cycle = "monthly"
thresholds = ["0.5", "1.25"]
prices = ["3.00", "4.50", "9.00"]
proration = "days_30"
"""
CAT, _ERRORS = catalogue_from(TARIFFS)
assert not _ERRORS, _ERRORS
ENGINES = {
    "m1": RatingEngine(CAT.get("m1"), RegisterLayout.simple(modulus=10_000), TZ),
    "m2": RatingEngine(
        CAT.get("m2"),
        RegisterLayout.simple(modulus=10_000),
        TZ,
        options=RatingOptions(max_per_hour=Decimal("40"), gap_s=7200),
    ),
    "water": RatingEngine(CAT.get("water"), RegisterLayout.simple(tou=0, modulus=5_000), TZ),
}


@st.composite
def series(draw):
    name = draw(st.sampled_from(sorted(ENGINES)))
    engine = ENGINES[name]
    m = len(engine.layout.points)
    tou = m > 1
    n = draw(st.integers(0, 40))
    regs = [draw(st.integers(0, 9_999)) for _ in range(m - 1 if tou else 1)]
    t = START + draw(st.integers(0, 5 * 86400))
    start_t = t
    base = regs[:]
    out_t, out_c = [], []
    for _ in range(n):
        t += draw(st.sampled_from([0, 1, 300, 600, 3600, 86400 // 2, 86400 * 3]))
        event = draw(st.sampled_from(["up"] * 6 + ["down", "spike", "wrap"]))
        for i in range(len(regs)):
            step = draw(st.integers(0, 60))
            if event == "down" and i == 0:
                step = -draw(st.integers(1, 500))
            elif event == "spike" and i == 0:
                step = draw(st.integers(2_000, 4_000))
            elif event == "wrap":
                step = draw(st.integers(0, 9_000))
            regs[i] = (regs[i] + step) % (10_000 if tou else 5_000)
        total = sum(regs) % 10_000 if tou else regs[0]
        out_t.append(t)
        out_c.append([total, *regs] if tou else [total])
    counts = np.asarray(out_c, np.int64).reshape(n, m)
    readings = Readings(np.asarray(out_t, np.int64), counts)
    fresh = draw(st.booleans())
    if fresh:
        state = MeterState(opened_at=start_t if draw(st.booleans()) else None)
    else:
        first = [sum(base) % 10_000, *base] if tou else base
        state = MeterState(
            start_t, tuple(first), None, draw(st.integers(0, 4_000)), start_t - 86400 * 3
        )
    reps = []
    if n and draw(st.booleans()):
        at = draw(st.integers(start_t + 1, t + 1))
        old = tuple(draw(st.integers(0, 4_999)) for _ in range(m))
        new = tuple(draw(st.integers(0, 4_999)) for _ in range(m))
        reps.append(Replacement(at, old, new))
    cut = draw(st.integers(0, n))
    return name, readings, state, reps, cut


def _assert_same(a, b):
    for name in ("t", "flags", "energy", "rate_energy", "tier_energy", "cost", "version", "cycle"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.cost_extra == b.cost_extra
    assert a.state == b.state


def _assert_rows_same(rows, batch):
    """`RatedRows` hold the batch's rows as lists."""
    for name in ("t", "flags", "energy", "rate_energy", "cost", "version"):
        assert getattr(rows, name) == getattr(batch, name).tolist(), name
    assert rows.cost_extra == batch.cost_extra
    assert rows.cost_fen == batch.cost_fen
    assert rows.state == batch.state


def _assert_three_agree(engine: RatingEngine, readings, state, reps):
    """The vectorised path, the scalar path and the oracle give identical rows, and so do
    the list paths metering takes (`rate_rows`, scalar and through the vectorised path)."""
    got = engine.rate_vectorised(readings, state, reps)
    scalar = SmallBatchRater(engine.compiled, engine.checks)
    small = scalar.rate(readings, state, reps)
    ref = rate_reference(engine.compiled, readings, state, reps, engine.options)
    _assert_same(got, ref)
    _assert_same(small, ref)
    pairs = list(zip(readings.t.tolist(), readings.counts.tolist(), strict=True))
    _assert_rows_same(scalar.rate_rows(pairs, state, reps), ref)
    _assert_rows_same(engine.rate_rows(pairs, state, reps), ref)
    assert (got.energy >= 0).all()
    return got


@settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(series())
def test_vectorised_small_batch_and_reference_agree(case):
    name, readings, state, reps, _ = case
    _assert_three_agree(ENGINES[name], readings, state, reps)


prices = st.decimals(min_value=0, max_value=3, places=4)


@st.composite
def random_engine(draw):
    """An engine for a random tariff: TOU or single-rate, no tiers, M1, M2 or tier prices,
    a random cycle and proration, random plausibility options."""
    tou = draw(st.booleans())
    method = draw(st.sampled_from(["none", "adders", "period_adders", "prices"]))
    if tou and method == "prices":
        method = "adders"
    if not tou and method == "period_adders":
        method = "adders"
    rates = ["sharp", "peak", "flat", "valley"]
    lines = ["[tariffs.r]"]
    if tou:
        table = ", ".join(f'{r} = "{draw(prices)}"' for r in rates)
        lines += [
            f"rates = {{ {table} }}",
            'periods = [{ start = "00:00", end = "24:00", rate = "flat" }]',
        ]
    elif method != "prices":
        lines.append(f'price = "{draw(prices)}"')
    if method != "none":
        n = draw(st.integers(2, 3))
        first = draw(st.integers(1, 30))
        thresholds = [first + i * draw(st.integers(1, 30)) for i in range(n - 1)]
        cycle = draw(st.sampled_from(["monthly", "annual"]))
        prorations = ["none", "actual_days"] + (["days_30"] if cycle == "monthly" else [])
        lines += [
            "[tariffs.r.tiers]",
            f'cycle = "{cycle}"',
            f'proration = "{draw(st.sampled_from(prorations))}"',
            "thresholds = [" + ", ".join(f'"{th / 10}"' for th in thresholds) + "]",
        ]
        if method == "period_adders":
            tables = [
                "{ " + ", ".join(f'{r} = "{draw(prices)}"' for r in rates) + " }" for _ in range(n)
            ]
            lines.append(f"period_adders = [{', '.join(tables)}]")
        else:
            amounts = ", ".join(f'"{draw(prices)}"' for _ in range(n))
            lines.append(f"{method} = [{amounts}]")
    catalogue, errors = catalogue_from("\n".join(lines) + "\n")
    assert not errors, (errors, lines)
    max_ph = draw(st.sampled_from([None, Decimal("5"), Decimal("40")]))
    options = RatingOptions(max_per_hour=max_ph, gap_s=draw(st.sampled_from([None, 3600])))
    layout = RegisterLayout.simple(tou=4 if tou else 0, modulus=10_000 if tou else 5_000)
    return RatingEngine(catalogue.get("r"), layout, TZ, options=options)


@settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(random_engine(), series(), st.integers(1, 16))
def test_paths_agree_on_random_tariffs(engine, case, size):
    """Small batches (what `rate` sends to the scalar path) of random tariffs."""
    _, readings, state, reps, _ = case
    m = len(engine.layout.points)
    counts = readings.counts
    if counts.shape[1] != m:  # the series was drawn for another layout: keep its first column
        counts = np.repeat(counts[:, :1], m, axis=1)
        if m > 1:
            counts[:, 0] = counts[:, 1:].sum(axis=1) % 10_000
        base = state.last_counts
        if base is not None:
            row = [base[0]] * m if m > 1 else [base[0] % 5_000]
            if m > 1:
                row[0] = sum(row[1:]) % 10_000
            state = MeterState(state.last_t, tuple(row), None, state.cycle_energy, state.opened_at)
        reps = []
    small = Readings(readings.t[:size], counts[:size])
    _assert_three_agree(engine, small, state, reps)


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(series())
def test_batches_do_not_change_the_result(case):
    """Rating a series in two batches costs the same and ends in the same state as one."""
    name, readings, state, _, cut = case
    engine = ENGINES[name]
    whole = engine.rate_vectorised(readings, state)
    first = engine.rate(Readings(readings.t[:cut], readings.counts[:cut]), state)
    second = engine.rate(Readings(readings.t[cut:], readings.counts[cut:]), first.state)
    # equal times across the cut are stale in the second batch: drop them from the check
    if cut and cut < len(readings) and readings.t[cut] == readings.t[cut - 1]:
        return
    assert first.cost_fen + second.cost_fen == whole.cost_fen
    assert second.state == whole.state


amounts = st.fractions(min_value=0, max_value=500, max_denominator=10**7)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(amounts, max_size=200), st.sampled_from(list(Rounding)))
def test_accrual_posts_exactly_the_rounded_total(costs, mode):
    accrual = Accrual(rounding=mode)
    posted = [accrual.add(c) for c in costs]
    assert sum(posted) == round_fen(sum(costs, Fraction(0)), mode)
    assert all(p >= 0 for p in posted)
    assert abs(accrual.remainder_fen) < 1
    assert Accrual.from_record(accrual.to_record()) == accrual


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.fractions(min_value=-100, max_value=100, max_denominator=1000), max_size=12))
def test_largest_remainder_sums_to_the_total(parts):
    total = round_fen(sum(parts, Fraction(0)))
    out = largest_remainder(total, parts)
    assert sum(out) == total if parts else out == []
    assert all(abs(o - p) < 1 for o, p in zip(out, parts, strict=True))


def test_rounding_modes():
    half = Fraction(5, 2)
    assert [round_fen(half, m) for m in Rounding] == [3, 2, 2, 3]
    assert [round_fen(-half, m) for m in Rounding] == [-3, -2, -2, -3]
    assert round_fen(Fraction(249, 100)) == 2
    assert round_fen(Decimal("7070.5")) == 7071
