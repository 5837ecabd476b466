"""Against a real /api/v2/write endpoint (Debian `victoria-metrics`), written through
influxdb-client. VictoriaMetrics keeps every sample it is sent, duplicates included, so its
export shows whether a point arrived exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from openprepay.core.config.site import Site
from openprepay.core.events import EventBus
from openprepay.core.model import Sample

from .conftest import BASE, fast, ms, running, sample, site_with, vm_export
from .spool_child import kth

CHILD = Path(__file__).with_name("spool_child.py")


def v2(url: str, **extra) -> dict:
    return fast(url=url, bucket="openprepay", token="test", org="test", **extra)


def arrived(url: str, site: Site, field: str) -> dict[tuple[str, int], list[float]]:
    """(meter, ms) -> every value received for `field` (more than one = a duplicate)."""
    out: dict[tuple[str, int], list[float]] = {}
    for series in vm_export(url, f'{{__name__="electric_{field}",site="{site.id}"}}'):
        meter = series["metric"]["meter"]
        for t, value in zip(series["timestamps"], series["values"], strict=True):
            out.setdefault((meter, t), []).append(value)
    return out


def assert_exactly_once(url: str, site: Site, published: list[Sample]) -> None:
    for field in ("energy_total", "buy_count"):
        got = arrived(url, site, field)
        expected = {(s.source, ms(s.read_at)): s.values[field] for s in published}
        duplicated = {k: v for k, v in got.items() if len(v) > 1}
        assert not duplicated, f"{len(duplicated)} points arrived more than once"
        missing, extra = expected.keys() - got.keys(), got.keys() - expected.keys()
        assert not missing and not extra, f"{len(missing)} missing, {len(extra)} extra"
        assert all(got[k] == [v] for k, v in expected.items())


async def test_v2_write_with_gzip_arrives_once(victoria_metrics, tmp_path: Path):
    site = site_with(v2(victoria_metrics.url, gzip=True), tmp_path)
    published = [sample(m, i) for m in range(3) for i in range(400)]
    async with running(site) as historian:
        for s in published:
            historian.bus.publish(s)
        assert await historian.flush(30)
        stats = await historian.stats()
    assert stats["sent_lines"] == len(published) and stats["retries"] == 0
    assert_exactly_once(victoria_metrics.url, site, published)


@pytest.mark.slow
async def test_outage_under_load_every_point_arrives_exactly_once(victoria_metrics, tmp_path: Path):
    site = site_with(v2(victoria_metrics.url), tmp_path)
    published: list[Sample] = []
    bus = EventBus()

    async def load(stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            for m in range(8):
                s = sample(m, i, step_ms=5)
                published.append(s)
                bus.publish(s)
            i += 1
            await asyncio.sleep(0.002)

    async with running(site, bus) as historian:
        stop = asyncio.Event()
        loader = asyncio.create_task(load(stop))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(victoria_metrics.stop)
        try:
            await asyncio.sleep(1.5)
            assert (await historian.stats())["queue_depth"] > 0
        finally:
            await asyncio.to_thread(victoria_metrics.start)
        await asyncio.sleep(0.8)  # the backlog drains while new points keep coming
        stop.set()
        await loader
        assert await historian.flush(60)
        stats = await historian.stats()
    assert stats["retries"] > 0 and stats["dropped_lines"] == 0
    assert_exactly_once(victoria_metrics.url, site, published)


@pytest.mark.slow
async def test_kill_9_during_an_outage_loses_nothing_accepted(victoria_metrics, tmp_path: Path):
    """The service is killed while it appends and cannot reach its server; restarted with
    the server back, every sample it had accepted arrives, once."""
    site_file = tmp_path / "site.toml"
    site_id = f"k{uuid.uuid4().hex[:8]}"
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    site_with(v2(dead), tmp_path, site_id)
    child = subprocess.Popen(  # noqa: ASYNC220 - read line by line until the kill
        [sys.executable, str(CHILD), str(site_file), "100000", BASE.isoformat()],
        stdout=subprocess.PIPE,
        text=True,
    )
    accepted = 0
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("ACCEPTED"):
                accepted = int(line.split()[1])
                if accepted >= 3000:
                    break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert accepted >= 3000

    site = site_with(v2(victoria_metrics.url), tmp_path, site_id)
    async with running(site) as historian:
        assert await historian.flush(60)
        stats = await historian.stats()
    # Samples up to the last report are durable; a few more may have been committed just
    # before the kill. All of them arrive, once, and nothing else.
    sent = stats["sent_lines"]
    assert sent >= accepted
    assert_exactly_once(victoria_metrics.url, site, [kth(k, BASE) for k in range(sent)])
