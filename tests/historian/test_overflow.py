"""The historian never drops while its overflow has room: samples beyond `max_pending` wait
on disk and are committed once the memory queue has room; only a full overflow drops
(counted, raised); what is on disk at a stop is committed, or read back at the next start."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from openprepay.core.events import EventBus, HistorianDataDropped
from openprepay.historian.overflow import Overflow
from openprepay.historian.service import Historian

from .conftest import MODEL, collect, running, sample, site_with

TOTAL = 6000


def embedded(**extra: object) -> dict:
    return {
        "backend": "embedded",
        "commit_interval_ms": 20,
        "batch_size": 500,
        "max_pending": 1000,
        "stats_interval_s": 3600,
        **extra,
    }


async def settle(historian: Historian) -> None:
    """Commit until nothing waits in memory, on its way to the disk or on the disk."""
    deadline = time.monotonic() + 60
    overflow = historian.overflow
    while historian._spilling or historian._pending or (overflow and overflow.waiting):
        assert time.monotonic() < deadline, "the overflow was not taken back"
        await historian.commit()
        await asyncio.sleep(0.01)
    await historian.commit()  # waits for a commit the committer task has under way


async def test_a_burst_beyond_the_memory_bound_waits_on_disk_and_is_all_committed(
    tmp_path: Path,
) -> None:
    bus = EventBus()
    drops = collect(bus, HistorianDataDropped)
    async with running(site_with(embedded(), tmp_path), bus) as historian:
        for i in range(TOTAL):  # one burst: the committer gets no turn in between
            bus.publish(sample(i % 40, i))
        assert historian._spilling > 0  # the oldest went to the disk, none dropped
        await settle(historian)
        stats = await historian.stats()
    assert stats["spilled_samples"] >= TOTAL - 1000 - 1000
    assert stats["dropped_lines"] == 0 and not drops
    assert stats["accepted_lines"] == TOTAL


async def test_a_full_overflow_drops_and_says_so(tmp_path: Path) -> None:
    bus = EventBus()
    drops = collect(bus, HistorianDataDropped)
    site = site_with(embedded(overflow_max_mb=0.001), tmp_path)  # 1 KB: nothing fits
    async with running(site, bus) as historian:
        for i in range(TOTAL):
            bus.publish(sample(i % 40, i))
        await settle(historian)
        stats = await historian.stats()
    assert stats["dropped_lines"] > 0
    # Every sample is either committed or dropped (a HistorianDataDropped event published
    # before the figures is itself committed).
    assert TOTAL <= stats["accepted_lines"] + stats["dropped_lines"] <= TOTAL + len(drops)
    assert sum(d.lines for d in drops) == stats["dropped_lines"]


def test_what_a_dead_process_left_on_disk_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "overflow.bin"
    first = Overflow(path, 10**7)
    first.open()
    assert first.spill([sample(1, i) for i in range(10)]) == []
    assert first.spill([sample(2, i) for i in range(5)]) == []
    first.close()  # the process died before taking them back

    second = Overflow(path, 10**7, {MODEL.name: MODEL})
    second.open()
    back = second.take(12)
    assert [s.source for s in back] == ["M001"] * 10 + ["M002"] * 5  # whole records
    assert back[0] == sample(1, 0)
    assert second.waiting == 0 and path.stat().st_size == 0
    second.close()
