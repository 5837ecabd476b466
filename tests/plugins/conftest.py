"""Fixtures for device-plugin tests: simulated devices behind a real gateway socket.

`bench` starts a `GatewaySimulator` on 127.0.0.1 (ephemeral port) hosting the simulated
devices the test asks for, connects a `ModbusTransport` to it and builds each device's
driver through the plugins' own hooks. It is parametrised over the two TCP framings a
site uses: RTU frames through a TCP-to-RS-485 gateway, and native Modbus TCP.

`proxied` runs the whole service (from a site file, with its database when the site has
one) against simulators reached through a `FaultProxy` (tests/faultproxy.py), which
rewrites answers with a valid CRC or MBAP length when a test injects a fault.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import (
    ControlMode,
    DeviceConfig,
    LinkConfig,
    LinkType,
    Site,
    load_site,
    parse_site,
)
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.events import Event
from openprepay.core.model import Sample
from openprepay.plugins.modbus import GatewaySimulator, ModbusTransport, ProfileDriver
from openprepay.plugins.modbus.simulation import RegisterDeviceSimulator
from tests.faultproxy import FaultProxy

#: Simulated time stands still: what a test reads is what the simulator holds.
FROZEN = SimulatorOptions(speedup=0, ephemeral_ports=True)

LINK_TYPES = [LinkType.RTU_OVER_TCP, LinkType.MODBUS_TCP]


@dataclass(frozen=True)
class Meter:
    """A device for the bench: model, unit id, control mode and device options."""

    model: str
    unit_id: int = 1
    control_mode: ControlMode = ControlMode.REMOTE
    options: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""

    def config(self, link: str) -> DeviceConfig:
        return DeviceConfig(
            id=self.id or f"M{self.unit_id}",
            model=self.model,
            link=link,
            unit_id=self.unit_id,
            control_mode=self.control_mode,
            options=dict(self.options),
        )


@dataclass
class Bench:
    link: LinkConfig
    gateway: GatewaySimulator
    transport: ModbusTransport
    sims: dict[int, RegisterDeviceSimulator]
    drivers: dict[int, ProfileDriver]

    @property
    def sim(self) -> RegisterDeviceSimulator:
        """The simulator of the only (or first) device."""
        return next(iter(self.sims.values()))

    @property
    def driver(self) -> ProfileDriver:
        return next(iter(self.drivers.values()))

    async def close(self) -> None:
        await self.transport.close()
        await self.gateway.stop()


StartBench = Callable[..., Awaitable[Bench]]


@pytest.fixture(scope="session")
def plugins() -> Plugins:
    loaded = Plugins.load()
    assert not loaded.failures, loaded.failures
    return loaded


@pytest.fixture(params=LINK_TYPES, ids=lambda t: t.value)
def link_type(request: pytest.FixtureRequest) -> LinkType:
    return request.param


@pytest.fixture
async def bench(plugins: Plugins, link_type: LinkType) -> AsyncIterator[StartBench]:
    """`await bench(Meter(...), ..., options=SimulatorOptions(...))` → a connected Bench."""
    started: list[Bench] = []

    async def start(*meters: Meter, options: SimulatorOptions = FROZEN) -> Bench:
        link = LinkConfig(id="gw", type=link_type, host="127.0.0.1", port=1, timeout_s=1.0)
        configs = [m.config(link.id) for m in meters]
        sims = {
            c.unit_id: plugins.make_simulator(plugins.model(c.model), c, options) for c in configs
        }
        gateway = GatewaySimulator(link, list(sims.values()), options)  # type: ignore[arg-type]
        host, port = await gateway.start()
        transport = ModbusTransport(dataclasses.replace(link, host=host, port=port))
        await transport.connect()
        drivers = {
            c.unit_id: plugins.make_driver(plugins.model(c.model), c, transport) for c in configs
        }
        one = Bench(link, gateway, transport, sims, drivers)  # type: ignore[arg-type]
        started.append(one)
        return one

    yield start
    for one in started:
        await one.close()


def site_of(link_type: LinkType, *meters: Meter, interval_s: float = 60.0) -> Site:
    """A one-link site file (as parsed TOML) holding `meters`."""
    devices = {}
    for m in meters:
        devices[m.config("gw").id] = {
            "model": m.model,
            "link": "gw",
            "unit_id": m.unit_id,
            "building": "A",
            "control_mode": m.control_mode.value,
            "options": dict(m.options),
        }
    return parse_site(
        {
            "site": {"id": "t"},
            "poll": {"interval_s": interval_s, "stats_interval_s": 60},
            "links": {
                "gw": {"type": link_type.value, "host": "127.0.0.1", "port": 1, "timeout_ms": 1000}
            },
            "buildings": {"A": {"floors": ["1"]}},
            "devices": devices,
        }
    )


@dataclass
class Service:
    """The runtime (link arbiter and all) running against a simulated site."""

    runtime: Runtime
    sims: SimulatedSite


StartService = Callable[..., Awaitable[Service]]


@pytest.fixture
async def service(plugins: Plugins, link_type: LinkType) -> AsyncIterator[StartService]:
    """`await service(Meter(...), options=SimulatorOptions(...))` → a running Service.

    Polls are a minute apart, so a test drives reads itself with `arbiter.read_now`.
    """
    started: list[Service] = []

    async def start(*meters: Meter, options: SimulatorOptions = FROZEN) -> Service:
        sims = SimulatedSite(site_of(link_type, *meters), plugins, options)
        await sims.start()
        runtime = Runtime(sims.service_site(), plugins)
        started.append(Service(runtime, sims))
        await runtime.start()
        return started[-1]

    yield start
    for one in reversed(started):
        await one.runtime.stop()
        await one.sims.stop()


@dataclass
class Proxied:
    """The service on simulated meters behind a fault-injecting proxy, and what it said."""

    runtime: Runtime
    sims: SimulatedSite
    proxy: FaultProxy
    samples: list[Sample]
    events: list[Event]

    def sim(self, meter: str) -> Any:
        return self.sims.devices[meter]

    def of(self, meter: str) -> list[Sample]:
        """The device samples of `meter` so far (not its health statistics)."""
        return [s for s in self.samples if s.source == meter and s.model.kind.value != "health"]


StartProxied = Callable[..., Awaitable[Proxied]]


@pytest.fixture
async def proxied(
    plugins: Plugins, link_type: LinkType, tmp_path: Path
) -> AsyncIterator[StartProxied]:
    """`await proxied(site_data, options=...)` → the service running from a site file whose
    link `gw` reaches its simulated meters through a `FaultProxy`. The link's type is the
    fixture's (RTU over TCP, Modbus TCP); the OPC UA server and historian are off unless
    the site turns them on."""
    started: list[Proxied] = []

    async def start(data: dict[str, Any], options: SimulatorOptions = FROZEN) -> Proxied:
        data = dict(data)
        data.setdefault("opcua", {"enabled": False})
        data.setdefault("historian", {"backend": "none"})
        data["links"] = {k: dict(v) for k, v in data["links"].items()}
        data["links"]["gw"]["type"] = link_type.value
        sims = SimulatedSite(parse_site(data), plugins, options)
        await sims.start()
        proxy = FaultProxy(sims.addresses["gw"], rtu=link_type is not LinkType.MODBUS_TCP)
        data["links"]["gw"]["host"], data["links"]["gw"]["port"] = await proxy.start()
        site_file = tmp_path / f"site{len(started)}.toml"
        site_file.write_text(tomli_w.dumps(data))
        runtime = Runtime(load_site(site_file), plugins)
        one = Proxied(runtime, sims, proxy, [], [])
        runtime.bus.subscribe(Sample, one.samples.append)
        runtime.bus.subscribe(Event, one.events.append)
        started.append(one)
        await runtime.start()
        return one

    yield start
    for one in reversed(started):
        await one.runtime.stop()
        await one.proxy.stop()
        await one.sims.stop()
