"""Tariffs of the worked examples (domain.md §2.3–§2.5) and helpers for the rating tests."""

from __future__ import annotations

import tomllib

import pytest

from openprepay.core.errors import FieldError
from openprepay.core.rating.tariff_reading import parse_tariffs
from openprepay.core.rating.tariffs import TariffCatalogue

TZ = "Asia/Shanghai"

#: The site-file [tariffs] section used across the tests (and shown in docs/prepay-rating.md).
CATALOGUE_TOML = """
# Worked example A: M1, TOU + annual tiers (State Grid local-meter style).
[tariffs.residential]
name = "Residential TOU + annual tiers"
rates = { sharp = "0.7200", peak = "0.6000", flat = "0.5000", valley = "0.2000" }
periods = [
  { start = "23:00", end = "07:00", rate = "valley" },
  { start = "07:00", end = "08:00", rate = "flat" },
  { start = "08:00", end = "10:00", rate = "peak" },
  { start = "10:00", end = "11:30", rate = "sharp" },
  { start = "11:30", end = "18:30", rate = "flat" },
  { start = "18:30", end = "23:00", rate = "peak" },
]
[tariffs.residential.tiers]
cycle = "annual"                  # settles Jan 1 00:00 by default
thresholds = ["2880", "4800"]
adders = ["0", "0.05", "0.30"]

# Worked example B: M2, Shanghai residential, per-period tier adders.
[tariffs.shanghai]
name = "Shanghai residential"
rates = { peak = "0.617", valley = "0.307" }
registers = ["peak", "peak", "peak", "valley"]
periods = [
  { start = "06:00", end = "22:00", rate = "peak" },
  { start = "22:00", end = "06:00", rate = "valley" },
]
[tariffs.shanghai.tiers]
cycle = "annual"
thresholds = ["3120", "4800"]
period_adders = [{}, { peak = "0.06", valley = "0.03" }, { peak = "0.36", valley = "0.18" }]

# Worked example C: water, monthly tiers.
[tariffs.water]
name = "Residential water"
commodity = "water"
[tariffs.water.tiers]
cycle = "monthly"
thresholds = ["18", "25"]
prices = ["3.00", "4.50", "9.00"]

[tariffs.flat]
name = "Shops, single rate with a price change"
price = "0.8000"
[[tariffs.flat.versions]]
effective_from = 2025-07-01
price = "0.8500"
"""


def catalogue_from(text: str) -> tuple[TariffCatalogue, list[FieldError]]:
    errors: list[FieldError] = []
    cat = parse_tariffs(tomllib.loads(text).get("tariffs", {}), errors, timezone=TZ)
    return cat, errors


@pytest.fixture(scope="session")
def catalogue() -> TariffCatalogue:
    cat, errors = catalogue_from(CATALOGUE_TOML)
    assert not errors, [str(e) for e in errors]
    return cat
