"""The integer units of rating (all integers, never floats near money).

- energy: 1/1000 kWh or m³ (`ENERGY_SCALE`): Wh for electricity, litres for water;
- price: 1e-6 CNY per kWh or m³ (`PRICE_SCALE`);
- cost: energy × price = 1e-9 CNY; `COST_PER_FEN` of them make a fen.
"""

from __future__ import annotations

ENERGY_SCALE = 1000
PRICE_SCALE = 1_000_000
COST_PER_FEN = ENERGY_SCALE * PRICE_SCALE // 100
