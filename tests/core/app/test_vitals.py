"""The service's vital signs: a blocked event loop and a garbage collection are measured and
published as a sample of the `openprepay.service` pseudo-model; the start-up heap is frozen
so later collections do not walk it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import weakref
from collections.abc import AsyncIterator

from openprepay.core.app.vitals import (
    GC_THRESHOLDS,
    MIDDLE_COLLECTION_S,
    SERVICE_MODEL,
    SERVICE_SOURCE,
    YOUNG_COLLECTION_S,
    Vitals,
)
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


async def test_a_pause_spent_waiting_for_a_core_is_told_from_the_collectors_work():
    """The pause is wall-clock time; the CPU the collecting thread used is measured too."""
    vitals = Vitals(EventBus(), stats_interval_s=60)
    await vitals.start()

    def descheduled(phase: str, info: dict) -> None:
        if phase == "start":
            time.sleep(0.2)  # the thread holds no core, as when the box is oversubscribed

    gc.callbacks.append(descheduled)
    try:
        gc.collect(0)  # the young generation: little work
    finally:
        gc.callbacks.remove(descheduled)
        await vitals.stop()
    summary = vitals.summary()
    assert summary["max_gc_pause_ms"] >= 200
    assert 0 < summary["max_gc_cpu_ms"] < 150


class _Node:
    """A reference cycle's member that says when it is freed."""

    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_the_start_up_heap_is_frozen_without_a_collection():
    thresholds = gc.get_threshold()
    vitals = Vitals(EventBus(), stats_interval_s=5)
    try:
        startup_garbage = _cycle()  # unreachable already: freezing keeps it
        vitals.settle_heap()
        # Other threads (a test runner's own) may free a few frozen objects meanwhile.
        assert vitals.frozen > 1000
        assert abs(gc.get_freeze_count() - vitals.frozen) < 100
        gc.collect()
        assert startup_garbage() is not None  # frozen: no collection walks it again
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@contextlib.asynccontextmanager
async def settled_vitals(**schedule: float) -> AsyncIterator[Vitals]:
    """A started `Vitals` on `schedule` (its keyword arguments) whose start-up heap is
    frozen; the collector as it was afterwards."""
    thresholds = gc.get_threshold()
    vitals = Vitals(EventBus(), stats_interval_s=60, **schedule)
    await vitals.start()
    try:
        vitals.settle_heap()
        yield vitals
    finally:
        await vitals.stop()
        gc.unfreeze()
        gc.set_threshold(*thresholds)


async def _settled(vitals: Vitals) -> None:
    for _ in range(100):
        if vitals.settling_pause_s is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the heap did not settle")


async def _first_full_collection(vitals: Vitals) -> None:
    for _ in range(100):
        if vitals.full_collections:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no scheduled full collection")


def _old_garbage() -> weakref.ref[_Node]:
    """A cycle that becomes garbage once in the oldest generation: no young or middle
    collection frees it."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gc.collect(1)  # alive: it moves to the oldest generation
    return weakref.ref(a)


def _never_count_the_frozen_heap(monkeypatch) -> None:
    """`gc.get_freeze_count` walks the whole frozen heap: ~1 s at 20,000 meters."""

    def walks_the_frozen_heap() -> int:
        raise AssertionError("gc.get_freeze_count() walks the whole frozen heap")

    monkeypatch.setattr(gc, "get_freeze_count", walks_the_frozen_heap)


async def test_thresholds_are_raised_and_full_collections_run_on_schedule():
    async with settled_vitals(full_collection_s=0.3, settling_collection_s=0.05) as vitals:
        assert gc.get_threshold() == GC_THRESHOLDS == (10_000, 3, 2**30)
        await _settled(vitals)
        garbage = _old_garbage()
        gc.collect(1)
        assert garbage() is not None
        await _first_full_collection(vitals)
        assert garbage() is None
        assert vitals.summary()["gc_full_collections"] == vitals.full_collections
        assert vitals.worst_gc_generation in (0, 1, 2)


async def test_the_heap_settles_without_a_full_collection(monkeypatch):
    """`settling_collection_s` after start-up, what was built since is frozen after a
    middle collection: the young garbage is collected, the live state is never walked
    again, and no full collection (at 20,000 meters: 0.5–0.7 s) runs until
    `full_collection_s` later. A garbage cycle already in the oldest generation is frozen
    with the rest: the price, once, of not walking it all."""
    generations: list[int] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "stop":
            generations.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        async with settled_vitals(full_collection_s=3600, settling_collection_s=0.2) as vitals:
            frozen = vitals.frozen
            kept = _Node()  # made after start-up, alive for good
            old_garbage = _old_garbage()
            young_garbage = _cycle()
            _never_count_the_frozen_heap(monkeypatch)
            await _settled(vitals)
            assert young_garbage() is None  # the middle collection ran first
            assert old_garbage() is not None  # frozen with the rest
            assert not any(o is kept for o in gc.get_objects())  # frozen: never walked again
            assert vitals.frozen > frozen and vitals.refreezes == 0
            assert vitals.summary()["settling_collection_ms"] is not None
            assert vitals.values()["gc_settling_pause_ms"] >= 0
            await asyncio.sleep(0.3)
            assert vitals.full_collections == 0 and 2 not in generations  # an hour away
    finally:
        gc.callbacks.remove(seen)


async def test_a_long_full_collection_freezes_what_survived_it(monkeypatch):
    """A scheduled full collection longer than `freeze_over_s` freezes its survivors (a
    client that subscribed after the heap settled), so later ones do not walk them."""
    async with settled_vitals(
        full_collection_s=0.2, settling_collection_s=0.05, freeze_over_s=0.0
    ) as vitals:
        await _settled(vitals)
        frozen = vitals.frozen
        kept = _Node()
        garbage = _old_garbage()
        _never_count_the_frozen_heap(monkeypatch)
        await _first_full_collection(vitals)
        assert garbage() is None  # the collection ran first, then the freeze
        assert vitals.refreezes >= 1 and vitals.frozen > frozen
        assert not any(o is kept for o in gc.get_objects())


async def test_a_full_collection_under_the_mark_freezes_nothing():
    """A full collection that took less than `freeze_over_s` leaves its survivors to the
    next one: freezing is only for a heap grown past what one pause may walk."""
    async with settled_vitals(
        full_collection_s=0.2, settling_collection_s=0.05, freeze_over_s=60.0
    ) as vitals:
        await _settled(vitals)
        kept = _Node()
        await _first_full_collection(vitals)
        assert vitals.refreezes == 0
        assert any(o is kept for o in gc.get_objects())


async def test_young_and_middle_collections_also_run_on_a_clock():
    """When every poll frees the previous poll's values, allocations minus deallocations
    hardly grow and Python starts few collections; the probe runs them on a clock."""
    thresholds = gc.get_threshold()
    generations: list[int] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "stop":
            generations.append(info["generation"])

    vitals = Vitals(EventBus(), stats_interval_s=60)
    await vitals.start()
    try:
        vitals.settle_heap()
        gc.set_threshold(0)  # Python starts none: what runs is the clock's
        gc.callbacks.append(seen)
        await asyncio.sleep(MIDDLE_COLLECTION_S + 4 * YOUNG_COLLECTION_S)
    finally:
        if seen in gc.callbacks:
            gc.callbacks.remove(seen)
        await vitals.stop()
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert generations.count(1) >= 1
    assert generations.count(0) >= 4
    assert 2 not in generations
