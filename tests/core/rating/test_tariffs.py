"""Tariff catalogue: structures, seasons, versions, tier cycles, and validation errors that
name the exact entry and the fix."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest

from openprepay.core.rating.tariffs import Proration, TierMethod

from .conftest import catalogue_from

TZ = ZoneInfo("Asia/Shanghai")


def errors_of(text: str) -> list[str]:
    _, errors = catalogue_from(text)
    return [str(e) for e in errors]


TOU_HEAD = """
[tariffs.residential]
rates = { sharp = "0.72", peak = "0.60", flat = "0.50", valley = "0.20" }
"""


def test_catalogue_structures(catalogue):
    assert [t.id for t in catalogue] == ["residential", "shanghai", "water", "flat"]
    res = catalogue.get("residential").versions[0]
    assert res.time_of_use and res.tiers is not None and res.tiers.method is TierMethod.M1
    assert res.rates["sharp"] == Decimal("0.7200")
    assert catalogue.get("shanghai").versions[0].tiers.method is TierMethod.M2
    water = catalogue.get("water")
    assert water.unit == "m³" and water.versions[0].tiers.method is TierMethod.PRICES
    with pytest.raises(KeyError, match="unknown tariff 'nope'"):
        catalogue.get("nope")


def test_overlapping_periods_name_both_entries():
    text = (
        TOU_HEAD
        + """periods = [
  { start = "00:00", end = "08:00", rate = "valley" },
  { start = "08:00", end = "11:30", rate = "peak" },
  { start = "11:00", end = "24:00", rate = "flat" },
]"""
    )
    assert errors_of(text) == [
        "tariffs.residential.periods[2]: overlaps periods[1] (08:00–11:30); periods must not "
        "overlap — end one where the next starts"
    ]


def test_gaps_in_a_day_table_are_reported_with_the_uncovered_span():
    text = (
        TOU_HEAD
        + """periods = [
  { start = "23:00", end = "07:00", rate = "valley" },
  { start = "07:00", end = "11:30", rate = "peak" },
  { start = "12:00", end = "23:00", rate = "flat" },
]"""
    )
    assert errors_of(text) == [
        "tariffs.residential.periods: 11:30–12:00 is not covered by any period; a day table "
        "must cover 24 h exactly — add a period for it or extend a neighbour"
    ]


def test_unknown_rate_in_a_period_lists_the_rates():
    text = (
        TOU_HEAD
        + """periods = [
  { start = "00:00", end = "12:00", rate = "valley" },
  { start = "12:00", end = "24:00", rate = "peek" },
]"""
    )
    (err,) = errors_of(text)
    assert err.startswith("tariffs.residential.periods[1].rate: unknown rate 'peek' (rates: ")


def test_unordered_thresholds_name_the_entry():
    text = """
[tariffs.t]
price = "0.5"
[tariffs.t.tiers]
cycle = "annual"
thresholds = ["4800", "2880"]
adders = ["0", "0.05", "0.30"]
"""
    assert errors_of(text) == [
        "tariffs.t.tiers.thresholds[1]: must be greater than thresholds[0] (4800); "
        "thresholds must increase"
    ]


def test_adders_must_match_the_number_of_tiers():
    text = """
[tariffs.t]
price = "0.5"
[tariffs.t.tiers]
cycle = "monthly"
thresholds = ["240", "400"]
adders = ["0", "0.05"]
"""
    assert errors_of(text) == [
        "tariffs.t.tiers.adders: expected 3 values (one per tier: 2 thresholds make 3 tiers), got 2"
    ]


def test_versions_with_the_same_effective_date_are_refused():
    text = """
[tariffs.t]
price = "0.5"
[[tariffs.t.versions]]
effective_from = 2025-01-01
price = "0.6"
[[tariffs.t.versions]]
effective_from = 2025-01-01
price = "0.7"
"""
    assert errors_of(text) == [
        "tariffs.t.versions[1].effective_from: same date as versions[0] (2025-01-01); each "
        "version needs its own effective_from — merge them or change one date"
    ]


def test_many_errors_are_reported_together():
    text = """
[tariffs.a]
price = "0.1234567"
[tariffs.b]
rates = { peak = "0.6" }
[tariffs.c]
price = "0.5"
periods = [{ start = "00:00", end = "24:00", rate = "all" }]
[tariffs.d]
commodity = "gas"
price = "1"
[tariffs.e]
price = "0.5"
[tariffs.e.tiers]
cycle = "monthly"
settlement_month = 3
settlement_day = 31
thresholds = ["10"]
prices = ["1", "2"]
adders = ["0", "1"]
"""
    errs = errors_of(text)
    assert "tariffs.a.price: at most 6 decimal places, got 0.1234567" in errs
    assert (
        "tariffs.b.rates: time-of-use `rates` need a day table: add `periods` (24 h exactly)"
        in errs
    )
    assert any(e.startswith("tariffs.c.periods: only a time-of-use tariff") for e in errs)
    assert "tariffs.d.commodity: expected one of electricity, water; got 'gas'" in errs
    assert "tariffs.e.tiers.settlement_day: expected 1..28, got 31" in errs
    assert any(e.startswith("tariffs.e.tiers.settlement_month: a monthly cycle") for e in errs)
    assert any(e.startswith("tariffs.e.tiers: give exactly one of `prices`") for e in errs)


def test_seasons_pick_the_day_table_and_must_not_overlap():
    text = """
[tariffs.s]
rates = { peak = "0.6", valley = "0.3" }
periods = [{ start = "08:00", end = "22:00", rate = "peak" },
           { start = "22:00", end = "08:00", rate = "valley" }]
[tariffs.s.day_tables.summer]
periods = [{ start = "07:00", end = "23:00", rate = "peak" },
           { start = "23:00", end = "07:00", rate = "valley" }]
[[tariffs.s.seasons]]
from = "07-01"
to = "09-30"
day_table = "summer"
"""
    cat, errors = catalogue_from(text)
    assert not errors
    tariff = cat.get("s")
    july = dt.datetime(2025, 7, 15, 7, 30, tzinfo=TZ)
    march = dt.datetime(2025, 3, 15, 7, 30, tzinfo=TZ)
    assert tariff.rate_at(july, TZ) == "peak"
    assert tariff.rate_at(march, TZ) == "valley"
    overlapping = (
        text
        + """
[[tariffs.s.seasons]]
from = "09-01"
to = "10-31"
day_table = "summer"
"""
    )
    assert errors_of(overlapping) == [
        "tariffs.s.seasons[1]: overlaps seasons[0] (07-01–09-30); seasons must not overlap — "
        "end one the day before the next starts"
    ]


def test_seasons_without_a_default_must_cover_the_year():
    text = """
[tariffs.s]
rates = { peak = "0.6" }
[tariffs.s.day_tables.summer]
periods = [{ start = "00:00", end = "24:00", rate = "peak" }]
[tariffs.s.day_tables.winter]
periods = [{ start = "00:00", end = "24:00", rate = "peak" }]
[[tariffs.s.seasons]]
from = "06-01"
to = "09-30"
day_table = "summer"
[[tariffs.s.seasons]]
from = "11-01"
to = "02-28"
day_table = "winter"
"""
    assert errors_of(text) == [
        "tariffs.s.seasons: days 03-01–05-31, 10-01–10-31 are in no season and there is no "
        "default `periods` table; add a season for them or a `periods` table"
    ]


def test_versions_inherit_and_replace_keys(catalogue):
    flat = catalogue.get("flat")
    assert flat.version_on(dt.date(2025, 6, 30)).rates == {"all": Decimal("0.8000")}
    assert flat.version_on(dt.date(2025, 7, 1)).rates == {"all": Decimal("0.8500")}
    (start,) = flat.version_starts(TZ)
    assert start == dt.datetime(2025, 6, 30, 16, tzinfo=dt.UTC)  # local midnight in UTC


def test_tier_cycles_in_the_site_time_zone(catalogue):
    tiers = catalogue.get("residential").versions[0].tiers
    start, end = tiers.cycle_bounds(dt.datetime(2025, 6, 1, tzinfo=dt.UTC), TZ)
    assert start == dt.datetime(2024, 12, 31, 16, tzinfo=dt.UTC)  # 2025-01-01 00:00 +08
    assert end == dt.datetime(2025, 12, 31, 16, tzinfo=dt.UTC)
    # 2025-12-31 17:00 UTC is already 2026-01-01 01:00 in Shanghai: the next cycle
    start2, _ = tiers.cycle_bounds(dt.datetime(2025, 12, 31, 17, tzinfo=dt.UTC), TZ)
    assert start2 == end
    water = catalogue.get("water").versions[0].tiers
    s, e = water.cycle_bounds(dt.datetime(2025, 2, 10, tzinfo=TZ), TZ)
    assert (s.astimezone(TZ).date(), e.astimezone(TZ).date()) == (
        dt.date(2025, 2, 1),
        dt.date(2025, 3, 1),
    )


def test_proration_of_thresholds(catalogue):
    tiers = catalogue.get("water").versions[0].tiers
    cycle = tiers.cycle_bounds(dt.datetime(2025, 4, 10, tzinfo=TZ), TZ)
    opened = dt.datetime(2025, 4, 16, 9, tzinfo=TZ)
    assert tiers.proration is Proration.ACTUAL_DAYS
    assert tiers.proration_factor(opened, cycle, TZ) == Fraction(15, 30)
    before = dt.datetime(2025, 3, 1, tzinfo=TZ)
    assert tiers.proration_factor(before, cycle, TZ) == 1


def test_versions_keep_the_structure_and_the_tier_cycle():
    text = """
[tariffs.t]
price = "0.5"
[tariffs.t.tiers]
cycle = "annual"
thresholds = ["2880"]
adders = ["0", "0.05"]
[[tariffs.t.versions]]
effective_from = 2025-01-01
rates = { peak = "0.6" }
periods = [{ start = "00:00", end = "24:00", rate = "peak" }]
[[tariffs.t.versions]]
effective_from = 2026-01-01
[tariffs.t.versions.tiers]
cycle = "monthly"
thresholds = ["240"]
adders = ["0", "0.05"]
"""
    assert errors_of(text) == [
        "tariffs.t.versions[0]: switches between time of use and a single rate; define a new "
        "tariff and move the accounts to it instead",
        "tariffs.t.versions: versions change the tier cycle (cycle, settlement or proration); "
        "a tariff keeps one cycle — define a new tariff for the new cycle",
    ]
