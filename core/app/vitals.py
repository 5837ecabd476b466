"""The service's own vital signs: event-loop lag, collector pauses, CPU and memory.

At site scale the failures are not in one component but in the process: a loop that stalls
for seconds makes healthy meters look offline, and the cyclic garbage collector walking
millions of long-lived objects (the site, the models, the OPC UA address space, the
per-meter state) stops everything while it does. `Vitals` watches both, from start to stop:

- a probe task sleeps 50 ms at a time and records how late it wakes (the loop's lag);
- `gc.callbacks` time every collection (generation, duration and the CPU it used);
- every `stats_interval_s` the window's figures are published as a sample of the
  `openprepay.service` pseudo-model (source "service"), so OPC UA shows them under
  Diagnostics and the historian stores them like link statistics; a stall over a second or
  a collection over half a second is also logged as a warning.

`settle_heap()`, called by the runtime once every service has started, moves everything
start-up built into the collector's permanent generation (`gc.freeze()`): it lives as long
as the process, and no later collection walks it again. It does not collect first: at
20,000 meters that collection walked 32 million objects for 17–22 s and found ~460
unreachable. It then raises the collector's thresholds (`GC_THRESHOLDS`).

Young and middle collections also run on a clock (`YOUNG_COLLECTION_S`,
`MIDDLE_COLLECTION_S`), from the probe: Python counts allocations minus deallocations, which
hardly grow when each poll frees the last poll's values, so its own collections came late
and walked tens or hundreds of thousands of objects at once.

Full collections run on a schedule, not when Python would start one: every
`[poll] full_collection_s` (an hour), from the probe. Left to Python, the first came ~8
minutes after start-up at 20,000 meters and then one every minute, each walking the ~1
million objects that live one poll interval (the values the address space and the per-meter
state hold) for 200–570 ms, to find 2,000–3,000 unreachable. The worst pause is the
`gc_pause_max_ms` point, its generation `gc_pause_max_generation`.

`SETTLING_COLLECTION_S` after start-up's freeze the heap settles: by then every link has
been taken and every meter read, and what was built since (the per-meter state of the links
taken, a client's monitored items) lives as long as the process too. A middle collection
(the young generations: what a full one would find there) and a freeze move it out of every
later full collection's way. Not a full collection: at 20,025 meters on two instances that
walked 340,000–356,000 objects per instance for 510–740 ms (on a slow day) to find ~2,300
unreachable, which the freeze now keeps, once, with the few garbage cycles already in the
oldest generation. After it, a full collection walks only what was made since and lives on
(docs/capacity.md, "The collector": what a poll puts into a meter's long-lived state is
kept untracked).

A scheduled full collection that took longer than `FREEZE_OVER_S` also freezes what
survived it: long-lived objects made since the last freeze (a client that subscribed
later), which every later full collection would walk again. Freezing is not free of cost:
garbage cycles among the objects frozen are never collected, so an object alive at the
freeze that later ends in a cycle stays; at 4,000 meters each freeze kept ~30 such objects
(measured by unfreezing and collecting). Hence only a collection over the mark freezes, not
every one.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config.site import PollPolicy
from ..db.retry import BUSY
from ..db.write_times import WRITES
from ..events import EventBus, utcnow
from ..field.diagnostics import diagnostic
from ..model import DeviceModel, MeterKind, Sample, ValueType

log = logging.getLogger("openprepay.vitals")

SERVICE_SOURCE = "service"

SERVICE_MODEL = DeviceModel(
    name="openprepay.service",
    vendor="OpenPrepay",
    product="Service vital signs",
    kind=MeterKind.HEALTH,
    description="Event-loop lag, garbage-collector pauses, CPU and memory of the service",
    points=(
        diagnostic("loop_lag_p99_ms", "ms", "Event-loop lag, 99th percentile, last window",
                   ValueType.FLOAT),
        diagnostic("loop_stall_max_ms", "ms", "Longest event-loop stall, last window",
                   ValueType.FLOAT),
        diagnostic("gc_pause_max_ms", "ms", "Longest garbage-collector pause, last window",
                   ValueType.FLOAT),
        diagnostic("gc_pause_cpu_max_ms", "ms",
                   "Most CPU one garbage collection used, last window (a pause longer than this "
                   "waited for a core)", ValueType.FLOAT),
        diagnostic("gc_pause_max_generation", "",
                   "Generation of that longest pause (0 young, 1 middle, 2 full; -1 none)"),
        diagnostic("gc_collections", "", "Garbage collections since start"),
        diagnostic("gc_frozen_objects", "",
                   "Objects frozen (never walked again), as counted when they were"),
        diagnostic("gc_full_collections", "", "Scheduled full collections since start"),
        diagnostic("gc_settling_pause_ms", "ms",
                   "How long settling the heap after start-up paused the service (-1: not yet)",
                   ValueType.FLOAT),
        diagnostic("cpu_percent", "%", "CPU used by the process, last window (100 = one core)",
                   ValueType.FLOAT),
        diagnostic("rss_mb", "MB", "Peak resident memory of the process", ValueType.FLOAT),
        diagnostic("db_busy_retried", "", "Transactions retried on a busy database, since start"),
        diagnostic("db_write_max_ms", "ms", "Longest database write transaction, last window",
                   ValueType.FLOAT),
    ),
    plugin="core",
)  # fmt: skip

#: The collector's thresholds after start-up (Python's default is (700, 10, 10)): with the
#: start-up heap frozen, a young collection every 10,000 allocations instead of every 700
#: runs 14 times less often, and a middle one every 3 young ones walks what survived those
#: 3 (with 10, 75,000–226,000 objects at 20,000 meters: pauses up to 400 ms). (50,000, 5)
#: made young and middle pauses of 100–470 ms at 20,000 meters (docs/capacity.md).
GC_THRESHOLDS = (10_000, 3, 2**30)  # the third: no full collection but the scheduled one

#: Young and middle collections also run on a clock, from the probe. Python starts one when
#: allocations minus deallocations pass the threshold; when every poll frees the previous
#: poll's values as it makes its own, that difference hardly grows, and the young
#: generations filled up between collections (at 20,000 meters a young collection walked
#: up to 80,000 objects, a middle one up to 420,000: 150–200 ms of CPU). On the clock each
#: walks what survived a quarter of a second, or two seconds.
YOUNG_COLLECTION_S = 0.25
MIDDLE_COLLECTION_S = 2.0

#: How often the scheduled full collection runs unless the site says (`[poll]
#: full_collection_s`, see the module docstring): its pause walks what lives and is not
#: frozen (63,000–69,000 objects, 64–153 ms, per instance at 20,025 meters on two, on a
#: slow day), and the garbage it finds (a few hundred objects a minute) waits for it.
FULL_COLLECTION_S = PollPolicy().full_collection_s

#: When the heap settles after start-up's freeze (a middle collection, then a freeze): by
#: then every link has been taken and every meter read, so what it freezes is the site's
#: long-lived state (see the module docstring).
SETTLING_COLLECTION_S = 90.0

#: A scheduled full collection longer than this freezes its survivors (half the ~100 ms
#: a pause may take at 20,000 meters; see the module docstring).
FREEZE_OVER_S = 0.05

#: How often the probe wakes, and what counts as worth a warning.
PROBE_S = 0.05
STALL_WARNING_S = 1.0
GC_WARNING_S = 0.5


@dataclass(slots=True)
class Window:
    """What one statistics window saw."""

    lags: list[float] = field(default_factory=list)
    gc_max_s: float = 0.0
    gc_max_generation: int = -1
    gc_cpu_max_s: float = 0.0
    started: float = field(default_factory=time.monotonic)
    cpu_start: float = field(default_factory=time.process_time)


class Vitals:
    """See the module docstring. A core service: the runtime starts it first and stops it
    last, so it sees every other service start and stop."""

    name = "vitals"

    def __init__(
        self,
        bus: EventBus,
        stats_interval_s: float,
        full_collection_s: float = FULL_COLLECTION_S,
        *,
        settling_collection_s: float = SETTLING_COLLECTION_S,
        freeze_over_s: float = FREEZE_OVER_S,
    ) -> None:
        self.bus = bus
        self.interval = stats_interval_s
        self.full_collection_s = full_collection_s
        self.settling_collection_s = settling_collection_s
        self.freeze_over_s = freeze_over_s
        self.full_collections = 0
        #: Scheduled full collections that froze their survivors.
        self.refreezes = 0
        #: The settling pause (a middle collection and a freeze; None until the heap
        #: settled) and the longest scheduled full collection (seconds).
        self.settling_pause_s: float | None = None
        self.worst_full_pause_s = 0.0
        self._settle_at = self._next_full = float("inf")  # scheduled by `settle_heap`
        self._next_young = self._next_middle = float("inf")
        self.window = Window()
        self.collections = 0
        #: Seconds spent in collections since start (the collector's share of the CPU).
        self.gc_total_s = 0.0
        #: The whole run's worst figures (what a benchmark reports at the end).
        self.worst_stall_s = 0.0
        self.worst_gc_s = 0.0
        #: The generation of the worst collection (0 young, 1 middle, 2 full).
        self.worst_gc_generation = -1
        #: The most CPU one collection used (its thread's CPU time): a pause much longer
        #: than this was the thread waiting for a core, not the collector working.
        self.worst_gc_cpu_s = 0.0
        #: The loop's lags of the last ~1.4 h (bounded: a service runs for months).
        self.recent_lags: collections.deque[float] = collections.deque(maxlen=100_000)
        self.frozen = 0
        self._gc_started = 0.0
        self._gc_cpu_started = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self.window = Window()
        self._tasks = [
            asyncio.create_task(self._probe(), name="vitals-probe"),
            asyncio.create_task(self._publish_forever(), name="vitals-publish"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        log.info("vitals: %s", self.summary())

    def summary(self) -> dict[str, float]:
        """The run's figures so far: the loop's lag (p99 and worst) and the collector."""
        lags = np.array(self.recent_lags) if self.recent_lags else np.zeros(1)
        return {
            "loop_lag_p99_ms": round(1000 * float(np.percentile(lags, 99)), 1),
            "max_loop_stall_ms": round(1000 * self.worst_stall_s, 1),
            "max_gc_pause_ms": round(1000 * self.worst_gc_s, 1),
            "max_gc_pause_generation": self.worst_gc_generation,
            "max_gc_cpu_ms": round(1000 * self.worst_gc_cpu_s, 1),
            "gc_collections": self.collections,
            "gc_full_collections": self.full_collections,
            "gc_refreezes": self.refreezes,
            "settling_collection_ms": (
                None if self.settling_pause_s is None else round(1000 * self.settling_pause_s, 1)
            ),
            "full_collection_ms": round(1000 * self.worst_full_pause_s, 1),
            "gc_total_s": round(self.gc_total_s, 3),
            "frozen_objects": self.frozen,
        }

    def settle_heap(self) -> None:
        """Freeze what start-up built, set `GC_THRESHOLDS` and schedule the full
        collections (see the module docstring)."""
        started = time.perf_counter()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        self.frozen = gc.get_freeze_count()
        now = time.monotonic()
        self._settle_at = now + self.settling_collection_s
        self._next_full = self._settle_at + self.full_collection_s
        self._next_young, self._next_middle = now + YOUNG_COLLECTION_S, now + MIDDLE_COLLECTION_S
        log.info(
            "start-up heap frozen: %d objects (%.0f ms); a full collection every %.0f s",
            self.frozen,
            1000 * (time.perf_counter() - started),
            self.full_collection_s,
        )

    def _settle(self) -> None:
        """What was built since start-up's freeze moves out of the full collections' way
        (see the module docstring)."""
        started = time.perf_counter()
        found = gc.collect(1)
        frozen_now = self._freeze_survivors()
        self.settling_pause_s = time.perf_counter() - started
        log.info(
            "heap settled: %.0f ms, %d unreachable collected (young generations), "
            "%d objects frozen",
            1000 * self.settling_pause_s,
            found,
            frozen_now,
        )

    def _full_collection(self) -> None:
        started = time.perf_counter()
        found = gc.collect()
        took = time.perf_counter() - started
        self.full_collections += 1
        self.worst_full_pause_s = max(self.worst_full_pause_s, took)
        frozen_now = 0
        if took > self.freeze_over_s:
            frozen_now = self._freeze_survivors()
            self.refreezes += 1
        log.info(
            "scheduled full collection: %.0f ms, %d unreachable collected, %d survivors frozen",
            1000 * took,
            found,
            frozen_now,
        )

    def _freeze_survivors(self) -> int:
        """Freeze what survived the collection just run; returns how many objects. Counted
        before, not with `gc.get_freeze_count()`: that walks the whole permanent generation
        (32 million objects at 20,000 meters, ~1 s), where a collection's survivors are all
        in the oldest generation (a middle collection's too)."""
        survivors = len(gc.get_objects(generation=2))
        gc.freeze()
        self.frozen += survivors
        return survivors

    # -- measuring ---------------------------------------------------------------------
    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
            self._gc_cpu_started = time.thread_time()  # the collecting thread runs the callback
            return
        pause = time.perf_counter() - self._gc_started
        cpu = time.thread_time() - self._gc_cpu_started
        self.window.gc_cpu_max_s = max(self.window.gc_cpu_max_s, cpu)
        self.worst_gc_cpu_s = max(self.worst_gc_cpu_s, cpu)
        self.collections += 1
        self.gc_total_s += pause
        if pause > self.window.gc_max_s:
            self.window.gc_max_s, self.window.gc_max_generation = pause, info.get("generation", -1)
        if pause > self.worst_gc_s:
            self.worst_gc_s, self.worst_gc_generation = pause, info.get("generation", -1)
        if pause > GC_WARNING_S:
            log.warning(
                "garbage collection of generation %s paused the service %.0f ms "
                "(%.0f ms of CPU, %s unreachable collected)",
                info.get("generation"),
                1000 * pause,
                1000 * cpu,
                info.get("collected"),
            )

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(PROBE_S)
            lag = max(0.0, loop.time() - before - PROBE_S)
            # Not inline: the probe's next sleep then measures the stall a collection causes.
            now = time.monotonic()
            if now >= self._settle_at:
                self._settle_at = float("inf")
                loop.call_soon(self._settle)
            elif now >= self._next_full:
                self._next_full = now + self.full_collection_s
                loop.call_soon(self._full_collection)
            elif now >= self._next_middle:
                self._next_middle = now + MIDDLE_COLLECTION_S
                self._next_young = now + YOUNG_COLLECTION_S
                loop.call_soon(gc.collect, 1)
            elif now >= self._next_young:
                self._next_young = now + YOUNG_COLLECTION_S
                loop.call_soon(gc.collect, 0)
            self.window.lags.append(lag)
            self.recent_lags.append(lag)
            if lag > self.worst_stall_s:
                self.worst_stall_s = lag
            if lag > STALL_WARNING_S:
                log.warning("the event loop stalled %.1f s", lag)

    async def _publish_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.bus.publish(Sample(SERVICE_SOURCE, SERVICE_MODEL, utcnow(), self.values()))

    def values(self) -> dict[str, Any]:
        """The figures of the window that ends now (and a new window starts)."""
        w, self.window = self.window, Window()
        elapsed = max(time.monotonic() - w.started, 1e-9)
        lags = np.array(w.lags) if w.lags else np.zeros(1)
        return {
            "loop_lag_p99_ms": round(1000 * float(np.percentile(lags, 99)), 3),
            "loop_stall_max_ms": round(1000 * float(lags.max()), 3),
            "gc_pause_max_ms": round(1000 * w.gc_max_s, 3),
            "gc_pause_cpu_max_ms": round(1000 * w.gc_cpu_max_s, 3),
            "gc_pause_max_generation": w.gc_max_generation,
            "gc_collections": self.collections,
            "gc_frozen_objects": self.frozen,
            "gc_full_collections": self.full_collections,
            "gc_settling_pause_ms": (
                -1.0 if self.settling_pause_s is None else round(1000 * self.settling_pause_s, 3)
            ),
            "cpu_percent": round(100 * (time.process_time() - w.cpu_start) / elapsed, 1),
            "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "db_busy_retried": BUSY.retried,
            "db_write_max_ms": round(1000 * WRITES.take_window_max(), 3),
        }
