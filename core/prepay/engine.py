"""The prepayment engine: the core service that makes a site prepaid.

Started by the runtime (the composition root) when the site has a database. It runs:

- **metering** (`core.prepay.metering`): Good samples → rating → usage postings → fee control,
  batched every `post_interval_s` and billed off the event loop;
- the **command executor** (`core.prepay.executor`): durable TRIP/CLOSE/VALVE_*/RECHARGE commands
  from the database to the devices, confirmed by read-back, retried, resumed after a
  restart;
- **deferred trips**: a trip the policy gate deferred (quiet hours, weekend, notice period,
  rate limit) is asked again at its instant;
- the **supply watch** (`core.prepay.supply_watch`): what each meter's Good readings show against
  the supply state the platform decided; a mismatch past `supply_grace_s` re-asserts the
  decision (`SupplyMismatch`), with back-off for a meter that keeps disobeying;
- **purchase-count alignment** of LOCAL meters: when a LOCAL meter is attached or replaced,
  or an operator asks (`openprepay meter align`), the meter's own count is read and the
  platform's numbering aligned with it (audited) before any RECHARGE or REFUND is sent;
- **reconciliation** of LOCAL meters (domain.md §5.6) — whether the site file or the
  account made them LOCAL: the meter's purchase count and remaining amount against the
  platform's (`ReconciliationBreak` beyond the tolerance);
- the **notification dispatcher** (`core.prepay.notifications`): the outbox through the notifier
  plugins.

Its settings are `[prepay.engine]` (`core.prepay.engine_settings`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from ..config.site import Site
from ..db import Database
from ..events import CommandFailed, EventBus, utcnow
from ..model import DeviceModel, Sample
from ..rating.tariff_reading import load_tariffs
from ..rating.tariffs import TariffCatalogue
from .alignment import CountAligner
from .control import PrepayControl
from .effects import Effects
from .engine_settings import EngineSettings, load_engine
from .executor import CommandExecutor
from .failure_watch import FailureWatch
from .metering import FlushReport, Metering, run_flushes
from .notifications import NotificationDispatcher, NotifySettings, load_notify
from .reconcile import Reconciler
from .settings import PrepaySettings, load_prepay
from .supply_watch import SupplyWatch

log = logging.getLogger("openprepay.engine")

if TYPE_CHECKING:
    from ..contracts import Notifier


# -- the service -------------------------------------------------------------------------------


class PrepayEngine:
    """Metering, command execution, deferred trips, reconciliation and notices of a site."""

    name = "prepay-engine"
    #: Stopping flushes metering (usage not yet posted) and lets commands in hand finish.
    stop_weight = 2.0

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        db: Database,
        bus: EventBus,
        arbiter: Any,
        *,
        notifiers: list[Notifier] | None = None,
        prepay: PrepaySettings | None = None,
        catalogue: TariffCatalogue | None = None,
        notify: NotifySettings | None = None,
        engine: EngineSettings | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.site = site
        self.models = models
        self.db = db
        self.bus = bus
        self.arbiter = arbiter
        self.clock = clock
        self.catalogue = catalogue or load_tariffs(site)
        self.prepay = prepay or load_prepay(site)
        self.notify = notify or load_notify(site)
        self.settings = engine or load_engine(site, self.catalogue)
        self.control = PrepayControl(site, models, self.prepay, self.notify)
        self.metering = Metering(
            site,
            models,
            db,
            self.control,
            self.catalogue,
            self.settings.default_tariffs,
            persist_s=self.settings.persist_s,
            # Billing holds readings to the limits the arbiter checks samples against.
            limits=None if arbiter is None else {m: arbiter.limits(m) for m in site.devices},
            clock=clock,
        )
        self.reconciler = Reconciler(site, models, db, self.settings)
        meters = set(site.devices)
        self.supply_watch = SupplyWatch(
            db,
            self.control,
            {m: s for m in meters if (s := self.control.supply_of(m)) is not None},
            grace_s=self.settings.supply_grace_s,
            backoff_max_s=self.settings.supply_backoff_max_s,
            clock=clock,
        )
        self.aligner = CountAligner(
            site, models, db, arbiter, timeout_s=self.settings.command_lease_s, clock=clock
        )
        self.failures = FailureWatch(db, clock=clock)
        self.executor = CommandExecutor(
            db,
            arbiter,
            self.control,
            bus.publish,
            meters=meters,
            owner=self.settings.instance_name(site),
            poll_s=self.settings.queue_poll_s,
            lease_s=self.settings.command_lease_s,
            attempts=self.settings.command_attempts,
            retry_initial_s=self.settings.retry_initial_s,
            retry_max_s=self.settings.retry_max_s,
            clock=clock,
        )
        self.dispatcher = NotificationDispatcher(db, notifiers or [], self.notify, bus.publish)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self.flushes = 0

    async def start(self) -> None:
        self._stop.clear()
        self._unsubscribe = [
            self.bus.subscribe(Sample, self.metering.on_sample),
            self.bus.subscribe(Sample, self.reconciler.on_sample),
            self.bus.subscribe(Sample, self.supply_watch.on_sample),
            self.bus.subscribe(CommandFailed, self.failures.on_failed),
        ]
        await self.executor.start()
        await self.dispatcher.start()
        self._tasks = [
            asyncio.create_task(
                run_flushes(
                    self.metering, self.settings.post_interval_s, self._published, self._stop
                ),
                name="metering",
            ),
            asyncio.create_task(self._periodic(), name="prepay-periodic"),
        ]
        log.info(
            "prepayment engine running: %d billing meters, %d supply meters watched, %d "
            "meters with a purchase count, notifiers: %s",
            len(self.metering.layouts),
            len(self.supply_watch.meters),
            len(self.reconciler.meters),
            ", ".join(sorted(self.dispatcher.notifiers)) or "none",
        )

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            if task.get_name() != "metering":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        await self.executor.stop()
        await self.dispatcher.stop()

    # -- after commits --------------------------------------------------------------------
    def on_committed(self, effects: Effects) -> None:
        """Wake the executor and the dispatcher for what a commit queued (ours, the door's
        and, through the event outbox, other processes')."""
        if effects.commands:
            self.executor.wake()
        if effects.notices:
            self.dispatcher.wake()

    def _published(self, report: FlushReport) -> None:
        self.flushes += 1
        if self.arbiter is not None:
            # A new device starts below the old one's registers: its samples are checked
            # against its own first reading from now on, not the old device's last.
            for meter_id in report.replaced_meters:
                self.arbiter.rebase_plausibility(meter_id)
        for event in report.effects.events:
            self.bus.publish(event)
        for sample in report.samples:
            self.bus.publish(sample)
        self.on_committed(report.effects)

    # -- deferred trips, supply watch, alignment and reconciliation -------------------------
    async def _periodic(self) -> None:
        """Every `deferral_poll_s`: each job on its own, so one failing never stops the
        others."""
        jobs: list[tuple[str, Callable[[], Any]]] = [
            ("deferred trips", lambda: asyncio.to_thread(self._due_trips)),
            ("supply watch", lambda: asyncio.to_thread(self.supply_watch.check)),
            ("purchase-count alignment", self._alignments),
            ("reconciliation", self._reconcile),
            ("resolved failures", lambda: asyncio.to_thread(self.failures.check)),
        ]
        while not self._stop.is_set():
            for what, job in jobs:
                try:
                    await self._publish_effects(await job())
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s failed", what)
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.deferral_poll_s)
            except TimeoutError:
                pass

    async def _publish_effects(self, effects: Effects) -> None:
        for event in effects.events:
            self.bus.publish(event)
        if effects.accounts:
            for sample in await asyncio.to_thread(self._account_samples, effects.accounts):
                self.bus.publish(sample)
        self.on_committed(effects)

    def _account_samples(self, accounts: set[str]) -> list[Sample]:
        with self.db.read() as conn:
            return self.control.account_samples(conn, accounts, self.clock())

    async def _alignments(self) -> Effects:
        effects = Effects()
        for meter_id in await asyncio.to_thread(self.aligner.requested):
            effects.extend(await self.aligner.align(meter_id))
        return effects

    async def _reconcile(self) -> Effects:
        effects = Effects()
        effects.events.extend(
            await asyncio.to_thread(self.reconciler.check, self.reconciler.take())
        )
        return effects

    def _due_trips(self) -> Effects:
        effects = Effects()
        now = self.clock()
        with self.db.read() as conn:
            due = self.control.due_deferrals(conn, now)
        for account_id in due:

            def work(conn: Connection, account_id: str = account_id) -> Effects:
                mine = Effects()  # the effects of the attempt that commits, only
                self.control.reevaluate(conn, account_id, effects=mine, now=now)
                return mine

            effects.extend(
                self.db.write(work, what=f"deferred trips of {account_id}", stop=self._stop)
            )
        return effects
