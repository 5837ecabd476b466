"""The prepayment engine: the core service that makes a site prepaid.

Started by the runtime (the composition root) when the site has a database. It runs:

- **metering** (`core.metering`): Good samples → rating → usage postings → fee control,
  batched every `post_interval_s` and billed off the event loop;
- the **command executor** (`core.executor`): durable TRIP/CLOSE/VALVE_*/RECHARGE commands
  from the database to the devices, confirmed by read-back, retried, resumed after a
  restart;
- **deferred trips**: a trip the policy gate deferred (quiet hours, weekend, notice period,
  rate limit) is asked again at its instant;
- **reconciliation** of LOCAL meters (domain.md §5.6): the meter's purchase count and
  remaining amount against the platform's (`ReconciliationBreak` beyond the tolerance);
- the **notification dispatcher** (`core.notifications`): the outbox through the notifier
  plugins.

It also owns the site's `Operations` (`runtime.operations`), the service functions the CLI
and the OPC UA server call.

`[prepay.engine]` in the site file::

    [prepay.engine]
    default_tariffs = { electric = "residential", water = "water" }  # accounts without one
    post_interval_s = 1.0        # how often collected samples are billed
    persist_s = 60               # a meter's baseline and consumption are saved at least
                                 # this often (at once whenever there are fen to post)
    queue_poll_s = 0.25          # how often the command queue is read (≤ 0.5)
    command_attempts = 8         # then FAILED, with a CommandFailed event
    retry_initial_s = 5          # back-off after a failed attempt, doubled ...
    retry_max_s = 600            # ... up to this
    command_lease_s = 30         # a claim of a dead instance is taken over after this
    instance = ""                # this instance's name (default host:site); keep it stable
    deferral_poll_s = 5          # how often deferred trips are looked at
    reconcile_tolerance = "1.00" # LOCAL meters: CNY the meter may differ from the platform
    reconcile_every_s = 60       # LOCAL meters: how often they are compared
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from . import commands as cmds
from .db import Database
from .db import schema as t
from .errors import ConfigError, FieldError
from .events import EventBus, ReconciliationBreak, utcnow
from .executor import CommandExecutor
from .feecontrol import read_cny
from .metering import FlushReport, Metering, run_flushes
from .model import DeviceModel, Quality, Sample
from .notifications import NotificationDispatcher, NotifySettings, check_notify, load_notify
from .operations import Operations
from .prepay_settings import PrepaySettings, check_prepay, load_prepay
from .prepayment import Effects, PrepayControl
from .site import ControlMode, Site
from .tariffs import Commodity, TariffCatalogue, check_tariffs, load_tariffs
from .validation import TableReader

if TYPE_CHECKING:
    from .contracts import Notifier

log = logging.getLogger("openprepay.engine")


@dataclass(frozen=True, slots=True)
class EngineSettings:
    default_tariffs: Mapping[str, str] = field(default_factory=dict)
    post_interval_s: float = 1.0
    persist_s: float = 60.0
    queue_poll_s: float = 0.25
    command_attempts: int = 8
    retry_initial_s: float = 5.0
    retry_max_s: float = 600.0
    command_lease_s: float = 30.0
    instance: str = ""
    deferral_poll_s: float = 5.0
    reconcile_tolerance_fen: int = 100
    reconcile_every_s: float = 60.0

    def instance_name(self, site: Site) -> str:
        return self.instance or f"{socket.gethostname()}:{site.id}"


def parse_engine(
    site: Site, errors: list[FieldError], catalogue: TariffCatalogue | None
) -> EngineSettings:
    prepay = site.sections.get("prepay", {}) or {}
    data = prepay.get("engine", {}) if isinstance(prepay, dict) else {}
    r = TableReader(data if isinstance(data, dict) else {}, "prepay.engine", errors)
    if not isinstance(data, dict):
        r.error("expected a table")
    d = EngineSettings()
    defaults: dict[str, str] = {}
    tr = r.table("default_tariffs")
    for kind in ("electric", "water"):
        tariff_id = tr.str(kind, None)
        if tariff_id is None:
            continue
        if catalogue is not None:
            if tariff_id not in catalogue:
                known = ", ".join(sorted(x.id for x in catalogue)) or "none defined"
                tr.error(f"unknown tariff {tariff_id!r} (tariffs: {known})", kind)
                continue
            want = Commodity.WATER if kind == "water" else Commodity.ELECTRICITY
            if catalogue.get(tariff_id).commodity is not want:
                tr.error(f"tariff {tariff_id!r} does not price {want.value}", kind)
                continue
        defaults[kind] = tariff_id
    tr.finish()
    post = r.number("post_interval_s", d.post_interval_s, low=0.05, high=60)
    persist = r.number("persist_s", d.persist_s, low=0, high=3600)
    poll = r.number("queue_poll_s", d.queue_poll_s, low=0.01, high=0.5)
    attempts = r.int("command_attempts", d.command_attempts, low=1, high=1000)
    initial = r.number("retry_initial_s", d.retry_initial_s, low=0.01, high=3600)
    maximum = r.number("retry_max_s", d.retry_max_s, low=0.01, high=86400)
    lease = r.number("command_lease_s", d.command_lease_s, low=1, high=3600)
    instance = r.str("instance", d.instance)
    deferral = r.number("deferral_poll_s", d.deferral_poll_s, low=0.05, high=3600)
    tolerance = read_cny(r, "reconcile_tolerance", d.reconcile_tolerance_fen)
    every = r.number("reconcile_every_s", d.reconcile_every_s, low=0, high=86400)
    r.finish()
    if instance is not None and len(instance) > 80:
        r.error("at most 80 characters", "instance")
    if initial is not None and maximum is not None and maximum < initial:
        r.error(f"must be at least retry_initial_s ({initial})", "retry_max_s")
    return EngineSettings(
        defaults,
        post if post is not None else d.post_interval_s,
        persist if persist is not None else d.persist_s,
        poll if poll is not None else d.queue_poll_s,
        attempts if attempts is not None else d.command_attempts,
        initial if initial is not None else d.retry_initial_s,
        maximum if maximum is not None else d.retry_max_s,
        lease if lease is not None else d.command_lease_s,
        instance or "",
        deferral if deferral is not None else d.deferral_poll_s,
        tolerance if tolerance is not None else d.reconcile_tolerance_fen,
        every if every is not None else d.reconcile_every_s,
    )


def check_prepayment_sections(site: Site) -> list[FieldError]:
    """Every problem of `[tariffs]`, `[prepay]` (rating, policy, engine) and `[notify]`:
    what `openprepay check` and the runtime report before anything starts."""
    errors = list(check_tariffs(site))
    errors.extend(check_prepay(site))
    errors.extend(check_notify(site))
    catalogue = None
    if not any(e.path.startswith("tariffs") for e in errors):
        catalogue = load_tariffs(site)
    parse_engine(site, errors, catalogue)
    return errors


def load_engine(site: Site, catalogue: TariffCatalogue) -> EngineSettings:
    errors: list[FieldError] = []
    settings = parse_engine(site, errors, catalogue)
    if errors:
        raise ConfigError(str(site.path or "site"), errors)
    return settings


# -- reconciliation of LOCAL meters -------------------------------------------------------------


class Reconciler:
    """Compares LOCAL meters with the platform (domain.md §5.6), at most every
    `every_s` per meter, and raises `ReconciliationBreak` when they disagree."""

    def __init__(
        self, site: Site, models: Mapping[str, DeviceModel], db: Database, settings: EngineSettings
    ) -> None:
        self.db = db
        self.tolerance_fen = settings.reconcile_tolerance_fen
        self.every_s = settings.reconcile_every_s
        self.meters = {
            d.id
            for d in site.devices.values()
            if d.control_mode is ControlMode.LOCAL
            and (m := models.get(d.model)) is not None
            and {"remaining_amount", "buy_count"} <= {p.name for p in m.points}
        }
        self._last: dict[str, float] = {}
        self._pending: dict[str, Sample] = {}
        self._flagged: dict[str, tuple[int, int]] = {}

    def on_sample(self, sample: Sample) -> None:
        if sample.source not in self.meters or sample.quality is not Quality.GOOD:
            return
        if any(
            p not in sample.values or not sample.quality_of(p).is_good
            for p in ("remaining_amount", "buy_count")
        ):
            return
        at = sample.read_at.timestamp()
        if at - self._last.get(sample.source, -1e18) < self.every_s:
            return
        self._last[sample.source] = at
        self._pending[sample.source] = sample

    def take(self) -> dict[str, Sample]:
        batch, self._pending = self._pending, {}
        return batch

    def check(self, batch: Mapping[str, Sample]) -> list[ReconciliationBreak]:
        out = []
        if not batch:
            return out
        with self.db.read() as conn:
            for meter_id, sample in batch.items():
                event = self._check_one(conn, meter_id, sample)
                if event is not None:
                    out.append(event)
        return out

    def _check_one(self, conn: Any, meter_id: str, sample: Sample) -> ReconciliationBreak | None:
        row = conn.execute(
            sa.select(
                t.account_meter.c.account_id,
                t.meter.c.buy_count,
                t.meter.c.confirmed_buy_count,
            )
            .join(t.meter, t.meter.c.id == t.account_meter.c.meter_id)
            .where(
                t.account_meter.c.meter_id == meter_id,
                t.account_meter.c.detached_at.is_(None),
                t.account_meter.c.control_mode == ControlMode.LOCAL.value,
            )
        ).first()
        if row is None:
            return None
        in_flight = conn.execute(
            sa.select(sa.func.count()).where(
                t.meter_command.c.meter_id == meter_id,
                t.meter_command.c.kind.in_(
                    [cmds.CommandKind.RECHARGE.value, cmds.CommandKind.REFUND.value]
                ),
                t.meter_command.c.state.in_([s.value for s in cmds.UNFINISHED]),
            )
        ).scalar()
        if in_flight:
            return None  # a delivery is on its way: compare once it is confirmed
        wallet = int(
            conn.execute(
                sa.select(t.wallet.c.balance_fen).where(
                    t.wallet.c.account_id == row.account_id, t.wallet.c.kind == "energy"
                )
            ).scalar()
            or 0
        )
        try:
            meter_fen = int(Decimal(repr(float(sample.values["remaining_amount"]))).scaleb(2))
            meter_count = int(sample.values["buy_count"])
        except (InvalidOperation, ValueError, TypeError):
            return None
        problems = []
        if meter_count != int(row.confirmed_buy_count) or meter_count != int(row.buy_count):
            problems.append(
                f"purchase count: meter {meter_count}, platform {row.buy_count} "
                f"(confirmed {row.confirmed_buy_count})"
            )
        if abs(meter_fen - wallet) > self.tolerance_fen:
            problems.append(
                f"balance: meter {meter_fen / 100:.2f}, platform {wallet / 100:.2f} "
                f"(tolerance {self.tolerance_fen / 100:.2f})"
            )
        if not problems:
            self._flagged.pop(meter_id, None)
            return None
        key = (meter_count, meter_fen // max(self.tolerance_fen, 1))
        if self._flagged.get(meter_id) == key:
            return None
        self._flagged[meter_id] = key
        detail = "; ".join(problems) + "; the meter's balance wins for fee control"
        log.warning("meter %s does not reconcile: %s", meter_id, detail)
        return ReconciliationBreak(
            meter_id,
            row.account_id,
            meter_fen,
            wallet,
            meter_count,
            int(row.buy_count),
            detail,
        )


# -- the service -------------------------------------------------------------------------------


class PrepayEngine:
    """Metering, command execution, deferred trips, reconciliation and notices of a site."""

    name = "prepay-engine"

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
        self.db = db
        self.bus = bus
        self.clock = clock
        self.catalogue = catalogue or load_tariffs(site)
        self.prepay = prepay or load_prepay(site)
        self.notify = notify or load_notify(site)
        self.settings = engine or load_engine(site, self.catalogue)
        self.control = PrepayControl(site, models, self.prepay, self.notify)
        self.operations = Operations(
            site,
            db,
            bus,
            models=models,
            settings=self.prepay,
            catalogue=self.catalogue,
            control=self.control,
            clock=clock,
        )
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
        self.operations.unsaved_energy = self.metering.unsaved_energy
        self.reconciler = Reconciler(site, models, db, self.settings)
        meters = set(site.devices)
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
        self.operations.committed.append(self._committed)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self.flushes = 0

    @classmethod
    def for_runtime(cls, runtime: Any) -> PrepayEngine:
        return cls(
            runtime.site,
            runtime.plugins.models,
            runtime.db,
            runtime.bus,
            runtime.arbiter,
            notifiers=runtime.plugins.notifiers(runtime.site),
        )

    async def start(self) -> None:
        self._stop.clear()
        self.operations.loop = asyncio.get_running_loop()
        self._unsubscribe = [
            self.bus.subscribe(Sample, self.metering.on_sample),
            self.bus.subscribe(Sample, self.reconciler.on_sample),
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
            asyncio.create_task(self._deferrals(), name="deferred-trips"),
        ]
        log.info(
            "prepayment engine running: %d billing meters, %d LOCAL meters reconciled, "
            "notifiers: %s",
            len(self.metering.layouts),
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
    def _committed(self, effects: Effects) -> None:
        if effects.commands:
            self.executor.wake()
        if effects.notices:
            self.dispatcher.wake()

    def _published(self, report: FlushReport) -> None:
        self.flushes += 1
        for event in report.effects.events:
            self.bus.publish(event)
        for sample in report.samples:
            self.bus.publish(sample)
        self._committed(report.effects)

    # -- deferred trips and reconciliation ------------------------------------------------
    async def _deferrals(self) -> None:
        while not self._stop.is_set():
            try:
                effects = await asyncio.to_thread(self._due_trips)
                for event in effects.events:
                    self.bus.publish(event)
                self._committed(effects)
                events = await asyncio.to_thread(self.reconciler.check, self.reconciler.take())
                for event in events:
                    self.bus.publish(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("deferred trips / reconciliation failed")
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.deferral_poll_s)
            except TimeoutError:
                pass

    def _due_trips(self) -> Effects:
        effects = Effects()
        now = self.clock()
        with self.db.read() as conn:
            due = self.control.due_deferrals(conn, now)
        for account_id in due:
            with self.db.begin() as conn:
                self.control.reevaluate(conn, account_id, effects=effects, now=now)
        return effects
