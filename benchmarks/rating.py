"""Rating throughput: interval readings rated per second with TOU + tiers.

Baseline and product in the same run, on the same data:
- baseline: the scalar pure-Python path (`core/rating/small_batch.py`), reading by reading,
  made to rate whole series (the engine only sends it a poll or two);
- product: the numpy engine (`core/rating/engine.py`).

Data: meters of the worked-example-A tariff (TOU 尖/峰/平/谷, M1 annual tiers crossing
2880 kWh during the run) read every 15 minutes across a new year (so the tier cycle resets),
with a register rollover, a decreasing reading and a spike sprinkled in. The engine rates
each meter's batch separately, as the service would; the two paths must agree
to the 1e-9 CNY. Prints absolute figures and the ratio, then one JSON line.

    .venv/bin/python benchmarks/rating.py [--meters 1000] [--readings 1000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import tomllib
from decimal import Decimal
from pathlib import Path

import numpy as np

from openprepay.core.errors import FieldError
from openprepay.core.rating.checks import RatingOptions
from openprepay.core.rating.engine import RatingEngine
from openprepay.core.rating.layout import MeterState, Readings, RegisterLayout
from openprepay.core.rating.small_batch import SmallBatchRater
from openprepay.core.rating.tariff_reading import parse_tariffs

TARIFF = """
[tariffs.residential]
rates = { sharp = "0.7200", peak = "0.6000", flat = "0.5000", valley = "0.2000" }
periods = [
  { start = "23:00", end = "07:00", rate = "valley" },
  { start = "07:00", end = "10:00", rate = "flat" },
  { start = "10:00", end = "11:30", rate = "sharp" },
  { start = "11:30", end = "18:30", rate = "flat" },
  { start = "18:30", end = "23:00", rate = "peak" },
]
[tariffs.residential.tiers]
cycle = "annual"
thresholds = ["2880", "4800"]
adders = ["0", "0.05", "0.30"]
"""
TZ = "Asia/Shanghai"
MOD = 1 << 32


def meters(n_meters: int, n_readings: int, seed: int = 5):
    rng = np.random.default_rng(seed)
    sh = dt.timezone(dt.timedelta(hours=8))
    start = int(dt.datetime(2025, 12, 25, tzinfo=sh).timestamp())
    cycle_start = int(dt.datetime(2025, 1, 1, tzinfo=sh).timestamp())
    out = []
    for m in range(n_meters):
        inc = rng.integers(0, 40, size=(n_readings, 4))  # 0..0.39 kWh per register per 15 min
        base = rng.integers(0, 10**6, size=4)
        if m == 0:
            base[1] = MOD - 500  # this meter's T2 wraps during the run
        tou = (np.cumsum(inc, axis=0) + base[None, :]) % MOD
        total = (tou.sum(axis=1) % MOD)[:, None]
        counts = np.concatenate([total, tou], axis=1).astype(np.int64)
        if m == 1 and n_readings > 20:
            counts[10] -= 5  # a decreasing reading
            counts[15, 1] += 10**7  # a garbled spike
        t = start + 900 * np.arange(1, n_readings + 1, dtype=np.int64)
        first = ((int(base.sum()) % MOD), *(int(b) for b in base))
        ytd = int(rng.integers(2_700_000, 2_879_000))  # Wh: close to the 2880 kWh threshold
        state = MeterState(start, first, cycle_start, ytd)
        out.append((Readings(t, counts), state))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--readings", type=int, default=1000)
    parser.add_argument("--reference-meters", type=int, default=60)
    args = parser.parse_args()

    errors: list[FieldError] = []
    tariff = parse_tariffs(tomllib.loads(TARIFF)["tariffs"], errors, TZ).get("residential")
    assert not errors, errors
    options = RatingOptions(max_per_hour=Decimal("60"))
    engine = RatingEngine(tariff, RegisterLayout.simple(), TZ, options=options)
    data = meters(args.meters, args.readings)
    n_total = args.meters * args.readings

    engine.rate(*data[0])  # warm the calendar cache
    t0 = time.perf_counter()
    product_cost = [engine.rate(readings, state).cost_fen for readings, state in data]
    product_s = time.perf_counter() - t0
    product = n_total / product_s

    ref_meters = min(args.reference_meters, args.meters)
    scalar = SmallBatchRater(engine.compiled, engine.checks)
    t0 = time.perf_counter()
    ref_cost = [scalar.rate(readings, state).cost_fen for readings, state in data[:ref_meters]]
    reference_s = time.perf_counter() - t0
    reference = ref_meters * args.readings / reference_s
    if ref_cost != product_cost[:ref_meters]:
        print("MISMATCH between the numpy and the scalar path", file=sys.stderr)
        sys.exit(1)

    # one long series: a year of 15-minute readings of one meter in one call
    ((long_readings, long_state),) = meters(1, 35_040, seed=9)
    t0 = time.perf_counter()
    engine.rate(long_readings, long_state)
    long_rate = len(long_readings) / (time.perf_counter() - t0)

    total_fen = sum(product_cost)
    print(
        f"tariff: TOU sharp/peak/flat/valley + M1 annual tiers; data: {args.meters} meters × "
        f"{args.readings} readings (15 min), across a tier settlement"
    )
    print(
        f"numpy engine:   {n_total:>9} readings in {product_s:.3f} s = {product:,.0f} readings/s "
        f"(one call per meter)"
    )
    print(
        f"scalar path:    {ref_meters * args.readings:>9} readings in {reference_s:.3f} s = "
        f"{reference:,.0f} readings/s (scalar pure-Python path)"
    )
    print(f"one meter, one year in one call: {long_rate:,.0f} readings/s")
    print(
        f"ratio: {product / reference:.1f}×; numpy and scalar paths agree on "
        f"{ref_meters} meters; total rated {float(total_fen) / 100:,.2f} CNY"
    )
    print(
        json.dumps(
            {
                "bench": Path(__file__).stem,
                "readings_per_s": round(product),
                "reference_readings_per_s": round(reference),
                "ratio": round(product / reference, 2),
                "single_series_readings_per_s": round(long_rate),
                "meters": args.meters,
                "readings_per_meter": args.readings,
            }
        )
    )


if __name__ == "__main__":
    main()
