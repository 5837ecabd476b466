"""The service's vital signs: a blocked event loop and a garbage collection are measured and
published as a sample of the `openprepay.service` pseudo-model; the start-up heap is frozen
so later collections do not walk it."""

from __future__ import annotations

import asyncio
import gc
import time

from openprepay.core.app.vitals import GC_THRESHOLDS, SERVICE_MODEL, SERVICE_SOURCE, Vitals
from openprepay.core.events import EventBus
from openprepay.core.model import Sample


async def test_a_stalled_loop_and_a_collection_are_measured_and_published():
    bus = EventBus()
    published: list[Sample] = []
    bus.subscribe(Sample, published.append)
    vitals = Vitals(bus, stats_interval_s=0.5)
    await vitals.start()
    try:
        await asyncio.sleep(0.2)
        time.sleep(0.3)  # noqa: ASYNC251 (the blocking call the probe must see)
        gc.collect()
        for _ in range(40):
            if published:
                break
            await asyncio.sleep(0.05)
    finally:
        await vitals.stop()
    [sample] = published[:1]
    assert (sample.source, sample.model) == (SERVICE_SOURCE, SERVICE_MODEL)
    assert set(sample.values) == {p.name for p in SERVICE_MODEL.points}
    assert sample.values["loop_stall_max_ms"] >= 250
    assert sample.values["gc_collections"] >= 1 and sample.values["rss_mb"] > 0
    summary = vitals.summary()
    assert summary["max_loop_stall_ms"] >= 250 and summary["max_gc_pause_ms"] > 0
    assert summary["max_gc_pause_generation"] in (0, 1, 2)
    assert gc.callbacks.count(vitals._on_gc) == 0  # stop() takes its callback away


def test_the_start_up_heap_is_frozen():
    vitals = Vitals(EventBus(), stats_interval_s=5)
    try:
        vitals.settle_heap()
        # Other threads (a test runner's own) may free a few frozen objects meanwhile.
        assert vitals.frozen > 1000
        assert abs(gc.get_freeze_count() - vitals.frozen) < 100
    finally:
        gc.unfreeze()


async def test_thresholds_are_raised_and_survivors_of_a_full_collection_frozen():
    thresholds = gc.get_threshold()
    vitals = Vitals(EventBus(), stats_interval_s=60)
    await vitals.start()
    try:
        vitals.settle_heap()
        assert gc.get_threshold() == GC_THRESHOLDS == (10_000, 3, 10)
        frozen = vitals.frozen
        survivors = [[i] for i in range(5000)]  # allocated after start-up, still alive
        gc.collect()
        for _ in range(100):
            if vitals.frozen > frozen:
                break
            await asyncio.sleep(0.02)
        assert vitals.frozen >= frozen + len(survivors)
        assert vitals.summary()["frozen_objects"] == vitals.frozen
    finally:
        await vitals.stop()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
