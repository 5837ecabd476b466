"""Plausibility of samples (core/field/plausibility.py): ranges, legal state values, and
cumulative registers that run backwards or rise faster than the meter can meter.

Issue 9 §2: 3,686.1 V and `supply_on = -1` were published as Good, and a reading with
+2,000 kWh on the energy registers was billed. The limits come from the shipped profiles
(`[model.limits]`, point ranges and legal values) and the site's per-device overrides.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from openprepay.core.app.plugins import Plugins
from openprepay.core.config.site import DeviceConfig, parse_site
from openprepay.core.field.plausibility import (
    MARGIN,
    PlausibilityCheck,
    check_device_limits,
    device_limits,
)
from openprepay.core.model import DeviceModel, Quality, Sample

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins.load()


@pytest.fixture(scope="module")
def ddsy(plugins: Plugins) -> DeviceModel:
    return plugins.models["acrel.DDSY1352"]


def device(model: str = "acrel.DDSY1352", **limits: Any) -> DeviceConfig:
    return DeviceConfig("E-1", model, "gw", 1, limits=limits)


def check(model: DeviceModel, time_scale: float = 1.0, **limits: Any) -> PlausibilityCheck:
    return PlausibilityCheck(model, device_limits(model, device(model.name, **limits)), time_scale)


def sample(model: DeviceModel, seconds: float, **values: Any) -> Sample:
    return Sample("E-1", model, T0 + timedelta(seconds=seconds), dict(values))


def test_a_value_outside_its_range_is_bad_and_only_that_value(ddsy: DeviceModel) -> None:
    s = sample(ddsy, 0, energy_total=1000.0, voltage=3686.1, current=5.0, supply_on=1)
    findings = check(ddsy).assess(s)
    assert [f.point for f in findings] == ["voltage"]
    assert s.quality_of("voltage") is Quality.BAD_DEVICE_FAILURE
    assert "at most 300 V" in s.point_errors["voltage"]  # type: ignore[index]
    # One wrong measurement does not make the rest of the reading unusable.
    assert s.quality is Quality.GOOD
    assert s.quality_of("energy_total") is s.quality_of("supply_on") is Quality.GOOD


def test_an_illegal_state_value_is_bad(ddsy: DeviceModel, plugins: Plugins) -> None:
    s = sample(ddsy, 0, energy_total=1000.0, supply_on=-1, relay_trip=7, relay_forced=1)
    check(ddsy).assess(s)
    assert s.quality_of("supply_on") is Quality.BAD_DEVICE_FAILURE
    assert s.quality_of("relay_trip") is Quality.BAD_DEVICE_FAILURE
    assert s.point_errors["supply_on"] == "implausible -1: expected one of 0, 1"  # type: ignore[index]
    assert s.quality_of("relay_forced") is Quality.GOOD
    water = plugins.models["xintai.valve_meter"]
    w = Sample("W-1", water, T0, {"volume_forward": 5.0, "pipe_full": -1, "flow_rate": 80.0})
    check(water).assess(w)
    assert w.quality_of("pipe_full") is w.quality_of("flow_rate") is Quality.BAD_DEVICE_FAILURE


def test_energy_rising_faster_than_the_meter_can_meter_makes_the_reading_uncertain(
    ddsy: DeviceModel,
) -> None:
    c = check(ddsy)
    per_hour = 220 * 60 * 1 / 1000 * MARGIN  # 16.5 kWh in an hour
    assert c.limits.per_hour["energy_total"] == pytest.approx(per_hour)
    assert not c.assess(sample(ddsy, 0, energy_total=1000.00, energy_flat=400.00))
    assert not c.assess(sample(ddsy, 60, energy_total=1000.20, energy_flat=400.20))
    jump = sample(ddsy, 120, energy_total=3000.20, energy_flat=2400.20, supply_on=1)
    findings = c.assess(jump)
    assert {f.point for f in findings} == {"energy_total", "energy_flat"}
    assert all(f.cumulative for f in findings)
    # The whole reading is unbillable, its relay state untrusted; the registers are Bad.
    assert jump.quality is Quality.UNCERTAIN
    assert jump.quality_of("supply_on") is Quality.UNCERTAIN
    assert jump.quality_of("energy_total") is Quality.BAD_DEVICE_FAILURE
    assert jump.error is not None and "not billed" in jump.error
    assert "60 A × 220 V × 1 phase × 1.25" in jump.error
    assert [f.point for f in c.started] == ["energy_total", "energy_flat"]
    # The value came back: measured against the last plausible reading, it is fine.
    back = sample(ddsy, 180, energy_total=1000.40, energy_flat=400.40)
    assert not c.assess(back) and back.quality is Quality.GOOD
    assert sorted(c.ended) == ["energy_flat", "energy_total"]


def test_a_register_going_backwards_is_not_usage_and_keeps_the_reference(
    ddsy: DeviceModel,
) -> None:
    c = check(ddsy)
    c.assess(sample(ddsy, 0, energy_total=1000.00))
    c.assess(sample(ddsy, 10, energy_total=1000.01))
    for t in (20, 30):  # an episode of two readings: one event, not two
        low = sample(ddsy, t, energy_total=990.00)
        assert [f.point for f in c.assess(low)] == ["energy_total"]
        assert low.quality is Quality.UNCERTAIN
        assert "never runs backwards" in low.error  # type: ignore[operator]
    assert c.started == () and c.episodes == {"energy_total": 2}
    assert not c.assess(sample(ddsy, 40, energy_total=1000.02))


def test_a_register_wrapping_at_its_declared_maximum_is_usage(ddsy: DeviceModel) -> None:
    top = ddsy.point("energy_total").rollover
    assert top == pytest.approx(42_949_672.96)
    c = check(ddsy)
    c.assess(sample(ddsy, 0, energy_total=round(top - 0.05, 2)))
    wrapped = sample(ddsy, 60, energy_total=0.05)
    assert not c.assess(wrapped) and wrapped.quality is Quality.GOOD


def test_a_genuine_step_after_an_outage_is_plausible_only_if_possible_in_the_time(
    ddsy: DeviceModel,
) -> None:
    c = check(ddsy)
    c.assess(sample(ddsy, 0, energy_total=1000.00))
    c.assess(sample(ddsy, 10, energy_total=1000.01))
    ten_hours = 10 * 3600 + 10
    # 16.5 kWh an hour at most: 200 kWh in ten hours is not possible, 150 kWh is.
    assert c.assess(sample(ddsy, ten_hours, energy_total=1200.01))
    assert not c.assess(sample(ddsy, ten_hours + 1, energy_total=1150.01))


def test_a_garbled_first_reading_does_not_stay_the_reference(ddsy: DeviceModel) -> None:
    c = check(ddsy)
    c.assess(sample(ddsy, 0, energy_total=999_999.99))  # nothing to compare with yet
    assert c.assess(sample(ddsy, 10, energy_total=1000.00))  # disagrees: flagged ...
    # ... but a reference no reading confirmed is replaced: the next good one agrees.
    assert not c.assess(sample(ddsy, 20, energy_total=1000.01))


def test_meter_time_may_run_faster_on_a_simulated_site(ddsy: DeviceModel) -> None:
    c = check(ddsy, time_scale=3600)  # an hour of meter time per second
    c.assess(sample(ddsy, 0, energy_total=1000.0))
    assert not c.assess(sample(ddsy, 1, energy_total=1010.0))
    assert c.assess(sample(ddsy, 2, energy_total=1100.0))


def test_limits_scale_with_ct_pt_and_a_site_may_raise_them(plugins: Plugins) -> None:
    dtsd = plugins.models["acrel.DTSD1352"]
    factors = {p.name: 4000.0 for p in dtsd.points if p.role.value == "cumulative"}
    factors.update(current_a=40.0, voltage_a=100.0)
    scaled = device_limits(dtsd, device(dtsd.name), factors)
    nameplate = 220 * 80 * 3 / 1000 * MARGIN
    assert scaled.per_hour["energy_total"] == pytest.approx(nameplate * 4000)
    assert scaled.ranges["current_a"] == (0.0, 4000.0)
    assert scaled.ranges["voltage_a"] == (0.0, 50000.0)
    # A site override is in the units the meter publishes (primary), not scaled again.
    bigger = device_limits(dtsd, device(dtsd.name, max_current=400, current_a=[0, 500]), factors)
    assert bigger.per_hour["energy_total"] == pytest.approx(220 * 400 * 3 / 1000 * MARGIN)
    assert bigger.ranges["current_a"] == (0, 500)
    fixed = device_limits(dtsd, device(dtsd.name, max_per_hour=90))
    assert fixed.per_hour["energy_total"] == 90 and "set for this device" in fixed.basis


def site_with_limits(limits: dict[str, Any]) -> Any:
    return parse_site(
        {
            "site": {"id": "s"},
            "links": {"gw": {"type": "modbus_tcp", "host": "127.0.0.1"}},
            "buildings": {"A": {"floors": ["1"]}},
            "devices": {
                "E-1": {
                    "model": "acrel.DDSY1352",
                    "link": "gw",
                    "unit_id": 1,
                    "building": "A",
                    "limits": limits,
                }
            },
        }
    )


def test_site_overrides_are_checked_field_by_field(plugins: Plugins) -> None:
    good = site_with_limits({"max_current": 100, "current": [0, 125], "phases": 1})
    assert check_device_limits(good, plugins.models) == []
    bad = site_with_limits(
        {"max_current": -5, "phases": 4, "voltage": [300, 0], "amps": 5, "max_per_hour": "x"}
    )
    errors = {e.path: e.message for e in check_device_limits(bad, plugins.models)}
    assert errors["devices.E-1.limits.max_current"].startswith("expected a positive number (A)")
    assert errors["devices.E-1.limits.phases"] == "expected 1, 2 or 3, got 4"
    assert "expected [low, high] with low < high" in errors["devices.E-1.limits.voltage"]
    assert "unknown key" in errors["devices.E-1.limits.amps"]
    assert "positive number (per hour)" in errors["devices.E-1.limits.max_per_hour"]
    with pytest.raises(Exception, match="expected a table of plausibility limits"):
        site_with_limits(5)  # type: ignore[arg-type]
