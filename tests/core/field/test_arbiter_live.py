"""The link arbiter against simulated meters on real loopback sockets."""

from __future__ import annotations

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
from openprepay.core.field.diagnostics import HEALTH_MODEL, DeviceState
from openprepay.core.model import Quality, Sample
from tests.live_link import (
    Recorder,
    assert_silent_meter_cost_only_its_backoff_slots,
    quick_reconnect_runtime,
)


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

        assert_silent_meter_cost_only_its_backoff_slots(rec, worker, "E5")
        silent = worker.health["E5"]
        assert silent.consecutive_failures == 3
        assert silent.state is DeviceState.BACKOFF


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
        runtime = quick_reconnect_runtime(sims, plugins, "gw1")
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


async def test_a_meter_health_is_published_when_it_changed(plugins: Plugins) -> None:
    """Health samples follow changes: a meter whose health did not change since its last
    health sample gets none at the next statistics tick; one whose counters moved does."""
    site = gateway_site(3, interval_s=3600.0)  # first polls spread over an hour: none here
    async with SimulatedSite(site, plugins, SimulatorOptions(ephemeral_ports=True)) as sims:
        runtime = Runtime(sims.service_site(), plugins)
        rec = Recorder(runtime)

        def health_samples(meter: str) -> list[Sample]:
            return [s for s in rec.of(Sample) if s.source == meter and s.model is HEALTH_MODEL]

        async with runtime:
            worker = runtime.arbiter.workers["gw1"]
            worker.publish_stats()
            before = {m: len(health_samples(m)) for m in ("E1", "E2", "E3")}
            assert all(n >= 1 for n in before.values())
            runtime.arbiter.health("E2").timeouts += 1
            worker.publish_stats()
            worker.publish_stats()
            after = {m: len(health_samples(m)) for m in ("E1", "E2", "E3")}
            assert after == {**before, "E2": before["E2"] + 1}
            assert health_samples("E2")[-1].values["timeouts"] == 1
