"""Helpers for the live tests of a link worker: a site's runtime against simulated meters on
loopback, whatever the protocol (the arbiter's own tests, each protocol plugin's)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.events import CommunicationLost, LinkStateChanged
from openprepay.core.model import MeterKind, Quality, Sample


class Recorder:
    """Everything the runtime's bus publishes, in order."""

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


def quick_reconnect_runtime(sims: SimulatedSite, plugins: Plugins, link_id: str) -> Runtime:
    """The service's runtime for the simulated site, reopening `link_id` within 0.05-0.2 s
    (a test that restarts the gateway need not wait the default back-off)."""
    site = sims.service_site()
    link = replace(site.links[link_id], reconnect_min_s=0.05, reconnect_max_s=0.2)
    return Runtime(replace(site, links={link_id: link}), plugins)


def assert_silent_meter_cost_only_its_backoff_slots(
    rec: Recorder, worker: Any, silent_id: str
) -> None:
    """After three failed attempts on a silent meter (back-off 0.5 s, then 1 s): it was
    tried only in its back-off slots, its neighbours never failed and were all polled
    between two attempts, the connection was never dropped, and its failures show as Bad
    samples without values and one offline event."""
    silent = worker.health[silent_id]
    healthy = [h for m, h in worker.health.items() if m != silent_id]
    bad = rec.meter_samples(silent_id)
    assert silent.polls_ok == 0 and len(bad) == 3
    gaps = [(b.read_at - a.read_at).total_seconds() for a, b in itertools.pairwise(bad)]
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0
    assert all(h.polls_failed == 0 and h.online for h in healthy)
    assert worker.stats.reconnects == 0
    assert not [e for e in rec.of(LinkStateChanged) if not e.connected]
    order = [s.source for s in rec.of(Sample) if s.model.kind is MeterKind.ELECTRIC]
    attempts = [i for i, m in enumerate(order) if m == silent_id]
    for a, b in itertools.pairwise(attempts):
        assert {h.meter_id for h in healthy} <= set(order[a:b])
    assert all(s.quality is Quality.BAD_COMM_FAILURE and not s.values for s in bad)
    assert [e.meter_id for e in rec.of(CommunicationLost)] == [silent_id]
