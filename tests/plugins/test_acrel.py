"""Acrel prepaid meters through the link arbiter: relay commands confirmed by read-back, a
LOCAL meter's own balance, and top-ups by purchase count."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from openprepay.core.app.plugins import Plugins
from openprepay.core.config.site import ControlMode, DeviceConfig
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.errors import DeviceRejected
from openprepay.core.model import DeviceCommand, Sample
from openprepay.plugins.meter_acrel import plugin as acrel
from openprepay.plugins.meter_acrel.simulator import (
    AcrelPowerMeterSimulator,
    AcrelPrepaidSimulator,
    AcrelThreePhasePrepaidSimulator,
)

from .conftest import FROZEN, Meter, StartService

PRICES = {"energy_sharp": 0.72, "energy_peak": 0.60, "energy_flat": 0.50, "energy_valley": 0.20}


def test_each_model_gets_its_simulator(plugins: Plugins) -> None:
    expected = {
        "acrel.DDSY1352": AcrelPrepaidSimulator,
        "acrel.DTSY1352": AcrelThreePhasePrepaidSimulator,
        "acrel.DTSD1352": AcrelPowerMeterSimulator,
        "acrel.ADW300": AcrelPowerMeterSimulator,
    }
    assert set(acrel.PREPAID) == {"acrel.DDSY1352", "acrel.DTSY1352"}
    for name, cls in expected.items():
        device = DeviceConfig("m", name, "gw", 1)
        assert type(plugins.make_simulator(plugins.model(name), device, FROZEN)) is cls
    for name in acrel.PREPAID:
        assert plugins.model(name).supply is not None
        assert {c.name for c in plugins.model(name).commands} >= {"TRIP", "CLOSE", "RECHARGE"}
    for name in ("acrel.DTSD1352", "acrel.ADW300"):
        assert plugins.model(name).supply is None and not plugins.model(name).commands


@pytest.mark.parametrize("model", sorted(acrel.PREPAID))
async def test_trip_and_close_are_confirmed_and_cut_the_load(
    model: str, service: StartService
) -> None:
    svc = await service(Meter(model, unit_id=5, options={"sim_load_kw": 2.0}))
    arbiter = svc.runtime.arbiter
    before = await arbiter.read_now("M5")
    assert before.values["supply_on"] == 1 and before.values["power_active"] > 0

    trip = await arbiter.execute(DeviceCommand("M5", "TRIP", reason="test: arrears"))
    assert trip.confirmed, trip.detail
    assert trip.readback == {"0x0057": 1, "0x0058": 1}
    after = await arbiter.read_now("M5")
    assert after.values["supply_on"] == 0 and after.values["relay_trip"] == 1
    assert after.values["power_active"] == 0 and after.values["current"] == 0

    close = await arbiter.execute(DeviceCommand("M5", "CLOSE", reason="test: paid"))
    assert close.confirmed, close.detail
    again = await arbiter.read_now("M5")
    assert again.values["supply_on"] == 1 and again.values["power_active"] > 0


async def test_a_meter_that_ignores_the_trip_is_not_confirmed(service: StartService) -> None:
    svc = await service(Meter("acrel.DDSY1352", unit_id=2))
    sim = svc.sims.devices["M2"]
    assert isinstance(sim, AcrelPrepaidSimulator)
    sim.on_write = lambda function, address, words: None  # acknowledges, does nothing
    outcome = await svc.runtime.arbiter.execute(DeviceCommand("M2", "TRIP"))
    assert not outcome.confirmed
    assert outcome.readback == {"0x0057": 0, "0x0058": 0}


def local_meter(remaining: float, buy_count: int = 4, load_kw: float = 3.0) -> Meter:
    return Meter(
        "acrel.DDSY1352",
        unit_id=7,
        control_mode=ControlMode.LOCAL,
        options={"sim_load_kw": load_kw, "sim_remaining": remaining, "sim_buy_count": buy_count},
    )


async def test_local_meter_deducts_at_its_prices_and_trips_itself_at_zero(
    service: StartService,
) -> None:
    # One simulated hour per real second, starting at 19:00 local (尖 sharp rate until 21:00).
    start = datetime(2026, 3, 2, 19, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    options = SimulatorOptions(speedup=3600, start=start, ephemeral_ports=True)
    svc = await service(local_meter(remaining=6.0), options=options)
    arbiter = svc.runtime.arbiter

    first = await arbiter.read_now("M7")
    await asyncio.sleep(0.4)
    second = await arbiter.read_now("M7")
    used_kwh = {p: second.values[p] - first.values[p] for p in PRICES}
    assert sum(used_kwh.values()) > 0.5
    charged = sum(kwh * PRICES[p] for p, kwh in used_kwh.items())
    deducted = first.values["remaining_amount"] - second.values["remaining_amount"]
    # Registers show whole fen and hundredths of kWh, read a few simulated seconds apart.
    assert deducted == pytest.approx(charged, abs=0.1)
    assert used_kwh["energy_sharp"] > 0

    async def tripped() -> Sample:
        while True:
            sample = await arbiter.read_now("M7")
            if sample.values["power_active"] == 0:
                return sample
            await asyncio.sleep(0.05)

    cut = await asyncio.wait_for(tripped(), 10)
    assert cut.values["remaining_amount"] <= 0.0
    assert cut.values["remaining_amount"] > -0.5  # it stopped at its limit, not later
    assert cut.values["current"] == 0
    assert cut.values["fee_state_raw"] == 0x0100  # simulator convention for "relay open"
    # The meter tripped itself: no forced command was written.
    assert cut.values["relay_forced"] == 0
    energy = cut.values["energy_total"]
    await asyncio.sleep(0.2)
    assert (await arbiter.read_now("M7")).values["energy_total"] == energy


async def test_recharge_is_applied_once_per_purchase_count(service: StartService) -> None:
    svc = await service(local_meter(remaining=12.34, buy_count=4))  # frozen clock
    arbiter = svc.runtime.arbiter

    def recharge(count: int, amount: float) -> DeviceCommand:
        return DeviceCommand("M7", "RECHARGE", {"buy_count": count, "amount": amount}, "top-up")

    outcome = await arbiter.execute(recharge(5, 50.0))
    assert outcome.confirmed and "refused" not in outcome.detail
    sample = await arbiter.read_now("M7")
    assert sample.values["buy_count"] == 5
    assert sample.values["remaining_amount"] == pytest.approx(62.34)

    # The same purchase again (a retry after a lost answer): the meter refuses the
    # duplicate, and the read-back shows the purchase is in — confirmed, not applied twice.
    repeat = await arbiter.execute(recharge(5, 50.0))
    assert repeat.confirmed
    assert "refused" in repeat.detail
    sample = await arbiter.read_now("M7")
    assert sample.values["buy_count"] == 5
    assert sample.values["remaining_amount"] == pytest.approx(62.34)

    # A count out of sequence is refused and the read-back does not confirm it.
    with pytest.raises(DeviceRejected, match="illegal data value"):
        await arbiter.execute(recharge(7, 50.0))
    sample = await arbiter.read_now("M7")
    assert sample.values["buy_count"] == 5
    assert sample.values["remaining_amount"] == pytest.approx(62.34)


async def test_recharge_recloses_a_meter_that_tripped_on_its_balance(
    service: StartService,
) -> None:
    options = SimulatorOptions(speedup=3600, ephemeral_ports=True)
    svc = await service(local_meter(remaining=0.3, buy_count=1, load_kw=4.0), options=options)
    arbiter = svc.runtime.arbiter
    for _ in range(200):
        if (await arbiter.read_now("M7")).values["power_active"] == 0:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the meter never tripped on its balance")
    outcome = await arbiter.execute(
        DeviceCommand("M7", "RECHARGE", {"buy_count": 2, "amount": 100.0})
    )
    assert outcome.confirmed
    sample = await arbiter.read_now("M7")
    assert sample.values["power_active"] > 0
    assert 90 < sample.values["remaining_amount"] <= 100.0


async def test_alarm_amounts_and_prices_are_set_and_read_back(service: StartService) -> None:
    svc = await service(local_meter(remaining=20.0))
    arbiter = svc.runtime.arbiter
    alarms = await arbiter.execute(
        DeviceCommand("M7", "SET_ALARMS", {"alarm1": 30.0, "alarm2": 10.5})
    )
    assert alarms.confirmed, alarms.detail
    prices = {"sharp": 1.0123, "peak": 0.8, "flat": 0.55, "valley": 0.3}
    outcome = await arbiter.execute(DeviceCommand("M7", "SET_PRICES", prices))
    assert outcome.confirmed, outcome.detail
    sample = await arbiter.read_now("M7")
    assert sample.values["alarm1_amount"] == 30.0 and sample.values["alarm2_amount"] == 10.5
    assert [sample.values[f"price_{r}"] for r in prices] == list(prices.values())
    # Alarm 1 below alarm 2 is refused and leaves both as they were.
    with pytest.raises(DeviceRejected):
        await arbiter.execute(DeviceCommand("M7", "SET_ALARMS", {"alarm1": 1.0, "alarm2": 2.0}))
    sample = await arbiter.read_now("M7")
    assert sample.values["alarm1_amount"] == 30.0 and sample.values["alarm2_amount"] == 10.5


async def test_main_meter_measures_its_feeders_plus_line_loss(service: StartService) -> None:
    # The main meter is built before its feeders (as in the demo, where its link comes first).
    main = Meter(
        "acrel.DTSD1352",
        unit_id=1,
        id="MAIN",
        options={"sim_feeds": ["E2", "E3"], "sim_load_kw": 0.5, "sim_loss": 0.04},
    )
    feeders = [
        Meter("acrel.DDSY1352", unit_id=i, id=f"E{i}", options={"sim_load_kw": 2.0}) for i in (2, 3)
    ]
    # Simulated time runs in real time from 10:01, far from a 5-minute noise boundary.
    start = datetime(2026, 3, 2, 10, 1, tzinfo=ZoneInfo("Asia/Shanghai"))
    options = SimulatorOptions(speedup=1, start=start, ephemeral_ports=True)
    svc = await service(main, *feeders, options=options)
    await asyncio.sleep(0.05)
    arbiter = svc.runtime.arbiter
    fed = 0.0
    for feeder in ("E2", "E3"):
        fed += (await arbiter.read_now(feeder)).values["power_active"]
    measured = (await arbiter.read_now("MAIN")).values["power_active"]
    sim = svc.sims.devices["MAIN"]
    assert isinstance(sim, AcrelPowerMeterSimulator)
    own = sim.load.at(start.astimezone(sim.tz))
    assert fed > 1
    assert measured == pytest.approx(own + fed * 1.04, rel=0.01)
