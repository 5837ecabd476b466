"""Rating: energy (or water) from the meter's cumulative registers, turned into money.

This is one of the two places that handle money (the other is the ledger). Prices are
`Decimal`; energy is an integer count; cost is exact; only `money.round_fen` rounds, and only
the accrual (`money.Accrual`) and the bill (`bills.bill_usage`) call it.

Units used inside (all integers, never floats near money; see `units`):

- energy: 1/1000 kWh or m³ (`ENERGY_SCALE`): Wh for electricity, litres for water. A
  register with resolution 0.01 kWh counts 10 units per step.
- price: 1e-6 CNY per kWh or m³ (`PRICE_SCALE`).
- cost: energy × price = 1e-9 CNY; `COST_PER_FEN` of them make a fen. Exact amounts handed
  to the ledger are `Fraction`s of a fen.

The package is split by job:

- `tariffs` — the tariff model (versions, periods, seasons, tiers) and the catalogue;
- `tariff_reading` — reads and validates the site file's `[tariffs]` into it, with
  `tariff_versions` (one version's components cross-checked), `tariff_day_tables`
  (`periods`, `seasons`), `tariff_tiers` (`[tiers]`) and `tariff_values` (single values);
- `units`, `errors` — the integer units and `RatingError`;
- `money` — rounding (`round_fen`), largest-remainder allocation and the drift-free `Accrual`;
- `layout` — which registers are rated (`RegisterLayout`), `Readings`, `Replacement` and the
  per-meter `MeterState`;
- `checks` — `RatingOptions` and the `Flag`s a reading can get;
- `compiled` — a tariff as integer tables for one layout (`CompiledTariff`);
- `rated` — the result of rating a batch (`RatedBatch`);
- `engine` — `RatingEngine`, numpy-vectorised over a batch of readings of one meter;
- `small_batch` — the scalar path the engine uses for a poll or two, with identical results;
- `bills` — bills from totals (`bill_usage`: post-paid lines, calculators, worked examples).

The rules every path implements:

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
exactly on a boundary belongs to the period before it. `tests/core/rating/reference.py` is a
pure-Python implementation of the same rules that the tests hold both paths to.
"""
