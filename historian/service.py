"""The historian service: samples and events from the event bus into durable history.

The bus listener only appends to a list. Every `commit_interval` (sooner when a batch is
full) the committer takes the list and, on its own thread, writes it durably:

- backend "influxdb": encode to line protocol, compress, append to the disk spool in one
  fsync'd transaction; the forwarder (forward.py) drains the spool to the server.
- backend "embedded": insert into the embedded SQLite store in one fsync'd transaction.

What "accepted" means: a sample counts as accepted (`accepted_lines`) once that commit
returned. Accepted data survives kill -9 and power loss, and leaves the spool only when the
server acknowledged it, when the drop policy discards it (counted, raised as
`HistorianDataDropped`, published as points), or into the quarantine when the server
rejects it. Between publication and the commit (at most about `commit_interval_ms`, default
100 ms, plus the commit itself) a sample lives only in memory: a crash in that window loses
it. A clean stop commits everything and drains the spool for up to `stop_timeout_s`; the
rest waits on disk for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from openprepay.core.config.site import Site
from openprepay.core.events import Event, EventBus, HistorianDataDropped, utcnow
from openprepay.core.field.history import HistoryReader
from openprepay.core.model import DeviceModel, Sample
from openprepay.core.tasks import wait_event

from .config import Backend, DropPolicy, HistorianConfig
from .embedded import EmbeddedHistoryReader, EmbeddedStore
from .forward import Forwarder
from .influxql import InfluxHistoryReader, InfluxQLClient
from .lineprotocol import LineEncoder, from_ns, to_ns
from .overflow import OVERFLOW_FILE, Overflow
from .schema import HISTORIAN_MODEL, HISTORIAN_SOURCE, Catalogue
from .spool import Drop, Spool
from .writer import InfluxWriter

log = logging.getLogger("openprepay.historian")

Item = Sample | Event
#: Least time between two HistorianDataDropped events while the spool stays full.
DROP_EVENT_INTERVAL_S = 5.0


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


class Historian:
    """Common part of both backends: queueing, committing, statistics, start and stop."""

    name = "historian"
    #: Its final commit puts the samples still in memory into the spool: give it the
    #: largest share of the runtime's stop deadline.
    stop_weight = 4.0
    reader: HistoryReader

    def __init__(
        self,
        config: HistorianConfig,
        site: Site | None,
        bus: EventBus,
        models: Mapping[str, DeviceModel] | None = None,
    ) -> None:
        self.config = config
        self.site = site
        self.bus = bus
        self.catalogue = Catalogue(site, models or {})
        self._pending: list[Item] = []
        self._wake_at = max(1000, config.batch_size)
        self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="historian-store")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._commit_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        #: Samples dropped in memory because commits could not keep up (disk trouble).
        self._memory_drops: list[Item] = []
        self.memory_dropped_lines = 0
        self.memory_dropped_points = 0
        self.accepted_lines = 0
        self.commit_failures = 0
        self.last_commit_s = 0.0
        self.last_stats: dict[str, Any] = {}
        self.started = False
        self._drops_unreported: Drop | None = None
        self._last_drop_event = -DROP_EVENT_INTERVAL_S
        self._setup()
        #: Samples beyond `max_pending` wait on disk (overflow.py), written on a thread
        #: of their own; `_spilling` are on their way there.
        self.overflow = self._make_overflow(models or {})
        self._overflow_thread = ThreadPoolExecutor(1, thread_name_prefix="historian-overflow")
        self._spilling = 0

    # -- the bus listener: enqueue only ---------------------------------------------------
    def _enqueue(self, item: Item) -> None:
        pending = self._pending
        pending.append(item)
        n = len(pending)
        if n >= self._wake_at:
            if n > self.config.max_pending:
                self._drop_in_memory()
            self._wake_committer()

    def _wake_committer(self) -> None:
        if self._wake is None or self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _drop_in_memory(self) -> None:
        pending = self._pending
        excess = len(pending) - self.config.max_pending
        if self.overflow is not None and self._loop is not None:
            # Oldest first to the disk; what does not fit there meets the drop policy.
            excess = max(excess, self.config.max_pending // 10)
            spilled = pending[:excess]
            del pending[:excess]
            self._spilling += len(spilled)
            self._overflow_thread.submit(self._spill, spilled)
            return
        if self.config.drop_policy is DropPolicy.DROP_OLDEST:
            excess = max(excess, self.config.max_pending // 10)
            dropped = pending[:excess]
            del pending[:excess]
        else:
            dropped = pending[-excess:]
            del pending[-excess:]
        self._memory_drops.extend(dropped)

    # -- overflow (overflow.py) -------------------------------------------------------------
    def _make_overflow(self, models: Mapping[str, DeviceModel]) -> Overflow | None:
        config = self.config
        if config.overflow_max_bytes <= 0:
            return None
        if config.backend is Backend.INFLUXDB and config.spool_dir is not None:
            path = config.spool_dir / OVERFLOW_FILE
        elif config.backend is Backend.EMBEDDED and config.path is not None:
            path = config.path.with_name(config.path.name + ".overflow")
        else:
            return None  # an in-memory store keeps nothing on disk
        known = {HISTORIAN_MODEL.name: HISTORIAN_MODEL, **models}
        return Overflow(path, config.overflow_max_bytes, known)

    def _spill(self, items: list[Item]) -> None:
        """On the overflow thread: write `items`; the loop learns what did not fit."""
        assert self.overflow is not None and self._loop is not None
        try:
            left = self.overflow.spill(items)
        except Exception:
            log.exception("historian: overflow write failed")
            left = items
        try:
            self._loop.call_soon_threadsafe(self._spilled, len(items), left)
        except RuntimeError:  # the loop is closed: the process is ending
            pass

    def _spilled(self, count: int, left: list[Item]) -> None:
        self._spilling -= count
        if left:
            self._memory_drops.extend(left)

    async def _take_back(self) -> list[Item]:
        """The oldest spilled samples, when the memory queue has room for them."""
        overflow = self.overflow
        if overflow is None or not overflow.waiting:
            return []
        if len(self._pending) >= self.config.max_pending // 2:
            return []
        loop = asyncio.get_running_loop()
        limit = max(self.config.batch_size * 4, 1000)
        return await loop.run_in_executor(self._overflow_thread, overflow.take, limit)

    async def _in_overflow(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._overflow_thread, fn, *args)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        await self._in_store(self._open)
        if self.overflow is not None:
            await self._in_overflow(self.overflow.open)
        self._unsubscribe = [
            self.bus.subscribe(Sample, self._enqueue),
            self.bus.subscribe(Event, self._enqueue),
        ]
        self._tasks = [
            asyncio.create_task(self._commit_forever(), name="historian-commit"),
            asyncio.create_task(self._stats_forever(), name="historian-stats"),
            *self._start_tasks(),
        ]
        self.started = True
        log.info("historian started: %s", self.describe())

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        assert self._commit_lock is not None
        async with self._commit_lock:  # never cancel a commit half-way (the thread goes on)
            for task in self._tasks[:2]:
                task.cancel()
        await asyncio.gather(*self._tasks[:2], return_exceptions=True)
        try:
            await self._in_overflow(lambda: None)  # the spills under way are written
            await self.commit()
            for _ in range(100_000):  # what waited on disk, a batch at a time
                if self.overflow is None or not self.overflow.waiting:
                    break
                await self.commit()
        except Exception:
            log.exception("historian: final commit failed; %d samples lost", len(self._pending))
        self._report_drop(None, force=True)
        await self._finish()
        for task in self._tasks[2:]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._in_store(self._close)
        self._store_thread.shutdown(wait=True)
        if self.overflow is not None:
            await self._in_overflow(self.overflow.close)
        self._overflow_thread.shutdown(wait=True)
        log.info("historian stopped")

    async def _in_store(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._store_thread, fn, *args)

    # -- committing -----------------------------------------------------------------------
    async def _commit_forever(self) -> None:
        assert self._wake is not None
        delay = self.config.commit_interval_s
        while True:
            await wait_event(self._wake, delay)
            self._wake.clear()
            try:
                await self.commit()
                delay = self.config.commit_interval_s
            except Exception:
                self.commit_failures += 1
                log.exception("historian: commit failed; retrying (data kept in memory)")
                delay = min(max(delay * 2, 0.5), 30.0)

    async def commit(self) -> int:
        """Write what is pending durably now; the lines accepted."""
        assert self._commit_lock is not None
        async with self._commit_lock:
            back = await self._take_back()
            items, self._pending = back + self._pending, []
            memory_drops, self._memory_drops = self._memory_drops, []
            if memory_drops:
                self._report_drop(self._memory_drop(memory_drops))
            if not items:
                self._report_drop(None)
                return 0
            total = 0
            step = self.config.batch_size
            for i in range(0, len(items), step):
                part = items[i : i + step]
                start = time.perf_counter()
                try:
                    accepted, drop = await self._in_store(self._store, part)
                except asyncio.CancelledError:
                    # The thread goes on storing `part`; keep only what it has not got.
                    self._pending[:0] = items[i + step :]
                    raise
                except BaseException:
                    self._pending[:0] = items[i:]  # keep them; the bound still applies
                    raise
                self.last_commit_s = time.perf_counter() - start
                self.accepted_lines += accepted
                total += accepted
                self._report_drop(drop)
                self._committed()
            return total

    def _memory_drop(self, items: list[Item]) -> Drop:
        points = sum(len(i.values) if isinstance(i, Sample) else 1 for i in items)
        times = [to_ns(i.time if isinstance(i, Sample) else i.at) for i in items]
        self.memory_dropped_lines += len(items)
        self.memory_dropped_points += points
        return Drop(
            lines=len(items),
            points=points,
            batches=0,
            first_ns=min(times),
            last_ns=max(times),
            reason=f"more than {self.config.max_pending} samples waited in memory for the"
            f" disk ({self.config.drop_policy.value})",
        )

    def _report_drop(self, drop: Drop | None, force: bool = False) -> None:
        """Raise drops as `HistorianDataDropped`: the first at once, then at most one every
        DROP_EVENT_INTERVAL_S with the totals since the last one (a full spool drops on
        every commit, and the event's own line may be among the next drop)."""
        if drop is not None:
            acc = self._drops_unreported
            self._drops_unreported = (
                drop
                if acc is None
                else Drop(
                    lines=acc.lines + drop.lines,
                    points=acc.points + drop.points,
                    batches=acc.batches + drop.batches,
                    first_ns=_min(acc.first_ns, drop.first_ns),
                    last_ns=_max(acc.last_ns, drop.last_ns),
                    reason=drop.reason,
                )
            )
        due = time.monotonic() - self._last_drop_event >= DROP_EVENT_INTERVAL_S
        drop = self._drops_unreported
        if drop is None or not (due or force):
            return
        self._drops_unreported = None
        self._last_drop_event = time.monotonic()
        log.error(
            "historian: %d lines (%d point values) dropped: %s",
            drop.lines,
            drop.points,
            drop.reason,
        )
        self.bus.publish(
            HistorianDataDropped(
                lines=drop.lines,
                points=drop.points,
                policy=self.config.drop_policy.value,
                reason=drop.reason,
                first=from_ns(drop.first_ns) if drop.first_ns is not None else None,
                last=from_ns(drop.last_ns) if drop.last_ns is not None else None,
            )
        )

    # -- statistics -----------------------------------------------------------------------
    async def _stats_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.stats_interval_s)
            try:
                await self._maintain()
                await self.publish_stats()
            except Exception:
                log.exception("historian: statistics failed")

    async def _maintain(self) -> None:
        """Periodic housekeeping of the backend (on the stats schedule)."""

    async def publish_stats(self) -> dict[str, Any]:
        values = await self.stats()
        self.last_stats = values
        sample_values = {p.name: values[p.name] for p in HISTORIAN_MODEL.points if p.name in values}
        self.bus.publish(Sample(HISTORIAN_SOURCE, HISTORIAN_MODEL, utcnow(), sample_values))
        return values

    # -- backend hooks --------------------------------------------------------------------
    def _setup(self) -> None:
        """Build the backend's parts (called at the end of the constructor, so that a
        backend does not restate it)."""
        raise NotImplementedError

    def _open(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def _store(self, items: list[Item]) -> tuple[int, Drop | None]:
        raise NotImplementedError

    def _start_tasks(self) -> list[asyncio.Task[Any]]:
        return []

    def _committed(self) -> None:
        pass

    async def _finish(self) -> None:
        pass

    async def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class SpoolingHistorian(Historian):
    """InfluxDB backend: spool on disk, forwarder to the server, InfluxQL reads."""

    def _setup(self) -> None:
        config = self.config
        assert config.influx is not None and config.spool_dir is not None
        self.encoder = LineEncoder(self.site, self.catalogue.learn)
        self.spool = Spool(
            config.spool_dir,
            config.spool_max_bytes,
            config.drop_policy,
            config.quarantine_max_bytes,
            compress=config.influx.gzip,
        )
        self.writer = InfluxWriter(config.influx)
        self.forwarder: Forwarder | None = None
        self._read_writer = InfluxWriter(config.influx)
        self.reader = InfluxHistoryReader(InfluxQLClient(self._read_writer), self.catalogue)

    def describe(self) -> str:
        t = self.config.influx
        assert t is not None
        where = f"bucket {t.bucket}" if t.bucket else f"db {t.db}"
        return f"InfluxDB {t.url} (api {t.api.value}, {where}), spool {self.config.spool_dir}"

    def _open(self) -> None:
        self.spool.open()
        self.spool.ingest_replay(self.config.batch_size)

    def _start_tasks(self) -> list[asyncio.Task[Any]]:
        self.forwarder = Forwarder(self.spool, self.writer, self.config, self.bus.publish)
        return [asyncio.create_task(self.forwarder.run(), name="historian-forward")]

    def _store(self, items: list[Item]) -> tuple[int, Drop | None]:
        chunks = self.encoder.encode(items, self.config.batch_size)
        return self.spool.append(chunks)

    def _committed(self) -> None:
        if self.forwarder is not None:
            self.forwarder.notify()

    async def _maintain(self) -> None:
        """Take in what `openprepay historian replay` left, and save the counters."""
        if await self._in_store(self.spool.ingest_replay, self.config.batch_size):
            self._committed()
        await self._in_store(self.spool.save_counters)

    async def flush(self, within_s: float) -> bool:
        """Commit what is pending and send the whole spool now; True when it is empty."""
        await self.commit()
        assert self.forwarder is not None
        return await self.forwarder.drain(within_s)

    async def _finish(self) -> None:
        if self.forwarder is None:
            return
        drained = await self.forwarder.drain(self.config.stop_timeout_s)
        if not drained:
            lines, _ = await self._in_store(self.spool.head)
            log.warning(
                "historian: %d lines stay in the spool until the next start (server: %s)",
                lines,
                self.forwarder.stats.last_error or "slow",
            )

    def _close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
        self.spool.close()
        self.writer.close()
        self.reader.close()
        self._read_writer.close()

    async def stats(self) -> dict[str, Any]:
        queue, counters = await self._in_store(lambda: (self.spool.queue(), self.spool.counters()))
        f = self.forwarder.stats if self.forwarder is not None else None
        oldest = (time.time_ns() - queue.oldest_created_ns) / 1e9 if queue.batches else 0.0
        return {
            "queue_depth": queue.lines,
            "queue_batches": queue.batches,
            "queue_bytes": queue.bytes,
            "oldest_age_s": round(max(oldest, 0.0), 3),
            "pending_samples": len(self._pending),
            "spilled_samples": self.overflow.spilled if self.overflow is not None else 0,
            "accepted_lines": counters["accepted_lines"],
            "sent_lines": counters["sent_lines"],
            "dropped_lines": counters["dropped_lines"] + self.memory_dropped_lines,
            "dropped_points": counters["dropped_points"] + self.memory_dropped_points,
            "quarantined_lines": counters["quarantined_lines"],
            "quarantine_batches": self.spool.quarantine.count(),
            "retries": f.retries if f else 0,
            "connected": bool(f and f.connected),
            "write_ms": round((f.last_write_s if f else 0.0) * 1000, 3),
            "last_error": f.last_error if f else "",
        }


class EmbeddedHistorian(Historian):
    """Embedded backend: the SQLite store is the durable copy; no network."""

    def _setup(self) -> None:
        self.store = EmbeddedStore(self.config.path, self.config.retention_days)
        self.reader = EmbeddedHistoryReader(self.store)

    def describe(self) -> str:
        where = self.config.path or "memory (the site has no file)"
        return f"embedded store {where}"

    def _open(self) -> None:
        self.store.open()

    def _close(self) -> None:
        self.store.close()

    def _store(self, items: list[Item]) -> tuple[int, Drop | None]:
        self.store.store(items)
        return len(items), None

    async def flush(self, within_s: float) -> bool:
        await self.commit()
        return True

    async def stats(self) -> dict[str, Any]:
        return {
            "queue_depth": len(self._pending),
            "queue_batches": 0,
            "queue_bytes": 0,
            "oldest_age_s": 0.0,
            "pending_samples": len(self._pending),
            "spilled_samples": self.overflow.spilled if self.overflow is not None else 0,
            "accepted_lines": self.accepted_lines,
            "sent_lines": self.accepted_lines,
            "dropped_lines": self.memory_dropped_lines,
            "dropped_points": self.memory_dropped_points,
            "quarantined_lines": 0,
            "quarantine_batches": 0,
            "retries": self.commit_failures,
            "connected": True,
            "write_ms": round(self.last_commit_s * 1000, 3),
        }


def make_historian(
    config: HistorianConfig,
    site: Site | None,
    bus: EventBus,
    models: Mapping[str, DeviceModel] | None = None,
) -> Historian | None:
    if config.backend is Backend.NONE:
        return None
    if config.backend is Backend.INFLUXDB:
        return SpoolingHistorian(config, site, bus, models)
    return EmbeddedHistorian(config, site, bus, models)
