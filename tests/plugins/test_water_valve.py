"""The valve-controlled water meter: valve commands through the link arbiter confirmed by
the status bits, valve travel, a LOCAL meter's prepaid volume, and the quality the driver
derives from the meter's own flags."""

from __future__ import annotations

import asyncio
import time

import pytest

from openprepay.core.app.plugins import Plugins
from openprepay.core.config.site import ControlMode, DeviceConfig
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.errors import DeviceRejected
from openprepay.core.model import DeviceCommand, MeterKind, Quality, Sample
from openprepay.plugins.water_valve.driver import ValveMeterDriver
from openprepay.plugins.water_valve.simulator import Valve, ValveMeterSimulator

from .conftest import FROZEN, Meter, StartBench, StartService

MODEL = "xintai.valve_meter"


def test_model_description(plugins: Plugins) -> None:
    model = plugins.model(MODEL)
    assert model.kind is MeterKind.WATER
    assert model.total_point == "volume_forward"
    assert model.supply is not None
    assert (model.supply.cut, model.supply.restore, model.supply.state_point) == (
        "VALVE_CLOSE",
        "VALVE_OPEN",
        "valve_open",
    )
    assert all(not p.verified for p in model.points)  # one source for every register
    sim = plugins.make_simulator(model, DeviceConfig("w", MODEL, "gw", 1), FROZEN)
    assert isinstance(sim, ValveMeterSimulator)


async def test_valve_close_and_open_are_confirmed_by_the_status_bits(
    service: StartService,
) -> None:
    svc = await service(Meter(MODEL, unit_id=4, options={"sim_flow_m3h": 0.6}))
    arbiter = svc.runtime.arbiter
    before = await arbiter.read_now("M4")
    assert (before.values["valve_open"], before.values["valve_closed"]) == (1, 0)
    assert before.values["flow_rate"] > 0

    close = await arbiter.execute(DeviceCommand("M4", "VALVE_CLOSE", reason="test: no credit"))
    assert close.confirmed, close.detail
    assert close.readback == {"valve_open": 0, "valve_closed": 1, "valve_abnormal": 0}
    shut = await arbiter.read_now("M4")
    assert shut.values["valve_open"] == 0  # the supply state point follows
    assert shut.values["flow_rate"] == 0

    reopen = await arbiter.execute(DeviceCommand("M4", "VALVE_OPEN", reason="test: paid"))
    assert reopen.confirmed, reopen.detail
    opened = await arbiter.read_now("M4")
    assert (opened.values["valve_open"], opened.values["valve_closed"]) == (1, 0)
    assert opened.values["flow_rate"] > 0


async def test_valve_travel_shows_neither_position_and_a_closed_valve_stops_the_flow(
    bench: StartBench,
) -> None:
    options = SimulatorOptions(speedup=600, ephemeral_ports=True)
    one = await bench(
        Meter(MODEL, options={"sim_flow_m3h": 2.0, "sim_valve_travel_s": 0.5}), options=options
    )
    driver, sim = one.driver, one.sim
    assert isinstance(sim, ValveMeterSimulator)
    first = await driver.read()
    await asyncio.sleep(0.1)
    flowing = await driver.read()
    assert flowing.values["volume_forward"] > first.values["volume_forward"]

    await one.transport.write(1, 6, 0x001C, [2])  # close
    moving = await driver.read()
    assert (moving.values["valve_open"], moving.values["valve_closed"]) == (0, 0)
    assert moving.values["flow_rate"] == 0
    deadline = time.monotonic() + 5
    while (await driver.read()).values["valve_closed"] != 1:
        assert time.monotonic() < deadline, "the valve never closed"
        await asyncio.sleep(0.05)
    closed = await driver.read()
    await asyncio.sleep(0.2)  # two simulated minutes
    later = await driver.read()
    assert later.values["volume_forward"] == closed.values["volume_forward"]
    assert later.values["flow_rate"] == 0 and sim.valve is Valve.CLOSED


async def test_local_meter_closes_its_valve_when_the_prepaid_volume_runs_out(
    service: StartService,
) -> None:
    options = SimulatorOptions(speedup=3600, ephemeral_ports=True)
    meter = Meter(
        MODEL,
        unit_id=9,
        control_mode=ControlMode.LOCAL,
        options={"sim_flow_m3h": 1.0, "sim_remaining": 0.5, "sim_volume_m3": 100.0},
    )
    svc = await service(meter, options=options)
    arbiter = svc.runtime.arbiter
    first = await arbiter.read_now("M9")
    assert first.values["valve_open"] == 1

    async def shut() -> Sample:
        while True:
            sample = await arbiter.read_now("M9")
            if sample.values["valve_closed"] == 1:
                return sample
            await asyncio.sleep(0.05)

    closed = await asyncio.wait_for(shut(), 20)
    assert closed.values["remaining_volume"] == 0.0
    assert closed.values["flow_rate"] == 0
    # Exactly the prepaid volume went through (float32 registers: about 10 µl).
    used = closed.values["volume_forward"] - first.values["volume_forward"]
    assert used + closed.values["remaining_volume"] == pytest.approx(
        first.values["remaining_volume"], abs=2e-5
    )

    # With nothing left the meter refuses to open; the read-back does not confirm it.
    with pytest.raises(DeviceRejected):
        await arbiter.execute(DeviceCommand("M9", "VALVE_OPEN"))
    # A top-up, then the platform opens the valve.
    topup = await arbiter.execute(DeviceCommand("M9", "SET_REMAINING", {"volume": 2.5}))
    assert topup.confirmed, topup.detail
    still = await arbiter.read_now("M9")
    assert still.values["valve_closed"] == 1  # no reopening by itself
    opened = await arbiter.execute(DeviceCommand("M9", "VALVE_OPEN"))
    assert opened.confirmed, opened.detail
    sample = await arbiter.read_now("M9")
    assert 0 < sample.values["remaining_volume"] <= 2.5


async def test_abnormal_valve_makes_the_valve_points_uncertain_and_is_not_confirmed(
    service: StartService,
) -> None:
    svc = await service(Meter(MODEL, unit_id=3, options={"sim_abnormal": True}))
    arbiter = svc.runtime.arbiter
    sample = await arbiter.read_now("M3")
    assert sample.values["valve_abnormal"] == 1
    assert sample.quality_of("valve_open") is Quality.UNCERTAIN
    assert sample.quality_of("valve_closed") is Quality.UNCERTAIN
    assert sample.quality_of("volume_forward") is Quality.GOOD
    assert sample.quality_of("battery_voltage") is Quality.GOOD
    outcome = await arbiter.execute(DeviceCommand("M3", "VALVE_CLOSE"))
    assert not outcome.confirmed
    assert "abnormal" in outcome.detail


async def test_low_battery_makes_the_battery_voltage_uncertain(bench: StartBench) -> None:
    one = await bench(Meter(MODEL, options={"sim_battery_v": 3.6}))
    assert isinstance(one.driver, ValveMeterDriver)
    sample = await one.driver.read()
    assert sample.point_quality is None
    assert sample.values["battery_voltage"] == pytest.approx(3.6, abs=1e-6)
    one.sim.battery_v = 3.1
    low = await one.driver.read()
    assert low.values["battery_low"] == 1
    assert low.values["battery_voltage"] == pytest.approx(3.1, abs=1e-6)
    assert low.quality_of("battery_voltage") is Quality.UNCERTAIN
    assert low.quality_of("valve_open") is Quality.GOOD


async def test_status_bits_in_each_valve_state(bench: StartBench) -> None:
    one = await bench(Meter(MODEL, options={"sim_valve": "closed", "sim_valve_travel_s": 0.2}))
    sim = one.sim
    assert isinstance(sim, ValveMeterSimulator)
    assert (await one.driver.read()).values["valve_closed"] == 1
    assert sim.raw(0x001C) == [0x0002]
    await one.transport.write(1, 6, 0x001C, [1])
    assert sim.raw(0x001C) == [0x0000]  # travelling (frozen clock: real seconds still pass)
    await asyncio.sleep(0.3)
    assert (await one.driver.read()).values["valve_open"] == 1
    assert sim.raw(0x001C) == [0x0001]
    sim.battery_v, sim.abnormal = 3.0, True
    await one.driver.read()
    assert sim.raw(0x001C) == [0x0004 | 0x0008]
    with pytest.raises(DeviceRejected, match="illegal data value"):
        await one.transport.write(1, 6, 0x001C, [3])


async def test_writes_to_the_float_registers(bench: StartBench) -> None:
    one = await bench(Meter(MODEL))
    sim = one.sim
    assert isinstance(sim, ValveMeterSimulator)
    codec = one.driver.profile.codecs["remaining_volume"]
    await one.transport.write(1, 16, 0x0008, codec.encode(7.25))
    assert sim.remaining == 7.25
    assert (await one.driver.read()).values["remaining_volume"] == 7.25
    # Two FC06 writes, one per half, as the vendor's own software writes floats.
    words = codec.encode(3.5)
    await one.transport.write(1, 6, 0x0008, [words[0]])
    await one.transport.write(1, 6, 0x0009, [words[1]])
    assert (await one.driver.read()).values["remaining_volume"] == 3.5
    with pytest.raises(DeviceRejected, match="illegal data value"):
        await one.transport.write(1, 16, 0x0008, codec.encode(-1.0))
    with pytest.raises(DeviceRejected, match="illegal data address"):
        await one.transport.write(1, 6, 0x0007, [0xAA])  # pipe status is read-only
