"""The rating engine on register edge cases: rollover, replacement, gaps, decreasing and
implausible readings, stale re-deliveries, versions, tier cycles, proration, mappings."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from openprepay.core.model import DeviceModel, MeterKind, PointRole, PointSpec, Quality, Sample
from openprepay.core.rating.checks import Flag, RatingOptions
from openprepay.core.rating.engine import RatingEngine
from openprepay.core.rating.errors import RatingError
from openprepay.core.rating.layout import MeterState, Readings, RegisterLayout, Replacement
from openprepay.core.rating.small_batch import SmallBatchRater

from .conftest import TZ, catalogue_from
from .reference import rate_reference

SH = dt.timezone(dt.timedelta(hours=8))
T0 = int(dt.datetime(2025, 3, 3, 9, 0, tzinfo=SH).timestamp())
MOD = 1 << 32  # a u32 register


def rows(*readings: tuple[int, ...]) -> np.ndarray:
    """(T1, T2, T3, T4) per reading → counts with the total first."""
    return np.asarray([[sum(r), *r] for r in readings], np.int64)


def times(n: int, step: int = 600, start: int = T0) -> np.ndarray:
    return start + step * np.arange(1, n + 1, dtype=np.int64)


def both(engine: RatingEngine, readings: Readings, state: MeterState, reps=()):
    """Rate with the vectorised path, the scalar path and the reference; insist they agree."""
    got = engine.rate_vectorised(readings, state, reps)
    small = SmallBatchRater(engine.compiled, engine.checks).rate(readings, state, reps)
    ref = rate_reference(engine.compiled, readings, state, reps, engine.options)
    for other in (small, ref):
        for name in ("t", "flags", "energy", "rate_energy", "tier_energy", "cost", "version"):
            assert np.array_equal(getattr(got, name), getattr(other, name)), name
        assert np.array_equal(got.cycle, other.cycle)
        assert got.cost_extra == other.cost_extra
        assert got.state == other.state
    return got


@pytest.fixture
def tou(catalogue):
    return RatingEngine(catalogue.get("residential"), RegisterLayout.simple(), TZ)


def test_tou_energy_comes_from_the_registers_not_the_clock(tou):
    """At 09:00–09:10 the clock says peak, but the meter put 1 kWh on T4 (valley): billed as
    valley (clock drift is the meter's business)."""
    state = MeterState(T0, tuple(rows((0, 0, 0, 0))[0]), None, 0)
    rated = both(tou, Readings(times(1), rows((0, 0, 0, 100))), state)
    assert rated.energy_by_rate() == {"valley": Decimal(1)}
    assert rated.cost_fen == 20  # 1 kWh × 0.20


def test_rollover_is_taken_modulo_the_register(tou):
    near_top = MOD - 50
    state = MeterState(T0, (near_top, near_top, 0, 0, 0), None, 0)
    readings = Readings(times(1), np.asarray([[30, 30, 0, 0, 0]], np.int64))
    rated = both(tou, readings, state)
    assert rated.flags[0] & Flag.ROLLOVER
    assert int(rated.energy[0]) == 80 * 10  # 0.80 kWh in Wh
    assert rated.cost_fen == Fraction(80 * 72, 100)  # 0.80 kWh sharp × 0.72 = 0.576 CNY


def test_decreasing_reading_is_never_negative_usage_and_holds_the_baseline(tou):
    start = (1000, 100, 200, 300, 400)
    state = MeterState(T0, start, None, 0)
    readings = Readings(
        times(3),
        rows((110, 200, 300, 400), (50, 200, 300, 400), (120, 200, 300, 400)),
    )
    rated = both(tou, readings, state)
    assert list(rated.energy) == [100, 0, 100]  # 0.10 kWh, nothing, then 0.10 kWh more
    assert rated.flags[1] & Flag.DECREASE
    assert not rated.flags[2] & Flag.DECREASE  # compared with the held baseline (110)
    assert (rated.energy >= 0).all()
    assert rated.state.last_counts == (1020, 120, 200, 300, 400)


def test_a_garbled_high_reading_is_a_spike_and_not_billed(catalogue):
    engine = RatingEngine(
        catalogue.get("residential"),
        RegisterLayout.simple(),
        TZ,
        options=RatingOptions(max_per_hour=Decimal("20")),
    )
    state = MeterState(T0, (1000, 100, 200, 300, 400), None, 0)
    readings = Readings(
        times(3),  # 10 minutes apart: at most ~3.3 kWh each
        rows((150, 200, 300, 400), (9_000_000, 200, 300, 400), (160, 200, 300, 400)),
    )
    rated = both(engine, readings, state)
    assert rated.flags[1] & Flag.SPIKE
    assert list(rated.energy) == [500, 0, 100]


def test_gap_is_flagged_and_billed_from_the_cumulative_registers(tou):
    state = MeterState(T0, (0, 0, 0, 0, 0), None, 0)
    readings = Readings(
        np.asarray([T0 + 600, T0 + 600 + 86400]), rows((0, 100, 0, 0), (0, 900, 0, 0))
    )
    rated = both(tou, readings, state)
    assert not rated.flags[0] & Flag.GAP
    assert rated.flags[1] & Flag.GAP
    assert list(rated.energy) == [1000, 8000]


def test_stale_readings_are_ignored_so_a_replay_rates_nothing(tou):
    state = MeterState(T0, (0, 0, 0, 0, 0), None, 0)
    readings = Readings(times(3), rows((0, 100, 0, 0), (0, 200, 0, 0), (0, 300, 0, 0)))
    first = both(tou, readings, state)
    again = both(tou, readings, first.state)
    assert (again.flags & Flag.STALE).all()
    assert again.cost_fen == 0
    assert again.state == first.state


def test_meter_replacement_closes_old_opens_new_and_carries_cycle_energy(tou):
    cycle_start = int(dt.datetime(2025, 1, 1, tzinfo=SH).timestamp())
    state = MeterState(T0, (5000, 1000, 1000, 1000, 2000), cycle_start, 2_879_000)
    at = T0 + 1800
    rep = Replacement(at, (5300, 1000, 1300, 1000, 2000), (0, 0, 0, 0, 0))
    readings = Readings(
        np.asarray([T0 + 600, T0 + 2400]),
        np.asarray([[5100, 1000, 1100, 1000, 2000], [200, 0, 200, 0, 0]], np.int64),
    )
    rated = both(tou, readings, state, [rep])
    assert len(rated) == 4
    assert rated.flags[1] & Flag.REPLACED and rated.flags[2] & Flag.BASELINE
    # old meter: 1 kWh + 2 kWh peak up to its final reading; new meter: 2 kWh peak
    assert list(rated.energy) == [1000, 2000, 0, 2000]
    # the cycle went on across the exchange: 2879 + 5 kWh, threshold 2880 crossed at 2880
    assert rated.state.cycle_energy == 2_884_000
    assert rated.energy_by_tier() == [Decimal(1), Decimal(4), Decimal(0)]
    assert rated.cost_fen == 5 * 60 + 4 * 5  # 5 kWh peak + 4 kWh × 0.05
    assert rated.state.last_counts == (200, 0, 200, 0, 0)


def test_an_interval_ending_on_the_settlement_instant_belongs_to_the_old_cycle(tou):
    new_year = int(dt.datetime(2026, 1, 1, tzinfo=SH).timestamp())
    cycle_2025 = int(dt.datetime(2025, 1, 1, tzinfo=SH).timestamp())
    state = MeterState(new_year - 600, (0, 0, 0, 0, 0), cycle_2025, 4_800_000)
    readings = Readings(
        np.asarray([new_year, new_year + 600]), rows((0, 0, 0, 100), (0, 0, 0, 200))
    )
    rated = both(tou, readings, state)
    # first interval: tier 3 of 2025 (+0.30); second: tier 1 of 2026 (cycle restarted)
    assert list(rated.cycle) == [cycle_2025, new_year]
    assert rated.tier_energy[0].tolist() == [0, 0, 1000]
    assert rated.tier_energy[1].tolist() == [1000, 0, 0]
    assert rated.state.cycle_start == new_year
    assert rated.state.cycle_energy == 1000
    assert rated.cost_fen == (20 + 30) + 20


def test_interval_across_the_settlement_is_flagged(tou):
    new_year = int(dt.datetime(2026, 1, 1, tzinfo=SH).timestamp())
    state = MeterState(new_year - 600, (0, 0, 0, 0, 0), None, 0)
    rated = both(tou, Readings(np.asarray([new_year + 600]), rows((0, 0, 0, 100))), state)
    assert rated.flags[0] & Flag.CYCLE_SPAN


def test_threshold_boundary_stays_in_the_lower_tier(tou):
    cycle_2025 = int(dt.datetime(2025, 1, 1, tzinfo=SH).timestamp())
    state = MeterState(T0, (0, 0, 0, 0, 0), cycle_2025, 2_879_990)  # 0.01 kWh below 2880
    rated = both(tou, Readings(times(2), rows((0, 1, 0, 0), (0, 2, 0, 0))), state)
    assert rated.tier_energy.tolist() == [[10, 0, 0], [0, 10, 0]]


def test_thresholds_are_prorated_for_an_account_opened_mid_cycle(tou):
    # opened on 2025-07-02 (local): 183 of the year's 365 days remain → 2880 × 183/365
    opened = int(dt.datetime(2025, 7, 2, 10, tzinfo=SH).timestamp())
    state = MeterState(opened, (0, 0, 0, 0, 0), None, 0, opened)
    cap = 2_880_000 * 183 // 365  # 1443945 Wh
    after = opened + 3600
    n = cap // 10 + 1  # one count (10 Wh) past the prorated threshold
    rated = both(tou, Readings(np.asarray([after]), rows((0, n, 0, 0))), state)
    assert rated.tier_energy.tolist() == [[cap, n * 10 - cap, 0]]


def test_price_change_applies_from_its_effective_date(catalogue):
    engine = RatingEngine(catalogue.get("flat"), RegisterLayout.simple(tou=0), TZ)
    switch = int(dt.datetime(2025, 7, 1, tzinfo=SH).timestamp())
    state = MeterState(switch - 600, (0,), None, 0)
    readings = Readings(np.asarray([switch, switch + 600]), np.asarray([[100], [200]]))
    rated = both(engine, readings, state)
    assert list(rated.version) == [0, 1]
    assert rated.cost_fen == 80 + 85  # 1 kWh at 0.80 (ends at midnight) + 1 kWh at 0.85


def test_total_and_tou_registers_that_disagree_are_flagged(tou):
    state = MeterState(T0, (0, 0, 0, 0, 0), None, 0)
    counts = np.asarray([[500, 0, 100, 0, 0]], np.int64)  # total +5 kWh, T registers +1 kWh
    rated = both(tou, Readings(times(1), counts), state)
    assert rated.flags[0] & Flag.MISMATCH
    assert int(rated.energy[0]) == 1000  # billed from the rate registers


def test_unpriced_register_rate_is_refused_with_the_fix(catalogue):
    text = """
[tariffs.two]
rates = { peak = "0.6", valley = "0.3" }
periods = [{ start = "08:00", end = "22:00", rate = "peak" },
           { start = "22:00", end = "08:00", rate = "valley" }]
"""
    cat, errors = catalogue_from(text)
    assert not errors
    with pytest.raises(RatingError, match=r"no rate 'sharp' for register T1.*registers = \["):
        RatingEngine(cat.get("two"), RegisterLayout.simple(), TZ)
    engine = RatingEngine(
        cat.get("two"), RegisterLayout.simple(), TZ, register_rates=["peak"] * 3 + ["valley"]
    )
    assert engine.compiled.rate_names == [("peak", "peak", "peak", "valley")]


def test_time_of_use_needs_rate_registers(catalogue):
    with pytest.raises(RatingError, match="no rate registers"):
        RatingEngine(catalogue.get("residential"), RegisterLayout.simple(tou=0), TZ)


def _acrel_like() -> DeviceModel:
    def energy(name: str) -> PointSpec:
        return PointSpec(
            name, "kWh", name, PointRole.CUMULATIVE, resolution=0.01, rollover=(1 << 32) * 0.01
        )

    names = ["energy_total", "energy_sharp", "energy_peak", "energy_flat", "energy_valley"]
    return DeviceModel(
        "acrel.test",
        "Acrel",
        "DDSY1352",
        MeterKind.ELECTRIC,
        "",
        points=tuple(energy(n) for n in names),
        total_point="energy_total",
        tariff_points=tuple(names[1:]),
    )


def test_layout_from_a_model_and_readings_from_good_samples_only(tou):
    model = _acrel_like()
    layout = RegisterLayout.from_model(model)
    assert layout.unit_factor == (10,) * 5
    assert layout.modulus == (1 << 32,) * 5
    at = dt.datetime(2025, 3, 3, 2, tzinfo=dt.UTC)
    values = {
        "energy_total": 12.34,
        "energy_sharp": 1.0,
        "energy_peak": 2.0,
        "energy_flat": 3.0,
        "energy_valley": 6.34,
    }
    samples = [
        Sample("m1", model, at, dict(values)),
        Sample("m1", model, at + dt.timedelta(seconds=10), {}, Quality.BAD_COMM_FAILURE),
        Sample("m1", model, at + dt.timedelta(seconds=20), {**values, "energy_peak": 2.5}),
    ]
    readings = layout.from_samples(samples)
    assert readings.t.tolist() == [int(at.timestamp()), int(at.timestamp()) + 20]
    assert readings.counts.tolist() == [[1234, 100, 200, 300, 634], [1234, 100, 250, 300, 634]]
    engine = RatingEngine(tou.compiled.tariff, layout, TZ)
    rated = engine.rate(readings)
    assert rated.flags[0] & Flag.BASELINE
    assert rated.energy_by_rate() == {"peak": Decimal("0.5")}


def test_rows_from_samples_count_as_numpy_rounds_and_skip_what_is_not_a_number():
    """The list path metering takes gives the counts `from_samples` gives (half to even,
    as `numpy.rint`; compared on many values), and a NaN or infinite register is no
    reading."""
    model = _acrel_like()
    layout = RegisterLayout.from_model(model)
    at = dt.datetime(2025, 3, 3, 2, tzinfo=dt.UTC)
    rng = np.random.default_rng(7)
    samples = []
    for i, x in enumerate([*rng.uniform(0, 99_999, 500).round(3).tolist(), 0.005, 0.015, 2.5]):
        values = {p: x for p in layout.points}
        samples.append(Sample("m1", model, at + dt.timedelta(seconds=i), values))
    rows = layout.rows_from_samples(samples)
    readings = layout.from_samples(samples)
    assert [t for t, _ in rows] == readings.t.tolist()
    assert [c for _, c in rows] == readings.counts.tolist()
    assert len(rows) == len(samples)
    broken = [
        Sample("m1", model, at, {**samples[0].values, "energy_peak": float("nan")}),
        Sample("m1", model, at, {**samples[0].values, "energy_total": float("inf")}),
    ]
    assert layout.rows_from_samples(broken) == []


def test_state_round_trips_through_a_record():
    state = MeterState(T0, (1, 2, 3), 42, 1234, 7)
    assert MeterState.from_record(state.to_record()) == state
    fresh = MeterState.opening(cycle_energy_units="2800")
    assert fresh.cycle_energy == 2_800_000 and fresh.last_counts is None


def test_an_account_opened_with_a_year_to_date_figure(tou):
    """`MeterState.opening(cycle_energy_units=...)` without a cycle start: the figure belongs
    to the cycle of the first reading."""
    state = MeterState.opening(cycle_energy_units="2879.5")
    readings = Readings(times(2), rows((0, 0, 0, 0), (0, 100, 0, 0)))
    rated = both(tou, readings, state)
    assert rated.flags[0] & Flag.BASELINE
    assert rated.energy_by_tier() == [Decimal("0.5"), Decimal("0.5"), Decimal(0)]
    assert rated.state.cycle_energy == 2_880_500
    assert rated.state.cycle_start == int(dt.datetime(2025, 1, 1, tzinfo=SH).timestamp())
