"""Worked examples A, B, C of domain.md §2.3–§2.5, to the fen, from totals and from many
small readings through the engine and the accrual (§5.4: no penny drift)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from openprepay.core.rating.bills import bill_usage
from openprepay.core.rating.engine import RatingEngine
from openprepay.core.rating.layout import MeterState, Readings, RegisterLayout
from openprepay.core.rating.rounding import Accrual, round_fen

from .conftest import TZ
from .reference import rate_reference

SH = dt.timezone(dt.timedelta(hours=8))
MARCH = dt.datetime(2025, 3, 1, tzinfo=SH)


def test_example_a_m1_from_totals(catalogue):
    bill = bill_usage(
        catalogue.get("residential"),
        {"sharp": 10, "peak": 50, "flat": 40, "valley": 50},
        on=dt.date(2025, 3, 31),
        cycle_energy_before=2800,
    )
    lines = {ln.label: (ln.quantity, ln.amount_fen) for ln in bill.lines}
    assert lines == {
        "sharp": (10, 720),
        "peak": (50, 3000),
        "flat": (40, 2000),
        "valley": (50, 1000),
        "tier 2 surcharge": (70, 350),
    }
    assert bill.total_exact_fen == 7070
    assert bill.total_fen == 7070
    assert bill.cycle_energy_after == 2950


def test_example_b_m2_pro_rata_from_totals(catalogue):
    bill = bill_usage(
        catalogue.get("shanghai"),
        {"peak": 100, "valley": 50},
        on=dt.date(2025, 3, 31),
        cycle_energy_before=3050,
    )
    lines = {ln.label: ln for ln in bill.lines}
    assert lines["peak"].amount_fen == 6170
    assert lines["valley"].amount_fen == 1535
    # 80 kWh of tier 2, split 2:1 by the month's period shares: 53.33 / 26.67
    assert lines["tier 2 peak surcharge"].quantity == Fraction(160, 3)
    assert lines["tier 2 valley surcharge"].quantity == Fraction(80, 3)
    assert sum(ln.amount_exact_fen for ln in bill.lines if "surcharge" in ln.label) == 400
    assert bill.total_exact_fen == 8105
    assert bill.total_fen == 8105


def test_example_c_water_from_totals(catalogue):
    bill = bill_usage(catalogue.get("water"), "30", on=dt.date(2025, 3, 31))
    assert [(ln.label, ln.quantity, ln.amount_fen) for ln in bill.lines] == [
        ("tier 1", 18, 5400),
        ("tier 2", 7, 3150),
        ("tier 3", 5, 4500),
    ]
    assert bill.total_fen == 13050
    assert bill.unit == "m³"


def _split(rng: np.random.Generator, total: int, n: int) -> np.ndarray:
    """`n` random non-negative integers that sum to `total`."""
    cuts = np.sort(rng.integers(0, total + 1, n - 1))
    return np.diff(np.concatenate([[0], cuts, [total]]))


def _month_of_readings(rng, n: int, per_register: list[int], start_counts: list[int]):
    """n readings over March with T registers advancing by the given totals (0.01 units)."""
    inc = np.stack([_split(rng, tot, n) for tot in per_register], axis=1)
    tou = np.cumsum(inc, axis=0) + np.asarray(start_counts)[None, :]
    total = tou.sum(axis=1)[:, None]
    t0 = int(MARCH.timestamp())
    times = t0 + 60 + np.sort(rng.choice(31 * 86400 - 120, n, replace=False))
    base = (sum(start_counts), *start_counts)
    return Readings(times.astype(np.int64), np.concatenate([total, tou], axis=1)), base


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_example_a_from_1000_small_readings_posts_exactly_70_70(catalogue, seed):
    rng = np.random.default_rng(seed)
    engine = RatingEngine(catalogue.get("residential"), RegisterLayout.simple(), TZ)
    readings, base = _month_of_readings(rng, 1000, [1000, 5000, 4000, 5000], [7, 80, 900, 12])
    cycle_start = int(dt.datetime(2025, 1, 1, tzinfo=SH).timestamp())
    state = MeterState(int(MARCH.timestamp()), base, cycle_start, 2_800_000)
    accrual = Accrual()
    posted = []
    i = 0
    while i < len(readings):  # batches of 1..20 readings, as polls would deliver them
        j = min(len(readings), i + int(rng.integers(1, 21)))
        batch = Readings(readings.t[i:j], readings.counts[i:j])
        rated = engine.rate(batch, state)
        posted.append(accrual.add(rated.cost_fen))
        state = rated.state
        i = j
    assert sum(posted) == 7070
    assert all(p >= 0 for p in posted)
    assert accrual.cum_exact_fen == 7070
    assert state.cycle_energy == 2_950_000  # YTD 2950 kWh, carried for the next batch
    # one batch with the reference implementation gives the same
    ref = rate_reference(
        engine.compiled, readings, MeterState(int(MARCH.timestamp()), base, cycle_start, 2_800_000)
    )
    assert ref.cost_fen == 7070


def test_example_a_posting_every_reading_separately(catalogue):
    """Each reading posted on its own: most post 0 or 1 fen, the sum is still 70.70."""
    rng = np.random.default_rng(7)
    engine = RatingEngine(catalogue.get("residential"), RegisterLayout.simple(), TZ)
    readings, base = _month_of_readings(rng, 1000, [1000, 5000, 4000, 5000], [0, 0, 0, 0])
    cycle_start = int(dt.datetime(2025, 1, 1, tzinfo=SH).timestamp())
    state = MeterState(int(MARCH.timestamp()), base, cycle_start, 2_800_000)
    rated = engine.rate(readings, state)
    accrual = Accrual()
    posts = [accrual.add(c) for c in (Fraction(int(x), 10_000_000) for x in rated.cost)]
    assert sum(posts) == 7070
    # rounding each reading on its own instead would drift away from 70.70
    naive = sum(round_fen(Fraction(int(x), 10_000_000)) for x in rated.cost)
    assert naive != 7070


def test_example_b_chronological_within_a_month(catalogue):
    """M2 with interval data: tier-2 energy is the energy *after* the threshold, by rate;
    the one interval that crosses it is split pro-rata (hand computed)."""
    layout = RegisterLayout.simple()  # T1..T4 → peak, peak, peak, valley (tariff mapping)
    engine = RatingEngine(catalogue.get("shanghai"), layout, TZ)
    cycle_start = int(dt.datetime(2025, 1, 1, tzinfo=SH).timestamp())
    t0 = int(MARCH.timestamp())
    base = (0, 0, 0, 0, 0)
    state = MeterState(t0, base, cycle_start, 3_115_000)  # YTD 3115 kWh; tier 1 ends at 3120
    # interval 1: peak 6 + valley 4 kWh (crosses 3120: 5 kWh in tier 1, 5 in tier 2)
    # interval 2: valley 10 kWh (all tier 2)
    rows = [(0, 600, 0, 0, 400), (0, 600, 0, 0, 1400)]
    counts = np.asarray([[r[1] + r[4], *r[1:]] for r in rows], np.int64)
    rated = engine.rate(Readings(np.asarray([t0 + 3000, t0 + 6000]), counts), state)
    # base 6×0.617 + 4×0.307 + 10×0.307 = 3.702 + 1.228 + 3.07 = 8.000
    # tier 2: interval 1: 5 kWh split 3 peak / 2 valley → 3×0.06 + 2×0.03 = 0.24
    #         interval 2: 10 valley × 0.03 = 0.30
    assert rated.cost_fen == Fraction(854)
    assert rated.energy_by_tier() == [Decimal(5), Decimal(15), Decimal(0)]


def test_example_c_water_from_many_readings(catalogue):
    rng = np.random.default_rng(11)
    layout = RegisterLayout.simple(tou=0, resolution="0.01", modulus=10**8)
    engine = RatingEngine(catalogue.get("water"), layout, TZ)
    inc = _split(rng, 3000, 500)  # 30.00 m³ in 0.01 m³ steps
    counts = (np.cumsum(inc) + 123)[:, None]
    t0 = int(MARCH.timestamp())
    times = t0 + 100 + np.arange(500) * 5000
    state = MeterState(t0, (123,), None, 0)
    accrual = Accrual()
    for k in range(0, 500, 37):
        rated = engine.rate(Readings(times[k : k + 37], counts[k : k + 37]), state)
        accrual.add(rated.cost_fen)
        state = rated.state
    assert accrual.posted_fen == 13050
    assert state.cycle_energy == 30_000  # litres
