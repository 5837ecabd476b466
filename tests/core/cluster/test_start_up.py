"""An instance takes no link lease while it starts: start-up stalls the loop for seconds at
site scale, and a lease taken then lapsed unused or was given up at its deadline (a new
epoch each time, links stopped and started again). The runtime lets it take once every
service has started (`LinkLeases.begin_taking`)."""

from __future__ import annotations

import asyncio
from typing import Any

from openprepay.core.cluster.manager import JOBS_LEADER, LinkLeases
from openprepay.core.cluster.settings import ClusterSettings
from openprepay.core.db import Database
from tests.conftest import until

from .instances import owner_of


class NoLinks:
    """The arbiter's side of a lease change, for a site without link workers."""

    def __init__(self) -> None:
        self.workers: dict[str, Any] = {}


async def test_leases_are_taken_only_once_the_instance_runs(pg: Database) -> None:
    settings = ClusterSettings("box-a", ("gw",), lease_ttl_s=4.0, heartbeat_s=0.2, margin_s=1.5)
    leases = LinkLeases(settings, pg, NoLinks(), lambda event: None, ["gw"])
    await leases.start()
    try:
        await asyncio.sleep(settings.heartbeat_s * 5)  # beats while the rest starts
        assert not leases.owns("gw")
        assert owner_of(pg, "gw") == (None, 0)
        assert owner_of(pg, JOBS_LEADER) == (None, 0)
        leases.begin_taking()
        await until(lambda: leases.owns("gw"), 10)
        assert owner_of(pg, "gw") == ("box-a", 1)  # the first epoch: no lease lapsed
        await until(lambda: leases.leader_fence() is not None, 10)
    finally:
        await leases.stop()


async def test_the_heartbeat_does_not_queue_behind_a_busy_worker_pool(pg: Database) -> None:
    """Metering flushes, snapshot reads and billing share the loop's default thread pool;
    the heartbeat has a thread of its own, so it renews on time while the pool is full."""
    import threading

    settings = ClusterSettings("box-a", ("gw",), lease_ttl_s=3.0, heartbeat_s=0.2, margin_s=1.0)
    leases = LinkLeases(settings, pg, NoLinks(), lambda event: None, ["gw"])
    await leases.start()
    release = threading.Event()
    loop = asyncio.get_running_loop()
    busy = [loop.run_in_executor(None, release.wait, 10) for _ in range(64)]
    try:
        leases.begin_taking()
        await until(lambda: leases.owns("gw"), 10)
        await asyncio.sleep(settings.lease_ttl_s * 1.5)  # the pool stays full all along
        assert leases.owns("gw")
        assert owner_of(pg, "gw") == ("box-a", 1)  # renewed, never lapsed
    finally:
        release.set()
        await asyncio.gather(*busy)
        await leases.stop()
