"""DL/T 645 meters through the link arbiter, against simulated meters on a loopback bus."""

from __future__ import annotations

import pytest

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import Site, parse_site
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.errors import ConfigError, DeviceRejected
from openprepay.core.events import CommunicationLost, CommunicationRestored, LinkStateChanged
from openprepay.core.model import DeviceCommand, Quality
from openprepay.plugins.dlt645.codec import RemoteAction

from ...conftest import until
from ...live_link import (
    Recorder,
    assert_silent_meter_cost_only_its_backoff_slots,
    quick_reconnect_runtime,
)


def address(i: int) -> str:
    return f"{i:012d}"


def bus_site(
    n: int,
    *,
    link_type: str = "rtu_over_tcp",
    timeout_ms: int = 400,
    interval_s: float = 0.0,
    model: str = "dlt645.single_phase",
    options: dict | None = None,
    **poll: object,
) -> Site:
    link = {"type": link_type, "protocol": "dlt645", "timeout_ms": timeout_ms}
    if link_type == "serial":
        link["device"] = "socket://127.0.0.1:1"
    else:
        link.update(host="127.0.0.1", port=1)
    return parse_site(
        {
            "site": {"id": "t"},
            "poll": {"interval_s": interval_s, "stats_interval_s": 0.5, **poll},
            "links": {"bus": link},
            "buildings": {"A": {"floors": ["1"]}},
            "rooms": {"A-1": {"building": "A", "floor": "1"}},
            "devices": {
                f"D{i}": {
                    "model": model,
                    "link": "bus",
                    "address": address(i),
                    "room": "A-1",
                    "options": options or {},
                }
                for i in range(1, n + 1)
            },
        }
    )


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins.load()


OPTIONS = SimulatorOptions(ephemeral_ports=True)


@pytest.mark.parametrize("link_type", ["rtu_over_tcp", "serial"])
async def test_meters_are_read_with_good_quality(plugins: Plugins, link_type: str) -> None:
    site = bus_site(2, link_type=link_type, interval_s=0.05)
    async with SimulatedSite(site, plugins, OPTIONS) as sims:
        runtime = Runtime(sims.service_site(), plugins)
        rec = Recorder(runtime)
        async with runtime:
            await until(lambda: len(rec.meter_samples("D2")) >= 2)
        sample = rec.meter_samples("D2")[-1]
        assert sample.quality is Quality.GOOD
        held = sims.devices["D2"].snapshot()
        assert sample.values["energy_total"] == pytest.approx(held["energy_total"], abs=0.05)
        assert sample.values["supply_on"] == 1 and sample.values["relay_open"] == 0
        assert sample.values["status_word3"] == 0x0200  # money-based prepaid, relay closed
        assert sample.values["remaining_amount"] == 100.0
        assert 200 < sample.values["voltage"] < 240


async def test_silent_meter_costs_its_neighbours_only_its_backoff_slots(plugins: Plugins) -> None:
    site = bus_site(5, backoff_initial_s=0.5, backoff_max_s=60, quarantine_after=50)
    async with SimulatedSite(site, plugins, OPTIONS) as sims:
        sims.devices["D3"].silent = True
        runtime = Runtime(sims.service_site(), plugins)
        rec = Recorder(runtime)
        async with runtime:
            await until(lambda: runtime.arbiter.health("D3").consecutive_failures >= 3)
            worker = runtime.arbiter.workers["bus"]
        assert_silent_meter_cost_only_its_backoff_slots(rec, worker, "D3")


async def test_garbling_meter_gives_bad_quality_and_never_a_value(plugins: Plugins) -> None:
    site = bus_site(2, interval_s=0.02, backoff_initial_s=0.05, backoff_max_s=0.05)
    async with SimulatedSite(site, plugins, OPTIONS) as sims:
        sims.devices["D1"].garbage = True
        runtime = Runtime(sims.service_site(), plugins)
        rec = Recorder(runtime)
        async with runtime:
            await until(lambda: runtime.arbiter.health("D1").garbled_frames >= 3)
            bad = rec.meter_samples("D1")
            assert bad and all(
                s.quality is Quality.BAD_DEVICE_FAILURE and not s.values for s in bad
            )
            assert "checksum" in (bad[-1].error or "")
            assert runtime.arbiter.health("D2").polls_failed == 0
            sims.devices["D1"].garbage = False
            await until(lambda: runtime.arbiter.health("D1").online)
            worker = runtime.arbiter.workers["bus"]
            worker.publish_stats()
            assert worker.stats.published["garbled_frames"] >= 3


async def test_trip_and_close_are_confirmed_by_status_word_3(plugins: Plugins) -> None:
    site = bus_site(2, interval_s=0.05, options={"password": "02123456"})
    async with SimulatedSite(site, plugins, OPTIONS) as sims:
        meter = sims.devices["D1"]
        runtime = Runtime(sims.service_site(), plugins)
        async with runtime:
            trip = await runtime.arbiter.execute(DeviceCommand("D1", "TRIP", reason="test"))
            assert trip.confirmed and trip.readback == {"relay_open": 1}
            assert not meter.relay_closed and meter.actions == [RemoteAction.TRIP]
            assert meter.snapshot()["power_active"] == 0
            close = await runtime.arbiter.execute(DeviceCommand("D1", "CLOSE"))
            assert close.confirmed and meter.relay_closed
            await runtime.arbiter.execute(DeviceCommand("D1", "TRIP"))
            allow = await runtime.arbiter.execute(DeviceCommand("D1", "ALLOW_CLOSE"))
            assert allow.confirmed and not meter.relay_closed  # waits for the button
            meter.press_button()
            sample = await runtime.arbiter.read_now("D1")
            assert sample.values["supply_on"] == 1
            assert sims.devices["D2"].actions == []


async def test_stuck_relay_is_never_confirmed(plugins: Plugins) -> None:
    site = bus_site(1, options={"sim_relay_stuck": True})
    async with SimulatedSite(site, plugins, OPTIONS) as sims:
        runtime = Runtime(sims.service_site(), plugins)
        async with runtime:
            outcome = await runtime.arbiter.execute(DeviceCommand("D1", "TRIP"))
        assert not outcome.confirmed
        assert outcome.detail == "relay_open = 0, expected 1"
        assert sims.devices["D1"].relay_closed


async def test_wrong_password_is_refused_with_its_error_bits(plugins: Plugins) -> None:
    site = bus_site(1)
    async with SimulatedSite(site, plugins, OPTIONS) as sims:
        sims.devices["D1"].password = "04999999"
        runtime = Runtime(sims.service_site(), plugins)
        async with runtime:
            with pytest.raises(DeviceRejected, match="wrong password or not authorized"):
                await runtime.arbiter.execute(DeviceCommand("D1", "TRIP"))
        assert sims.devices["D1"].relay_closed


async def test_missing_optional_di_drops_its_points_only(plugins: Plugins) -> None:
    site = bus_site(1, interval_s=0.05, options={"sim_missing_dis": ["02800002"]})
    async with SimulatedSite(site, plugins, OPTIONS) as sims:
        runtime = Runtime(sims.service_site(), plugins)
        rec = Recorder(runtime)
        async with runtime:
            await until(lambda: len(rec.meter_samples("D1")) >= 2)
        sample = rec.meter_samples("D1")[-1]
        assert sample.quality is Quality.GOOD and "frequency" not in sample.values
        assert "energy_total" in sample.values


async def test_three_phase_meter_reads_its_blocks(plugins: Plugins) -> None:
    site = bus_site(1, interval_s=0.05, model="dlt645.three_phase")
    async with SimulatedSite(site, plugins, OPTIONS) as sims:
        runtime = Runtime(sims.service_site(), plugins)
        async with runtime:
            sample = await runtime.arbiter.read_now("D1")
        assert sample.quality is Quality.GOOD
        assert {"voltage_a", "voltage_c", "current_b", "power_active_c"} <= set(sample.values)


def test_esam_model_is_refused_with_the_reason(plugins: Plugins) -> None:
    site = bus_site(1, model="dlt645.state_grid_esam")
    with pytest.raises(ConfigError) as info:
        Runtime(site, plugins)
    [error] = [str(e) for e in info.value.errors]
    assert error.startswith("devices.D1.model: dlt645.state_grid_esam: ESAM-encrypted meters")
    assert "out of scope" in error


def test_bad_password_option_is_refused_before_anything_runs(plugins: Plugins) -> None:
    site = bus_site(1, options={"password": 2123456})
    with pytest.raises(ConfigError) as info:
        Runtime(site, plugins)
    assert [str(e) for e in info.value.errors] == [
        "devices.D1.options.password: expected 8 digits in quotes (level + 6-digit password, "
        'e.g. "02123456"), got 2123456'
    ]


async def test_link_reopens_after_the_gateway_restarts(plugins: Plugins) -> None:
    site = bus_site(2, interval_s=0.05)
    async with SimulatedSite(site, plugins, OPTIONS) as sims:
        runtime = quick_reconnect_runtime(sims, plugins, "bus")
        rec = Recorder(runtime)
        gateway = sims.links["bus"]
        async with runtime:
            await until(lambda: all(runtime.arbiter.health(m).online for m in ("D1", "D2")))
            await gateway.stop()
            await until(lambda: len(rec.of(CommunicationLost)) == 2)
            assert any(not e.connected for e in rec.of(LinkStateChanged))
            await gateway.start()  # same port
            await until(lambda: len(rec.of(CommunicationRestored)) == 2)
            good = rec.meter_samples("D1")[-1]
            assert good.quality is Quality.GOOD and good.values["energy_total"] > 0
            assert runtime.arbiter.workers["bus"].stats.reconnects >= 1
