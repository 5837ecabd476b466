"""Store-and-forward: drain the spool to the server, oldest first, deleting only what the
server acknowledged.

The forwarder waits until the spool holds `batch_size` lines or its oldest batch is
`flush_interval` old (or a drain was asked for), sends the oldest batches as one request
and deletes them when the server answers 2xx. A failure that may pass (no connection,
5xx, 429, auth or database missing while an operator fixes it) is retried with exponential
back-off and jitter, or after the server's `Retry-After`; nothing is dropped because of
it — the spool bound alone decides that. Data the server rejects (400/413/422) is split in
halves until the rejected lines are isolated: the good lines are delivered, the bad ones
quarantined and reported, and the queue moves on.

Re-sending is harmless on InfluxDB: a line's measurement, tags and timestamp are fixed in
the spool, so a batch sent twice (a crash between the server's answer and the delete, a
timeout after the server wrote) overwrites itself. Delivery is at-least-once; arrival is
exactly-once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from openprepay.core.events import HistorianBatchQuarantined
from openprepay.core.tasks import wait_event

from .config import HistorianConfig
from .spool import Spool, SpoolBatch
from .writer import InfluxWriter, WriteResult

log = logging.getLogger("openprepay.historian")

#: Most extra requests spent isolating rejected lines in one batch; past it, whatever is
#: still rejected is quarantined in larger pieces.
MAX_ISOLATION_REQUESTS = 256


class RetryLater(Exception):
    def __init__(self, result: WriteResult) -> None:
        super().__init__(result.error)
        self.result = result


@dataclass
class ForwardStats:
    connected: bool | None = None
    retries: int = 0
    last_error: str = ""
    last_write_s: float = 0.0
    sent_requests: int = 0
    quarantined_batches: int = 0
    recent_errors: list[str] = field(default_factory=list)


class Forwarder:
    def __init__(
        self,
        spool: Spool,
        writer: InfluxWriter,
        config: HistorianConfig,
        publish: Callable[[object], None] = lambda item: None,
    ) -> None:
        self.spool = spool
        self.writer = writer
        self.config = config
        self.publish = publish
        self.stats = ForwardStats()
        self._db_thread = ThreadPoolExecutor(1, thread_name_prefix="historian-forward")
        self._net_thread = ThreadPoolExecutor(
            config.max_in_flight, thread_name_prefix="historian-net"
        )
        self._wake = asyncio.Event()
        self._draining = 0
        self._delay = config.retry_initial_s
        self._retry_after: float | None = None
        #: Failed attempts since the last success, and the error last logged.
        self._failing = 0
        self._logged_error = ""

    def notify(self) -> None:
        """New data was committed to the spool."""
        self._wake.set()

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._db_thread, fn, *args)

    async def _net(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._net_thread, fn, *args)

    def close(self) -> None:
        """Stop the forwarder's threads (the spool stays open: its owner closes it)."""
        self._net_thread.shutdown(wait=False, cancel_futures=True)
        self._db_thread.shutdown(wait=True)

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        """Send forever, with up to `max_in_flight` requests at a time."""
        workers = [
            asyncio.create_task(self._work(), name=f"historian-forward-{n}")
            for n in range(self.config.max_in_flight)
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            await self._ready()
            sent = await self.send_once()
            if sent is False:
                await self._back_off()
            elif sent is None:  # another worker took what there was
                self._wake.clear()
                await wait_event(self._wake, self.config.flush_interval_s)

    async def _ready(self) -> None:
        while True:
            self._wake.clear()
            lines, oldest_ns = await self._db(self.spool.unread)
            if lines:
                age = (time.time_ns() - oldest_ns) / 1e9
                wait = self.config.flush_interval_s - age
                if self._draining or lines >= self.config.batch_size or wait <= 0:
                    return
            else:
                wait = None
            await wait_event(self._wake, wait)

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt: the server's Retry-After when it sent
        one, else the current back-off with jitter (which then doubles, up to the max)."""
        delay = self._delay * random.uniform(0.5, 1.0)
        if self._retry_after is not None:
            delay = min(max(self._retry_after, 0.0), 3600.0)
        self._delay = min(self._delay * 2, self.config.retry_max_s)
        return delay

    async def _back_off(self) -> None:
        await asyncio.sleep(self.next_delay())

    async def send_once(self) -> bool | None:
        """Send the oldest unread batches once: True when delivered, False when the attempt
        must be retried later, None when there was nothing to read."""
        batches: list[SpoolBatch] = await self._db(self.spool.peek, self.config.batch_size)
        if not batches:
            return None
        quarantined: list[tuple[int, str, bytes]] = [
            (0, "record damaged on disk (CRC mismatch); kept as read", b.body)
            for b in batches
            if b.corrupt
        ]
        good = [b for b in batches if not b.corrupt]
        result = WriteResult(True, 204)
        if good:
            body = self.writer.payload([(b.body, b.gz) for b in good])
            result = await self._net(self.writer.write, body)
            if not result.ok and result.rejected:
                try:
                    quarantined += await self._net(self._isolate, good, result)
                except RetryLater as exc:
                    result = exc.result
                else:
                    result = WriteResult(True, result.status, duration_s=result.duration_s)
        if not result.ok:
            self.spool.release()
            self._failed(result)
            if result.status == 404 and self.writer.target.create_database:
                await self._net(self._create_database)
            return False
        await self._db(self.spool.ack, batches, quarantined)
        if self._failing:
            log.info(
                "historian: writing to %s works again (after %d failed attempts)",
                self.writer.target.url,
                self._failing,
            )
            self._failing = 0
            self._logged_error = ""
        self.stats.connected = True
        self.stats.sent_requests += 1
        self.stats.last_write_s = result.duration_s
        self._delay = self.config.retry_initial_s
        self._retry_after = None
        if quarantined:
            self._report_quarantine(quarantined)
        return True

    def _failed(self, result: WriteResult) -> None:
        self.stats.retries += 1
        self.stats.connected = False
        self._failing += 1
        self._retry_after = result.retry_after
        message = f"HTTP {result.status}: {result.error}" if result.status else result.error
        if message != self._logged_error:
            log.warning(
                "historian: write to %s failed, will retry: %s", self.writer.target.url, message
            )
            self._logged_error = message
        self.stats.last_error = message

    def _create_database(self) -> None:
        try:
            self.writer.create_database()
            log.info("historian: created database %s", self.writer.target.db)
        except Exception as exc:
            log.warning("historian: %s", exc)

    def _report_quarantine(self, quarantined: list[tuple[int, str, bytes]]) -> None:
        lines = sum(data.count(b"\n") for _, _, data in quarantined)
        status, error, _ = quarantined[0]
        self.stats.quarantined_batches += len(quarantined)
        log.error(
            "historian: the server rejected %d line(s) as malformed (HTTP %d: %s); they are"
            " quarantined (openprepay historian status / replay)",
            lines,
            status,
            error,
        )
        self.publish(HistorianBatchQuarantined(lines=lines, status=status, error=error))

    def _isolate(
        self, batches: list[SpoolBatch], first: WriteResult
    ) -> list[tuple[int, str, bytes]]:
        """Split a rejected request until the rejected lines are alone (blocking)."""
        lines = [line for b in batches for line in b.plain().split(b"\n") if line.strip()]
        bad: list[tuple[int, str, bytes]] = []
        budget = MAX_ISOLATION_REQUESTS

        def reject(chunk: list[bytes], result: WriteResult) -> None:
            bad.append((result.status or 0, result.error, b"\n".join(chunk) + b"\n"))

        def bisect(chunk: list[bytes], result: WriteResult) -> None:
            nonlocal budget
            if result.ok:
                return
            if not result.rejected:
                raise RetryLater(result)
            if len(chunk) == 1 or budget <= 0:
                reject(chunk, result)
                return
            mid = len(chunk) // 2
            for half in (chunk[:mid], chunk[mid:]):
                budget -= 1
                body = self.writer.payload([(b"\n".join(half) + b"\n", False)])
                bisect(half, self.writer.write(body))

        bisect(lines, first)
        return bad

    # -- draining -------------------------------------------------------------------------
    async def drain(self, within_s: float) -> bool:
        """Send everything now (ignoring flush_interval); True when the spool is empty."""
        deadline = time.monotonic() + within_s
        self._draining += 1
        self._wake.set()
        try:
            while time.monotonic() < deadline:
                lines, _ = await self._db(self.spool.head)
                if not lines:
                    return True
                await asyncio.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
            lines, _ = await self._db(self.spool.head)
            return not lines
        finally:
            self._draining -= 1

    async def drain_standalone(self, within_s: float) -> bool:
        """Drain without a running `run()` loop (the CLI's flush)."""
        deadline = time.monotonic() + within_s
        self._draining += 1
        try:
            while time.monotonic() < deadline:
                lines, _ = await self._db(self.spool.head)
                if not lines:
                    return True
                if await self.send_once() is False:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        await asyncio.wait_for(self._back_off(), remaining)
                    except TimeoutError:
                        break
            lines, _ = await self._db(self.spool.head)
            return not lines
        finally:
            self._draining -= 1
