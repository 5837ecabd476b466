"""CJ/T 188 water meters live: the simulated bus on a loopback socket, the framed transport,
the link arbiter and the plugin's driver — reads, valve commands confirmed by read-back,
silent and garbling meters, and what the profiles declare."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import (
    DeviceConfig,
    LinkConfig,
    LinkProtocol,
    LinkType,
    parse_site,
)
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.errors import ConfigError, DeviceRejected
from openprepay.core.model import DeviceCommand, MeterKind, Quality, Sample
from openprepay.plugins.cjt188 import codec
from openprepay.plugins.cjt188.driver import Cjt188Driver, read_address
from openprepay.plugins.cjt188.framing import FRAMING
from openprepay.plugins.cjt188.plugin import profiles
from openprepay.plugins.cjt188.simulator import Cjt188MeterSimulator
from openprepay.plugins.framed import FramedTransport
from tests.conftest import simulate, until

FROZEN = SimulatorOptions(speedup=0, ephemeral_ports=True)
MODELS = ("cjt188.cold_water_dn15", "cjt188.cold_water_dn20", "cjt188.cold_water_dn25")
A1, A2, A3 = "00000000000011", "00000000000012", "20260000001234"


def site_data(
    meters: dict[str, dict[str, Any]], link_type: str = "rtu_over_tcp", interval_s: float = 60
) -> dict:
    devices = {
        mid: {
            "model": m.get("model", MODELS[0]),
            "link": "water",
            "address": m["address"],
            "building": "A",
            "options": m.get("options", {}),
        }
        for mid, m in meters.items()
    }
    link: dict[str, Any] = {"type": link_type, "protocol": "cjt188", "timeout_ms": 300}
    if link_type == "serial":
        link["device"] = "socket://127.0.0.1:1"
    else:
        link.update(host="127.0.0.1", port=1)
    return {
        "site": {"id": "t"},
        "poll": {"interval_s": interval_s, "stats_interval_s": 60, "backoff_initial_s": 0.2},
        "links": {"water": link},
        "buildings": {"A": {"floors": ["1"]}},
        "devices": devices,
    }


Start = Callable[..., Awaitable[tuple[Runtime, SimulatedSite]]]
#: Every sample the running services published, per test.
SAMPLES: list[Sample] = []


@pytest.fixture
async def service(plugins: Plugins) -> AsyncIterator[Start]:
    started: list[tuple[Runtime, SimulatedSite]] = []
    SAMPLES.clear()

    async def start(
        meters: dict[str, dict[str, Any]], link_type: str = "rtu_over_tcp", interval_s: float = 60
    ) -> tuple[Runtime, SimulatedSite]:
        data = site_data(meters, link_type, interval_s)
        sims = SimulatedSite(parse_site(data), plugins, FROZEN)
        await sims.start()
        runtime = Runtime(sims.service_site(), plugins)
        runtime.bus.subscribe(Sample, SAMPLES.append)
        started.append((runtime, sims))
        await runtime.start()
        return runtime, sims

    yield start
    for runtime, sims in reversed(started):
        await runtime.stop()
        await sims.stop()


def test_the_profiles_declare_models_limits_and_unverified_status_bits(plugins: Plugins) -> None:
    flows = []
    for name in MODELS:
        model = plugins.model(name)
        assert model.kind is MeterKind.WATER and model.protocol == "cjt188"
        assert model.total_point == "volume"
        assert model.supply is not None and model.supply.state_point == "valve_open"
        assert model.limits is not None and model.limits.max_flow is not None
        flows.append(model.limits.max_flow)
        assert set(model.unverified_points) == {
            "valve_open",
            "valve_closed",
            "valve_abnormal",
            "battery_low",
        }
        assert model.point("volume").rollover == 1_000_000
    assert flows == sorted(flows) and len(set(flows)) == 3  # DN15 < DN20 < DN25


@pytest.mark.parametrize("link_type", ["rtu_over_tcp", "serial"])
async def test_a_poll_reads_volume_and_status_through_the_arbiter(
    service: Start, link_type: str
) -> None:
    runtime, sims = await service(
        {
            "W1": {"address": A1, "options": {"sim_volume_m3": 123.45}},
            "W2": {"address": A2, "options": {"sim_valve": "closed", "sim_battery_low": True}},
        },
        link_type,
    )
    one = await runtime.arbiter.read_now("W1")
    assert one.quality is Quality.GOOD, one.error
    assert one.values["volume"] == pytest.approx(123.45)
    assert (one.values["valve_open"], one.values["valve_closed"]) == (1, 0)
    two = await runtime.arbiter.read_now("W2")
    assert two.quality is Quality.GOOD, two.error
    assert (two.values["valve_open"], two.values["valve_closed"], two.values["battery_low"]) == (
        0,
        1,
        1,
    )
    assert sims.devices["W2"].snapshot()["valve_closed"] == 1


async def test_valve_close_and_open_are_confirmed_by_reading_st_back(service: Start) -> None:
    runtime, sims = await service({"W1": {"address": A1, "options": {"sim_valve_travel_s": 0.2}}})
    sim = sims.devices["W1"]
    assert isinstance(sim, Cjt188MeterSimulator)
    close = await runtime.arbiter.execute(DeviceCommand("W1", "VALVE_CLOSE", reason="test"))
    assert close.confirmed, close.detail
    assert close.readback["valve_closed"] == 1 and close.readback["valve_open"] == 0
    assert sim.snapshot()["valve_closed"] == 1
    reopen = await runtime.arbiter.execute(DeviceCommand("W1", "VALVE_OPEN", reason="test"))
    assert reopen.confirmed, reopen.detail
    assert sim.snapshot()["valve_open"] == 1
    assert sim.valve_commands == ["close", "open"]


async def test_an_abnormal_valve_is_uncertain_and_never_confirmed(service: Start) -> None:
    runtime, _ = await service({"W1": {"address": A1, "options": {"sim_abnormal": True}}})
    sample = await runtime.arbiter.read_now("W1")
    assert sample.quality is Quality.GOOD
    assert sample.quality_of("valve_open") is Quality.UNCERTAIN
    assert sample.quality_of("volume") is Quality.GOOD
    outcome = await runtime.arbiter.execute(DeviceCommand("W1", "VALVE_CLOSE", reason="test"))
    assert not outcome.confirmed and "abnormal" in outcome.detail


async def test_silent_and_garbling_meters_give_bad_samples_without_values(
    service: Start,
) -> None:
    runtime, _ = await service(
        {
            "OK": {"address": A1},
            "MUTE": {"address": A2, "options": {"sim_silent": True}},
            "NOISE": {"address": A3, "options": {"sim_garbage": True}},
        },
        interval_s=0.5,
    )

    def of(meter: str) -> list[Sample]:
        return [s for s in SAMPLES if s.source == meter and s.model.kind is MeterKind.WATER]

    await until(lambda: len(of("OK")) >= 8 and of("MUTE") and of("NOISE"))
    for mute in of("MUTE"):
        assert mute.quality is Quality.BAD_COMM_FAILURE and mute.values == {}
    for noise in of("NOISE"):
        assert noise.quality is Quality.BAD_DEVICE_FAILURE and noise.values == {}
        assert "checksum" in (noise.error or "")
    # The neighbour is unaffected: every one of its polls is Good.
    assert all(s.quality is Quality.GOOD and "volume" in s.values for s in of("OK"))
    # The silent meter is backed off: it costs the bus fewer slots than a healthy one.
    ok, mute = runtime.arbiter.health("OK"), runtime.arbiter.health("MUTE")
    assert mute.backoff_s > 0 and mute.timeouts == mute.polls_failed
    assert mute.polls_failed < ok.polls_ok


@pytest.fixture
async def bus(plugins: Plugins) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    opened: list[Any] = []

    async def start(**options: Any) -> tuple[FramedTransport, Cjt188Driver, Cjt188MeterSimulator]:
        site = parse_site(site_data({"W": {"address": A3, "options": options}}))
        sims = SimulatedSite(site, plugins, FROZEN)
        host, port = (await sims.start())["water"]
        link = dataclasses.replace(site.links["water"], host=host, port=port)
        assert isinstance(link, LinkConfig) and link.protocol is LinkProtocol.CJT188
        assert link.type is LinkType.RTU_OVER_TCP
        transport = FramedTransport(link, FRAMING)
        await transport.connect()
        opened.append((transport, sims))
        device = site.devices["W"]
        driver = plugins.make_driver(plugins.model(device.model), device, transport)
        assert isinstance(driver, Cjt188Driver)
        sim = sims.devices["W"]
        assert isinstance(sim, Cjt188MeterSimulator)
        return transport, driver, sim

    yield start
    for transport, sims in opened:
        await transport.close()
        await sims.stop()


async def test_the_address_of_the_meter_on_the_bus_is_read_with_the_wildcard(bus: Any) -> None:
    transport, _, _ = await bus()
    assert await read_address(transport) == A3


async def test_an_unknown_di_gets_the_meters_error_reply(bus: Any) -> None:
    _, driver, _ = await bus()
    with pytest.raises(DeviceRejected, match="error reply 0xC1 to DI 8102"):
        await driver.ask(codec.Control.READ_DATA, 0x8102)


async def test_a_meter_counting_in_litres_is_published_in_cubic_metres(bus: Any) -> None:
    _, driver, _ = await bus(sim_unit="L", sim_volume_m3=12.5)
    sample = await driver.read()
    assert sample.values["volume"] == pytest.approx(12.5)


async def test_the_bcd_register_wraps_at_a_million_and_stays_good(plugins: Plugins) -> None:
    data = site_data(
        {"W1": {"address": A1, "options": {"sim_volume_m3": 999999.5, "sim_flow_m3h": 2.0}}},
        interval_s=0.3,
    )
    sims = await simulate(data, plugins, speedup=3600)
    runtime = Runtime(parse_site(data), plugins)
    seen: list[Sample] = []
    runtime.bus.subscribe(Sample, seen.append)
    await runtime.start()
    try:

        def volumes() -> list[Sample]:
            return [s for s in seen if s.source == "W1" and s.model.kind is MeterKind.WATER]

        await until(lambda: any(s.values.get("volume", 1e9) < 1000 for s in volumes()), 60)
        ours = volumes()
        assert ours[0].values["volume"] > 999_999
        wrapped = next(s for s in ours if s.values.get("volume", 1e9) < 1000)
        assert wrapped.quality is Quality.GOOD, wrapped.error
        assert wrapped.quality_of("volume") is Quality.GOOD, wrapped.point_errors
    finally:
        await runtime.stop()
        await sims.stop()


def test_a_meter_without_a_fourteen_digit_address_is_refused_by_field() -> None:
    data = site_data({"W1": {"address": "000000000011"}})
    with pytest.raises(ConfigError, match=r"devices\.W1\.address: expected exactly 14 digits"):
        parse_site(data)
    profile = profiles()[MODELS[0]]
    wildcard = DeviceConfig("W2", MODELS[0], "water", None, address=codec.WILDCARD)
    with pytest.raises(ConfigError, match=r"devices\.W2\.address: the wildcard is not a meter"):
        Cjt188Driver(profile, wildcard, transport=None)  # type: ignore[arg-type]
