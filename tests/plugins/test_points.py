"""Every point of every shipped profile, read over a real socket, against the simulator.

The driver (ProfileDriver + ModbusTransport) reads a simulated meter through a gateway
socket; every decoded value must equal what the simulator holds, and every unit must be
the unit the quantity is measured in (the table below, written independently of the
profiles).
"""

from __future__ import annotations

import pytest

from openprepay.core.app.plugins import Plugins
from openprepay.core.model import ValueType
from openprepay.plugins.meter_acrel.plugin import profiles as acrel_profiles
from openprepay.plugins.water_valve.plugin import CATALOGUE as WATER_PROFILES

from .conftest import Bench, Meter, StartBench

#: The unit of every point name the shipped profiles use.
UNITS = {
    **{
        f"energy_{n}": "kWh"
        for n in ("total", "sharp", "peak", "flat", "valley", "deep_valley", "forward", "reverse")
    },
    "energy_reactive_forward": "kvarh",
    "energy_reactive_reverse": "kvarh",
    **{f"voltage{s}": "V" for s in ("", "_a", "_b", "_c")},
    **{f"current{s}": "A" for s in ("", "_a", "_b", "_c")},
    **{f"power_{s}": "kW" for s in ("a", "b", "c", "active")},
    "power_reactive": "kvar",
    "power_apparent": "kVA",
    "power_factor": "",
    "frequency": "Hz",
    "alarm1_amount": "CNY",
    "alarm2_amount": "CNY",
    "overdraft_limit": "CNY",
    "remaining_amount": "CNY",
    **{f"price_{r}": "CNY/kWh" for r in ("sharp", "peak", "flat", "valley")},
    "buy_count": "",
    "fee_state_raw": "",
    "relay_forced": "",
    "relay_trip": "",
    "supply_on": "",
    "power_limit": "",
    "volume_forward": "m³",
    "volume_reverse": "m³",
    "remaining_volume": "m³",
    "flow_rate": "m³/h",
    "pipe_full": "",
    "slave_address": "",
    "battery_voltage": "V",
    "valve_open": "",
    "valve_closed": "",
    "valve_abnormal": "",
    "battery_low": "",
    "pulse_coefficient": "",
}

#: (model, device options): simulator state set through the options a site file would use.
CASES = {
    "DDSY1352": (
        "acrel.DDSY1352",
        {"sim_load_kw": 1.7, "sim_energy_kwh": 1234.56, "sim_remaining": 88.8, "sim_buy_count": 7},
    ),
    "DTSY1352": ("acrel.DTSY1352", {"sim_load_kw": 6.2, "sim_energy_kwh": 98765.43}),
    "DTSD1352": ("acrel.DTSD1352", {"sim_load_kw": 25.0, "sim_energy_kwh": 543210.0}),
    "DTSD1352-CT40-PT100": (
        "acrel.DTSD1352",
        {"sim_load_kw": 800.0, "sim_energy_kwh": 9876543.0, "ct_ratio": 40, "pt_ratio": 100},
    ),
    "ADW300": ("acrel.ADW300", {"sim_load_kw": 3.3, "sim_energy_kwh": 4321.0}),
    "xintai": (
        "xintai.valve_meter",
        {"sim_flow_m3h": 0.8, "sim_volume_m3": 321.5, "sim_remaining": 12.25},
    ),
}


def expected_factor(model: str, options: dict, point: str) -> float:
    """The CT/PT multiplier the driver must apply to a secondary-side point."""
    ratio = acrel_profiles()[model].ratios.get(point) if model.startswith("acrel.") else None
    ct, pt = float(options.get("ct_ratio", 1)), float(options.get("pt_ratio", 1))
    return {"ct": ct, "pt": pt, "ctpt": ct * pt, None: 1.0}[ratio]


async def read_and_compare(bench: Bench, model_name: str, options: dict, plugins: Plugins) -> None:
    model = plugins.model(model_name)
    sample = await bench.driver.read()
    snapshot = bench.sim.snapshot()
    assert sample.quality.is_good
    assert set(sample.values) == set(snapshot) == {p.name for p in model.points}
    profiles = {**acrel_profiles(), **WATER_PROFILES.profiles}
    for name, held in snapshot.items():
        factor = expected_factor(model_name, options, name)
        got = sample.values[name]
        codec = profiles[model_name].codecs[name]
        if codec.wire.is_float:  # the float32 register's value, at the point's resolution
            held = codec.as_read(held)
        assert got == pytest.approx(held * factor, rel=1e-12, abs=1e-12), name
        assert sample.unit(name) == UNITS[name], name
        if model.point(name).value_type is ValueType.INT:
            assert isinstance(got, int), name


@pytest.mark.parametrize("case", list(CASES))
async def test_every_point_decodes_to_the_simulated_value_and_unit(
    case: str, bench: StartBench, plugins: Plugins
) -> None:
    model_name, options = CASES[case]
    one = await bench(Meter(model_name, unit_id=3, options=options))
    await read_and_compare(one, model_name, options, plugins)
    # A meaningful state, not zeros everywhere.
    values = one.sim.snapshot()
    assert values.get("power_active", 1) != 0
    assert values.get("flow_rate", 1) != 0


async def test_secondary_side_values_are_multiplied_by_ct_and_pt(bench: StartBench) -> None:
    options = {"sim_load_kw": 800.0, "sim_energy_kwh": 9876543.0, "ct_ratio": 40, "pt_ratio": 100}
    one = await bench(Meter("acrel.DTSD1352", options=options))
    sample = await one.driver.read()
    held = one.sim.snapshot()
    # The register holds a secondary-side voltage (about 2.2 V behind a 100:1 PT)...
    assert held["voltage_a"] == pytest.approx(2.2, abs=0.1)
    # ...and the point is the primary voltage, current, power and energy.
    assert sample.values["voltage_a"] == pytest.approx(220, rel=0.03)
    assert sample.values["current_a"] == pytest.approx(held["current_a"] * 40)
    assert sample.values["power_active"] == pytest.approx(held["power_active"] * 4000)
    assert sample.values["energy_total"] == pytest.approx(9876543.0, abs=4000 * 0.01)
    assert sample.values["frequency"] == held["frequency"]
    assert sample.values["power_factor"] == held["power_factor"]


#: Values at the edges of their wire types, set straight into the simulated registers.
EDGES = {
    "acrel.DDSY1352": {
        "energy_total": 42949672.95,  # u32 maximum × 0.01
        "power_active": -12.345,  # i16, negative (export)
        "power_reactive": -0.5,
        "power_factor": -0.999,
        "remaining_amount": -3.21,  # i32: overdraft reads negative
        "buy_count": 65535,
        "price_sharp": 1.2345,  # × 0.0001
        "frequency": 49.99,
    },
    "acrel.DTSY1352": {"energy_valley": 0.01, "remaining_amount": 123456.78, "buy_count": 0},
    "acrel.DTSD1352": {
        "power_a": -1234.567,  # i32, negative
        "power_active": 2147483.647,  # i32 maximum × 0.001
        "power_factor": -1.0,
        "energy_reverse": 42949672.95,
        "current_c": 655.35,  # u16 maximum × 0.01
    },
    "acrel.ADW300": {"power_active": -5.5, "power_c": -0.001, "energy_forward": 123456.78},
}


@pytest.mark.parametrize("model_name", list(EDGES))
async def test_edge_values_decode_exactly(
    model_name: str, bench: StartBench, plugins: Plugins
) -> None:
    one = await bench(Meter(model_name, options={"sim_load_kw": 1.0}))
    one.sim.values.update(EDGES[model_name])
    await read_and_compare(one, model_name, {}, plugins)
    sample = await one.driver.read()
    for name, value in EDGES[model_name].items():
        assert sample.values[name] == value, name


async def test_water_meter_float_registers_little_endian(bench: StartBench) -> None:
    one = await bench(Meter("xintai.valve_meter", options={"sim_flow_m3h": 0.545}))
    sim = one.sim
    sim.volume_forward, sim.volume_reverse, sim.remaining = 98765.4321, 0.545, 0.6
    sample = await one.driver.read()
    # Published at the profile's resolution (0.001 m³), not as the float32's binary digits.
    assert sample.values["volume_forward"] == 98765.43  # the register holds 98765.4296875
    assert sample.values["volume_reverse"] == 0.545
    assert sample.values["remaining_volume"] == 0.6  # not 0.6000000238418579
    # Low byte of the low word first: 0.545 = 0x3F0B851F sits at 0x0003 as 1F 85 0B 3F
    # (the protocol's example, 1E 85 0B 3F, is the float one step below).
    assert sim.raw(0x0003, 2) == [0x1F85, 0x0B3F]
    assert sample.values["slave_address"] == 1
    assert sample.values["pipe_full"] == 1
    sim.pipe_full = False
    assert (await one.driver.read()).values["pipe_full"] == 0
    assert sim.raw(0x0007) == [0x0055]
