"""The service around the spool: a full spool drops by its policy and says so (event and
points), a stop keeps the backlog on disk, and `openprepay historian status|flush` work on it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from openprepay.core.events import EventBus, HistorianDataDropped
from openprepay.core.model import Sample
from openprepay.historian.config import DropPolicy
from openprepay.historian.schema import HISTORIAN_MODEL, HISTORIAN_SOURCE
from openprepay.historian.spool import Spool

from .conftest import (
    collect,
    fast,
    ms,
    publish_paced,
    run_cli,
    running,
    sample,
    site_with,
    vm_export,
)

DEAD = "http://127.0.0.1:9"  # nothing listens on the discard port


def v2(url: str, **extra) -> dict:
    extra.setdefault("stop_timeout_s", 0.1 if url == DEAD else 5)
    return fast(url=url, bucket="b", token="t", **extra)


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
async def test_a_full_spool_drops_by_its_policy_and_says_so(tmp_path: Path, policy: str):
    site = site_with(
        v2(DEAD, spool_max_mb=0.05, drop_policy=policy, batch_size=50, gzip=False), tmp_path
    )
    bus = EventBus()
    drops = collect(bus, HistorianDataDropped)
    stats_points = collect(bus, Sample)
    published = [sample(m, i) for i in range(300) for m in range(4)]
    async with running(site, bus) as historian:
        await publish_paced(bus, published, per_tick=100)
        await historian.commit()
        stats = await historian.publish_stats()
    # Read what stayed on disk once the service let go of it (while it runs, the forwarder
    # may hold a batch in flight that a peek from here would not see).
    spool = Spool(tmp_path / "historian-spool", 10**7, DropPolicy(policy)).open(lock=False)
    kept = [line for b in spool.peek(10**6) for line in b.plain().splitlines()]
    spool.close()

    assert drops, "no HistorianDataDropped event"
    assert all(d.policy == policy and d.lines > 0 for d in drops)
    # Every drop was raised (at most one event per few seconds, with the totals since).
    counters = json.loads((tmp_path / "historian-spool" / "counters.json").read_text())
    assert sum(d.lines for d in drops) == counters["dropped_lines"] >= stats["dropped_lines"]
    # (the last drop event's own line may be dropped by the final commit, after `stats`)
    assert sum(d.points for d in drops) == counters["dropped_points"] > 0
    assert stats["queue_bytes"] <= 0.05 * 1024 * 1024
    own = [s for s in stats_points if s.source == HISTORIAN_SOURCE and s.model is HISTORIAN_MODEL]
    assert own and own[-1].values["dropped_lines"] == stats["dropped_lines"]
    point = own[-1].values  # depth, bytes and age of the backlog are points too
    assert point["queue_depth"] > 0 and point["queue_bytes"] > 0 and point["oldest_age_s"] > 0
    assert point["connected"] is False and point["retries"] > 0

    times = sorted(
        int(line.rsplit(b" ", 1)[1]) // 1_000_000 for line in kept if line.startswith(b"electric")
    )
    assert len(published) - len(times) <= counters["dropped_lines"]
    all_times = sorted(ms(s.read_at) for s in published)
    if policy == "drop_oldest":
        assert times == all_times[-len(times) :]  # the newest were kept
        assert drops[0].first is not None and ms(drops[0].first) == all_times[0]
    else:
        assert times == all_times[: len(times)]  # the backlog was kept, new data refused


def test_stop_keeps_the_backlog_and_flush_sends_it(victoria_metrics, tmp_path: Path):
    site = site_with(v2(DEAD), tmp_path)
    published = [sample(m, i) for i in range(100) for m in range(3)]

    async def run_without_server() -> None:
        async with running(site) as historian:
            for s in published:
                historian.bus.publish(s)
            # While it runs, the service owns the spool.
            refused = await asyncio.to_thread(run_cli, "flush", str(site.path))
            assert refused.exit_code == 1
            assert "in use by a running OpenPrepay service" in refused.output

    asyncio.run(run_without_server())
    report = json.loads(run_cli("status", str(site.path), "--json").output)
    assert report["spool"]["lines"] == 300 and not report["service_running"]
    assert report["server"].startswith("unreachable")

    site = site_with(v2(victoria_metrics.url), tmp_path, site.id)
    result = run_cli("flush", str(site.path), "--timeout", "30")
    assert result.exit_code == 0, result.output
    assert "300 lines sent, the spool is empty" in result.output
    got = vm_export(victoria_metrics.url, f'{{__name__="electric_voltage",site="{site.id}"}}')
    assert sum(len(s["values"]) for s in got) == 300
    text = run_cli("status", str(site.path)).output
    assert "queue     0 lines" in text and "accepted 300, sent 300, dropped 0" in text


@pytest.mark.parametrize("timeout", ["nan", "inf", "-5", "1e9", "0"])
def test_flush_refuses_a_timeout_that_is_not_a_plain_number_of_seconds(timeout, tmp_path: Path):
    site = site_with(v2(DEAD), tmp_path)
    result = run_cli("flush", str(site.path), "--timeout", timeout)
    assert result.exit_code == 2, result.output
    assert "--timeout" in result.output
