"""The link arbiter: one worker per physical link, owning every transaction on it.

A link is one RS-485 bus, gateway or Modbus TCP device. Its `LinkWorker` runs one
transaction at a time (or `in_flight` on native Modbus TCP) from a priority queue:
control commands first, then their read-back confirmations, then routine polls in order
of due time. A device that stops answering is backed off exponentially and, after
`quarantine_after` failures, probed only every `quarantine_probe_s`, so a dead meter costs
its healthy neighbours no more than those rare probe slots. A link that drops is reopened
with its own back-off while its devices show Bad quality.

Everything the worker learns goes out on the event bus: a `Sample` per poll (Bad quality
and no values when the poll failed), communication events, and periodic link and device
statistics as samples of the diagnostic pseudo-models.

What each poll means for a device's health is `core/field/device_watch.py`; the queued
jobs are `core/field/link_jobs.py`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping

from ..config.site import LinkConfig, PollPolicy
from ..contracts import Driver, LinkTransport
from ..errors import (
    CommandRefused,
    DeviceIOError,
    DeviceRejected,
    LinkDown,
    LinkNotOwned,
)
from ..events import (
    CommandExecuted,
    LinkStateChanged,
    utcnow,
)
from ..model import CommandOutcome, DeviceCommand, Quality, Sample
from ..tasks import Wakeup
from .device_watch import DeviceWatch
from .diagnostics import HEALTH_MODEL, LINK_MODEL, DeviceHealth, DeviceState, LinkHealth
from .link_jobs import ConfirmJob, ControlJob, Job, PollJob, ReadJob, settle
from .plausibility import DeviceLimits

log = logging.getLogger("openprepay.arbiter")

#: Read-backs attempted before a command counts as unconfirmed.
CONFIRM_ATTEMPTS = 3

Publish = Callable[[object], None]


class LinkWorker:
    """One link's transactions, in priority order (module docstring)."""

    def __init__(
        self,
        link: LinkConfig,
        transport: LinkTransport,
        drivers: Mapping[str, Driver],
        policy: PollPolicy,
        intervals: Mapping[str, float],
        publish: Publish,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.transport = transport
        self.drivers = dict(drivers)
        self.policy = policy
        self.publish = publish
        self.clock = clock
        self.stats = LinkHealth(link.id)
        self.devices = DeviceWatch(
            link.id, self.drivers, policy, intervals, self.stats, publish, clock
        )
        self.health = self.devices.health
        self.checks = self.devices.checks
        self._control: deque[ControlJob] = deque()
        self._confirm: deque[ConfirmJob | ReadJob] = deque()
        self._polls: list[PollJob] = []
        self._seq = itertools.count()
        self._wake = Wakeup()
        self._connect_lock = asyncio.Lock()
        self._reconnect_at = 0.0
        self._reconnect_delay = link.reconnect_min_s
        self._ever_connected = False
        self._log_extra = {"link": link.id}
        #: Set when the worker has stopped: read-backs scheduled later fail with it.
        self._stopped: LinkDown | None = None
        #: With [cluster]: asked before every transaction whether this instance still owns
        #: the link (its lease's local deadline has not passed); None: always.
        self.guard: Callable[[], bool] | None = None
        #: With [cluster]: (lease epoch, seconds left) for the link's statistics.
        self.lease_info: Callable[[], tuple[int, float]] | None = None

    # -- public API -----------------------------------------------------------------------
    async def run(self, routine_polls: bool = True) -> None:
        """Serve commands and reads until cancelled; with `routine_polls` (the service),
        also poll every device at its interval and publish the link's statistics."""
        now = self.clock()
        self.stats.window_start = now
        self._stopped = None
        self._polls = []  # a worker started again (a lease taken back) starts afresh
        lanes = [
            asyncio.create_task(self._lane(), name=f"link-{self.link.id}-{n}")
            for n in range(self.link.in_flight)
        ]
        if routine_polls:
            meters = list(self.drivers)
            for i, meter_id in enumerate(meters):
                # Spread the first polls over one interval instead of a burst at start.
                offset = self.health[meter_id].interval_s * i / max(len(meters), 1)
                heapq.heappush(self._polls, (now + offset, next(self._seq), meter_id))
            lanes.append(
                asyncio.create_task(self._publish_stats_forever(), name=f"stats-{self.link.id}")
            )
        try:
            await asyncio.gather(*lanes)
        finally:
            for lane in lanes:
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            self._fail_waiting(LinkDown(f"link {self.link.id} stopped"))
            await self.transport.close()

    def _fail_waiting(self, exc: LinkDown) -> None:
        """Answer every command and read still queued: their callers must not wait for a
        worker that has stopped."""
        self._stopped = exc
        while self._control:
            settle(self._control.popleft().future, exc)
        while self._confirm:
            settle(self._confirm.popleft().future, exc)

    async def execute(self, command: DeviceCommand) -> CommandOutcome:
        """Send a command ahead of every poll and confirm it by reading the device back.

        Raises `CommandRefused` (nothing was sent) or a `DeviceIOError` when the command
        could not be written; returns the outcome of the read-back otherwise.
        """
        if command.meter_id not in self.drivers:
            raise CommandRefused(f"meter {command.meter_id} is not on link {self.link.id}")
        future: asyncio.Future[CommandOutcome] = asyncio.get_running_loop().create_future()
        self._control.append(ControlJob(command, future))
        self._wake.set()
        return await future

    async def check(self, command: DeviceCommand) -> CommandOutcome:
        """Read the device back for `command` without writing anything: does it already
        show the effect? (A new owner of a link asks before re-sending what the previous
        owner may have sent.)"""
        if command.meter_id not in self.drivers:
            raise CommandRefused(f"meter {command.meter_id} is not on link {self.link.id}")
        future: asyncio.Future[CommandOutcome] = asyncio.get_running_loop().create_future()
        self._confirm.append(ConfirmJob(command, future, CONFIRM_ATTEMPTS))
        self._wake.set()
        return await future

    async def read_now(self, meter_id: str) -> Sample:
        """Read one device ahead of routine polls; the sample is also published."""
        future: asyncio.Future[Sample] = asyncio.get_running_loop().create_future()
        self._confirm.append(ReadJob(meter_id, future))
        self._wake.set()
        return await future

    @property
    def queue_depth(self) -> int:
        return len(self._control) + len(self._confirm)

    # -- scheduling -----------------------------------------------------------------------
    def _link_usable(self, now: float) -> bool:
        return self.transport.connected or now >= self._reconnect_at

    async def _take(self) -> Job:
        while True:
            if self._control:
                return self._control.popleft()
            now = self.clock()
            usable = self._link_usable(now)
            if usable and self._confirm:
                return self._confirm.popleft()
            if usable and self._polls and self._polls[0][0] <= now:
                return heapq.heappop(self._polls)
            wake_at = self._polls[0][0] if self._polls else now + 60
            if not usable:
                wake_at = max(wake_at, self._reconnect_at) if self._polls else self._reconnect_at
            self._wake.clear()
            await self._wake.wait(max(wake_at - now, 0.0005))

    def _schedule(self, meter_id: str, delay: float) -> None:
        heapq.heappush(self._polls, (self.clock() + delay, next(self._seq), meter_id))

    async def _lane(self) -> None:
        lane = asyncio.current_task()
        assert lane is not None
        while True:
            if lane.cancelling():
                # A driver or its library swallowed our cancellation (Python 3.11's
                # asyncio.wait_for does when the answer arrives as the lane is cancelled):
                # the lane must stop anyway, or the command that stops it never ends.
                raise asyncio.CancelledError
            job = await self._take()
            if self.guard is not None and not self.guard():
                # The lease may be gone (or going): not one more frame on this link. A
                # poll is dropped (the lease manager stops this worker), no Bad sample.
                if isinstance(job, tuple):  # a PollJob
                    self._schedule(job[2], self.health[job[2]].interval_s)
                else:
                    settle(job.future, LinkNotOwned(f"link {self.link.id} is not owned"))
                continue
            if not self.transport.connected:
                try:
                    await self._connect()
                except LinkDown as exc:
                    self._fail_on_link_down(job, exc)
                    continue
            started = self.clock()
            try:
                await self._run(job)
            finally:
                elapsed = self.clock() - started
                self.stats.window_busy_s += elapsed
                self.stats.window_jobs += 1
                self.stats.jobs_total += 1

    async def _run(self, job: Job) -> None:
        if isinstance(job, tuple):  # a PollJob
            await self._poll(job[2])
        elif isinstance(job, ControlJob):
            await self._execute(job)
        elif isinstance(job, ConfirmJob):
            await self._confirm_once(job)
        else:
            await self._read_on_demand(job)

    # -- link state -----------------------------------------------------------------------
    async def _connect(self) -> None:
        async with self._connect_lock:
            if self.transport.connected:
                return
            now = self.clock()
            if now < self._reconnect_at:
                raise LinkDown(
                    f"link {self.link.id} is down; next attempt in {self._reconnect_at - now:.1f} s"
                )
            try:
                await self.transport.connect()
            except LinkDown as exc:
                self._reconnect_at = self.clock() + self._reconnect_delay
                self._reconnect_delay = min(self._reconnect_delay * 2, self.link.reconnect_max_s)
                self.stats.last_error = str(exc)
                if self.stats.connected or not self._ever_connected:
                    log.warning(
                        "link %s cannot be opened: %s", self.link.id, exc, extra=self._log_extra
                    )
                self._set_link_state(False, str(exc))
                raise
            if self._ever_connected:
                self.stats.reconnects += 1
            self._ever_connected = True
            self._reconnect_delay = self.link.reconnect_min_s
            self._set_link_state(True, f"open to {self.link.address}")
            log.info("link %s open to %s", self.link.id, self.link.address, extra=self._log_extra)

    def _set_link_state(self, connected: bool, detail: str) -> None:
        if self.stats.connected != connected:
            self.stats.connected = connected
            self.publish(LinkStateChanged(self.link.id, connected, detail))

    async def _link_lost(self, exc: Exception) -> None:
        """The link failed under a transaction: close it, mark every device offline."""
        log.warning("link %s lost: %s", self.link.id, exc, extra=self._log_extra)
        self.stats.errors += 1
        self.stats.last_error = str(exc)
        self._reconnect_at = self.clock() + self._reconnect_delay
        await self.transport.close()
        self._set_link_state(False, str(exc))
        for health in self.health.values():
            if health.offline_since is None:
                self.devices.publish_bad(health, Quality.BAD_COMM_FAILURE, f"link down: {exc}")
                self.devices.mark_offline(health, f"link down: {exc}")

    def _fail_on_link_down(self, job: Job, exc: LinkDown) -> None:
        if isinstance(job, tuple):  # a PollJob
            health = self.health[job[2]]
            if health.offline_since is None:
                self.devices.publish_bad(health, Quality.BAD_COMM_FAILURE, str(exc))
                self.devices.mark_offline(health, str(exc))
            self._schedule(job[2], health.interval_s)
        elif not job.future.done():
            job.future.set_exception(exc)

    # -- polls ----------------------------------------------------------------------------
    async def _poll(self, meter_id: str) -> None:
        health = self.health[meter_id]
        started = self.clock()
        try:
            sample = await self.drivers[meter_id].read()
        except LinkDown as exc:
            await self._link_lost(exc)
            self._schedule(meter_id, health.interval_s)
            return
        except DeviceIOError as exc:
            self._schedule(meter_id, self.devices.failed(health, exc))
            return
        except Exception as exc:  # a driver bug must not stop the link
            log.exception(
                "driver of meter %s failed", meter_id, extra={"meter": meter_id, **self._log_extra}
            )
            self._schedule(meter_id, self.devices.failed(health, exc))
            return
        latency = self.clock() - started
        self.devices.answered(health, sample, latency)
        self._schedule(meter_id, health.interval_s)

    # -- commands -------------------------------------------------------------------------
    async def _execute(self, job: ControlJob) -> None:
        command = job.command
        driver = self.drivers[command.meter_id]
        extra = {"meter": command.meter_id, **self._log_extra}
        try:
            delay = driver.confirm_delay_s(command)
            await driver.execute(command)
        except LinkDown as exc:
            await self._link_lost(exc)
            settle(job.future, exc)
            return
        except DeviceRejected as exc:
            # A meter may refuse what it already did (a repeated top-up with the same
            # purchase count, a trip while tripped). Only the read-back decides.
            log.warning(
                "meter %s refused %s (%s); reading back",
                command.meter_id,
                command.name,
                exc,
                extra=extra,
            )
            self._confirm_later(ConfirmJob(command, job.future, CONFIRM_ATTEMPTS, exc), 0.0)
            return
        except (CommandRefused, DeviceIOError) as exc:
            log.warning(
                "command %s to meter %s failed: %s",
                command.name,
                command.meter_id,
                exc,
                extra=extra,
            )
            settle(job.future, exc)
            return
        except Exception as exc:
            log.exception(
                "driver of meter %s failed on %s", command.meter_id, command.name, extra=extra
            )
            settle(job.future, DeviceIOError(f"driver error: {exc}"))
            return
        log.info(
            "command %s sent to meter %s (%s)",
            command.name,
            command.meter_id,
            command.reason or "no reason given",
            extra=extra,
        )
        self._confirm_later(ConfirmJob(command, job.future, 1), delay)

    def _confirm_later(self, job: ConfirmJob, delay: float) -> None:
        def push() -> None:
            if self._stopped is not None:
                settle(job.future, self._stopped)
                return
            self._confirm.append(job)
            self._wake.set()

        asyncio.get_running_loop().call_later(delay, push)

    async def _confirm_once(self, job: ConfirmJob) -> None:
        command = job.command
        driver = self.drivers[command.meter_id]
        error: Exception | None = None
        outcome: CommandOutcome | None = None
        try:
            outcome = await driver.confirm(command)
        except LinkDown as exc:
            await self._link_lost(exc)
            error = exc
        except DeviceIOError as exc:
            error = exc
        except Exception as exc:  # a driver bug must not kill the link's worker
            log.exception(
                "driver of meter %s failed confirming %s",
                command.meter_id,
                command.name,
                extra={"meter": command.meter_id, **self._log_extra},
            )
            error = exc
        if outcome is not None and outcome.confirmed:
            if job.refusal is not None:
                detail = f"{outcome.detail} (the write was refused: {job.refusal})"
                outcome = CommandOutcome(command, True, detail, outcome.readback)
            self._finish(job, outcome)
        elif job.refusal is not None:
            settle(job.future, job.refusal)
        elif job.attempt < CONFIRM_ATTEMPTS:
            job.attempt += 1
            self._confirm_later(job, max(driver.confirm_delay_s(command), 0.05))
        else:
            self._finish(
                job, outcome or CommandOutcome(command, False, f"could not read back: {error}")
            )

    def _finish(self, job: ConfirmJob, outcome: CommandOutcome) -> None:
        command = outcome.command
        log.log(
            logging.INFO if outcome.confirmed else logging.WARNING,
            "command %s on meter %s %s: %s",
            command.name,
            command.meter_id,
            "confirmed" if outcome.confirmed else "NOT confirmed",
            outcome.detail,
            extra={"meter": command.meter_id, **self._log_extra},
        )
        self.publish(
            CommandExecuted(
                command.meter_id,
                self.link.id,
                command.name,
                outcome.confirmed,
                outcome.detail,
                command.reason,
            )
        )
        settle(job.future, outcome)

    async def _read_on_demand(self, job: ReadJob) -> None:
        try:
            sample = await self.drivers[job.meter_id].read()
        except LinkDown as exc:
            await self._link_lost(exc)
            settle(job.future, exc)
            return
        except DeviceIOError as exc:
            settle(job.future, exc)
            return
        health = self.health[job.meter_id]
        self.devices.publish_read(health, sample)
        settle(job.future, sample)

    # -- statistics -----------------------------------------------------------------------
    async def _publish_stats_forever(self) -> None:
        while True:
            await asyncio.sleep(self.policy.stats_interval_s)
            self.publish_stats()

    def publish_stats(self) -> None:
        now = self.clock()
        s = self.stats
        window = max(now - s.window_start, 1e-9)
        states = [h.state for h in self.health.values()]
        values = {
            "connected": self.transport.connected,
            "utilisation": round(100 * min(s.window_busy_s / window / self.link.in_flight, 1.0), 2),
            "transactions_per_s": round(s.window_jobs / window, 3),
            "latency_ms": round(1000 * s.window_poll_s / s.window_polls, 3)
            if s.window_polls
            else 0.0,
            "queue_depth": self.queue_depth,
            "errors": s.errors,
            "timeouts": s.timeouts,
            "garbled_frames": s.garbled_frames,
            "rejected": s.rejected,
            "reconnects": s.reconnects,
            "devices_online": sum(1 for h in self.health.values() if h.online),
            "devices_backoff": states.count(DeviceState.BACKOFF),
            "devices_quarantined": states.count(DeviceState.QUARANTINED),
        }
        if self.lease_info is not None:
            epoch, left_s = self.lease_info()
            values["lease_epoch"], values["lease_left_s"] = epoch, round(left_s, 3)
        s.published = values
        s.window_start, s.window_busy_s, s.window_jobs = now, 0.0, 0
        s.window_poll_s, s.window_polls = 0.0, 0
        at = utcnow()
        self.publish(Sample(self.link.id, LINK_MODEL, at, values))
        for health in self.health.values():
            values = health.values()
            if values != health.published:  # unchanged: what was published still holds
                health.published = values
                self.publish(Sample(health.meter_id, HEALTH_MODEL, at, values))


class LinkArbiter:
    """All link workers of a site; routes commands and reads to the right link."""

    def __init__(self, workers: Mapping[str, LinkWorker]) -> None:
        self.workers = dict(workers)
        self._link_of = {m: w for w in self.workers.values() for m in w.drivers}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._routine_polls = True
        #: With [cluster]: links start only when their lease is taken (`start_link`).
        self.leased = False

    async def start(self, routine_polls: bool = True) -> None:
        """Start every link's worker (with [cluster]: none; the lease manager starts each
        link it owns); without `routine_polls` the workers only serve `execute` and
        `read_now` (a one-off `openprepay read`)."""
        self._routine_polls = routine_polls
        if not self.leased:
            for link_id in self.workers:
                await self.start_link(link_id)

    async def start_link(self, link_id: str) -> None:
        """Start one link's worker (the lease manager: this instance now owns it)."""
        task = self._tasks.get(link_id)
        if task is not None and not task.done():
            return
        worker = self.workers[link_id]
        self._tasks[link_id] = asyncio.create_task(
            worker.run(self._routine_polls), name=f"link-{link_id}"
        )

    async def stop_link(self, link_id: str) -> None:
        """Stop one link's worker: what is queued fails, the transport closes."""
        task = self._tasks.pop(link_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def running(self, link_id: str) -> bool:
        task = self._tasks.get(link_id)
        return task is not None and not task.done()

    async def stop(self, timeout_s: float = 4.0) -> None:
        """Cancel every link's worker and wait for them at most `timeout_s`: a worker
        stuck in a device read that ignores its cancellation is abandoned (logged), so
        `openprepay read` and the device commands always end."""
        tasks = list(self._tasks.values())
        self._tasks = {}
        for task in tasks:
            task.cancel()
        if tasks:
            done, stuck = await asyncio.wait(tasks, timeout=timeout_s)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("%s ended with %r", task.get_name(), task.exception())
            for task in stuck:
                log.warning("%s did not stop within %.1f s: abandoned", task.get_name(), timeout_s)

    def worker_of(self, meter_id: str) -> LinkWorker:
        try:
            return self._link_of[meter_id]
        except KeyError:
            raise CommandRefused(f"unknown meter {meter_id!r}") from None

    def _serving(self, meter_id: str) -> LinkWorker:
        worker = self.worker_of(meter_id)
        if self.leased and not self.running(worker.link.id):
            raise LinkNotOwned(
                f"meter {meter_id}: this instance does not own link {worker.link.id} "
                "([cluster]: only the lease's owner talks to a link; its points are on its "
                "OPC UA server)"
            )
        return worker

    async def execute(self, command: DeviceCommand) -> CommandOutcome:
        return await self._serving(command.meter_id).execute(command)

    async def check(self, command: DeviceCommand) -> CommandOutcome:
        """Read back whether the device already shows `command`'s effect (no write)."""
        return await self._serving(command.meter_id).check(command)

    async def read_now(self, meter_id: str) -> Sample:
        return await self._serving(meter_id).read_now(meter_id)

    def health(self, meter_id: str) -> DeviceHealth:
        return self.worker_of(meter_id).health[meter_id]

    def rebase_plausibility(self, meter_id: str) -> None:
        """Forget `meter_id`'s reference reading (its device was replaced)."""
        self.worker_of(meter_id).checks[meter_id].rebase()

    def limits(self, meter_id: str) -> DeviceLimits:
        """The plausibility limits `meter_id`'s samples are checked against (billing holds
        its baseline to the same)."""
        return self.worker_of(meter_id).checks[meter_id].limits
