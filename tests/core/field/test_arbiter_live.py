"""The link arbiter against simulated meters on real loopback sockets."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import replace

import pytest

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import Site, parse_site
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.events import (
    CommunicationLost,
    CommunicationRestored,
    DeviceQuarantined,
    LinkStateChanged,
)
from openprepay.core.field.diagnostics import DeviceState
from openprepay.core.model import MeterKind, Quality, Sample


def gateway_site(n: int, *, timeout_ms: int = 100, interval_s: float = 0.0, **poll: object) -> Site:
    return parse_site(
        {
            "site": {"id": "t"},
            "poll": {"interval_s": interval_s, "stats_interval_s": 0.5, **poll},
            "links": {
                "gw1": {
                    "type": "rtu_over_tcp",
                    "host": "127.0.0.1",
                    "port": 1,
                    "timeout_ms": timeout_ms,
                }
            },
            "buildings": {"A": {"floors": ["1"]}},
            "rooms": {"A-1": {"building": "A", "floor": "1"}},
            "devices": {
                f"E{i}": {"model": "acrel.DDSY1352", "link": "gw1", "unit_id": i, "room": "A-1"}
                for i in range(1, n + 1)
            },
        }
    )


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins.load()


class Recorder:
    def __init__(self, runtime: Runtime) -> None:
        self.items: list[object] = []
        runtime.bus.subscribe(object, self.items.append)

    def of(self, kind: type) -> list:
        return [i for i in self.items if isinstance(i, kind)]

    def meter_samples(self, meter: str) -> list[Sample]:
        return [
            s for s in self.of(Sample) if s.source == meter and s.model.kind is MeterKind.ELECTRIC
        ]

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async def poll() -> None:
            while not predicate():
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), timeout)


async def test_silent_meter_costs_its_neighbours_only_its_backoff_slots(plugins: Plugins) -> None:
    # 400 ms answer window: a loaded CI machine can stall a healthy loopback answer past
    # 100 ms, which this test would read as the neighbour failing.
    site = gateway_site(
        10, timeout_ms=400, backoff_initial_s=0.5, backoff_max_s=60, quarantine_after=50
    )
    async with SimulatedSite(site, plugins, SimulatorOptions(ephemeral_ports=True)) as sims:
        sims.devices["E5"].silent = True
        runtime = Runtime(sims.service_site(), plugins)
        rec = Recorder(runtime)
        async with runtime:
            await rec.until(lambda: runtime.arbiter.health("E5").consecutive_failures >= 3)
            worker = runtime.arbiter.workers["gw1"]

        silent = worker.health["E5"]
        healthy = [h for m, h in worker.health.items() if m != "E5"]
        # The silent meter was tried only in its back-off slots: 0.5 s, then 1 s later.
        bad = rec.meter_samples("E5")
        assert silent.polls_ok == 0 and silent.consecutive_failures == len(bad) == 3
        gaps = [(b.read_at - a.read_at).total_seconds() for a, b in itertools.pairwise(bad)]
        assert gaps[0] >= 0.5 and gaps[1] >= 1.0
        assert silent.state is DeviceState.BACKOFF
        # Its neighbours never failed, and the gateway connection was never dropped.
        assert all(h.polls_failed == 0 and h.online for h in healthy)
        assert worker.stats.reconnects == 0
        assert not [e for e in rec.of(LinkStateChanged) if not e.connected]
        # Between two attempts on the silent meter every healthy meter was polled.
        order = [s.source for s in rec.of(Sample) if s.model.kind is MeterKind.ELECTRIC]
        attempts = [i for i, m in enumerate(order) if m == "E5"]
        for a, b in itertools.pairwise(attempts):
            assert {h.meter_id for h in healthy} <= set(order[a:b])
        # Its failures are visible: Bad samples without values, one offline event.
        assert all(s.quality is Quality.BAD_COMM_FAILURE and not s.values for s in bad)
        assert [e.meter_id for e in rec.of(CommunicationLost)] == ["E5"]


async def test_quarantine_after_repeated_failures(plugins: Plugins) -> None:
    site = gateway_site(
        3, backoff_initial_s=0.05, backoff_max_s=0.05, quarantine_after=3, quarantine_probe_s=600
    )
    async with SimulatedSite(site, plugins, SimulatorOptions(ephemeral_ports=True)) as sims:
        sims.devices["E2"].silent = True
        runtime = Runtime(sims.service_site(), plugins)
        rec = Recorder(runtime)
        async with runtime:
            await rec.until(lambda: rec.of(DeviceQuarantined))
            health = runtime.arbiter.health("E2")
            assert health.state is DeviceState.QUARANTINED
            assert health.backoff_s == 600
            failures = health.consecutive_failures
            ok_before = runtime.arbiter.health("E1").polls_ok
            await rec.until(lambda: runtime.arbiter.health("E1").polls_ok > ok_before + 50)
            assert runtime.arbiter.health("E2").consecutive_failures == failures  # not probed


async def test_reconnects_after_the_gateway_restarts(plugins: Plugins) -> None:
    site = gateway_site(3, interval_s=0.05)
    async with SimulatedSite(site, plugins, SimulatorOptions(ephemeral_ports=True)) as sims:
        service_site = sims.service_site()
        link = replace(service_site.links["gw1"], reconnect_min_s=0.05, reconnect_max_s=0.2)
        runtime = Runtime(replace(service_site, links={"gw1": link}), plugins)
        rec = Recorder(runtime)
        gateway = sims.links["gw1"]
        async with runtime:
            await rec.until(
                lambda: all(runtime.arbiter.health(m).online for m in ("E1", "E2", "E3"))
            )
            await gateway.stop()
            await rec.until(lambda: len(rec.of(CommunicationLost)) == 3)
            assert any(not e.connected for e in rec.of(LinkStateChanged))
            down_samples = [s for s in rec.meter_samples("E1") if not s.quality.is_good]
            assert down_samples and not down_samples[-1].values
            await gateway.start()  # same port
            await rec.until(lambda: len(rec.of(CommunicationRestored)) == 3)
            good_after = rec.meter_samples("E1")[-1]
            assert good_after.quality is Quality.GOOD and good_after.values["energy_total"] > 0
            assert runtime.arbiter.workers["gw1"].stats.reconnects >= 1


async def test_garbled_frames_are_rejected_and_counted(plugins: Plugins) -> None:
    site = gateway_site(
        2, interval_s=0.02, backoff_initial_s=0.05, backoff_max_s=0.05, quarantine_after=100
    )
    async with SimulatedSite(site, plugins, SimulatorOptions(ephemeral_ports=True)) as sims:
        sims.devices["E1"].garbage = True
        runtime = Runtime(sims.service_site(), plugins)
        rec = Recorder(runtime)
        async with runtime:
            await rec.until(lambda: runtime.arbiter.health("E1").garbled_frames >= 3)
            bad = rec.meter_samples("E1")
            assert all(s.quality is Quality.BAD_DEVICE_FAILURE for s in bad)
            assert "CRC" in (bad[-1].error or "")
            assert runtime.arbiter.health("E2").polls_failed == 0
            sims.devices["E1"].garbage = False
            await rec.until(lambda: runtime.arbiter.health("E1").online)
            worker = runtime.arbiter.workers["gw1"]
            worker.publish_stats()
            assert worker.stats.published["garbled_frames"] >= 3
            assert worker.stats.reconnects == 0
