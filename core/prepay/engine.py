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
    supply_grace_s = 30          # a meter may read another supply state than decided this
                                 # long (its own readings) before the decision is re-asserted
    supply_backoff_max_s = 3600  # the n-th re-assertion in a row waits grace × 2^n, at most this
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

from ..config.reader import TableReader
from ..config.site import ControlMode, Site
from ..db import Database
from ..db import schema as t
from ..errors import ConfigError, DeviceIOError, FieldError
from ..events import CommandFailed, CommandResolved, EventBus, ReconciliationBreak, utcnow
from ..ledger import RequestError
from ..model import DeviceModel, Quality, Sample
from ..operations import Operations
from ..rating.tariff_reading import check_tariffs, load_tariffs
from ..rating.tariffs import Commodity, TariffCatalogue
from . import commands as cmds
from .accounts import account_for_meter
from .binding import TariffBinding
from .control import Effects, PrepayControl, audit
from .executor import CommandExecutor
from .feecontrol import read_cny
from .metering import FlushReport, Metering, run_flushes
from .notifications import NotificationDispatcher, NotifySettings, check_notify, load_notify
from .settings import PrepaySettings, check_prepay, load_prepay
from .supply_watch import SupplyWatch

if TYPE_CHECKING:
    from ..contracts import Notifier

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
    supply_grace_s: float = 30.0
    supply_backoff_max_s: float = 3600.0

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
    grace = r.number("supply_grace_s", d.supply_grace_s, low=0.05, high=86400)
    backoff = r.number("supply_backoff_max_s", d.supply_backoff_max_s, low=0.05, high=7 * 86400)
    r.finish()
    if instance is not None and len(instance) > 80:
        r.error("at most 80 characters", "instance")
    if initial is not None and maximum is not None and maximum < initial:
        r.error(f"must be at least retry_initial_s ({initial})", "retry_max_s")
    if grace is not None and backoff is not None and backoff < grace:
        r.error(f"must be at least supply_grace_s ({grace})", "supply_backoff_max_s")
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
        grace if grace is not None else d.supply_grace_s,
        backoff if backoff is not None else d.supply_backoff_max_s,
    )


def check_prepayment_sections(
    site: Site, models: Mapping[str, DeviceModel] | None = None
) -> list[FieldError]:
    """Every problem of `[tariffs]`, `[prepay]` (rating, policy, engine) and `[notify]`:
    what `openprepay check` and the runtime report before anything starts. With the
    `models`, also every room meter its default tariff cannot bill (a register the tariff
    has no rate for: the fix is a `registers` map)."""
    errors = list(check_tariffs(site))
    errors.extend(check_prepay(site))
    errors.extend(check_notify(site))
    catalogue = None
    if not any(e.path.startswith("tariffs") for e in errors):
        catalogue = load_tariffs(site)
    engine = parse_engine(site, errors, catalogue)
    if models is not None and catalogue is not None and not errors:
        binding = TariffBinding(site, models, catalogue, load_prepay(site), engine.default_tariffs)
        errors.extend(binding.site_problems())
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
    `every_s` per meter, and raises `ReconciliationBreak` when they disagree. A meter is
    LOCAL by its account's attachment (the site file's mode, or `account open --meter
    E3:LOCAL`): the meters attached LOCAL now are read from the database at every check,
    and the listener keeps the samples of those among the meters that report a balance
    and a purchase count."""

    def __init__(
        self, site: Site, models: Mapping[str, DeviceModel], db: Database, settings: EngineSettings
    ) -> None:
        self.db = db
        self.tolerance_fen = settings.reconcile_tolerance_fen
        self.every_s = settings.reconcile_every_s
        self.meters = {
            d.id
            for d in site.devices.values()
            if (m := models.get(d.model)) is not None
            and {"remaining_amount", "buy_count"} <= {p.name for p in m.points}
        }
        #: The meters attached LOCAL now (refreshed by `check`; replaced, never mutated).
        self.local: frozenset[str] = frozenset()
        self._last: dict[str, float] = {}
        self._pending: dict[str, Sample] = {}
        self._flagged: dict[str, tuple[int, int]] = {}

    def on_sample(self, sample: Sample) -> None:
        if sample.source not in self.local or sample.quality is not Quality.GOOD:
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
        with self.db.read() as conn:
            attached = conn.execute(
                sa.select(t.account_meter.c.meter_id).where(
                    t.account_meter.c.control_mode == ControlMode.LOCAL.value,
                    t.account_meter.c.detached_at.is_(None),
                )
            ).scalars()
            self.local = frozenset(m for m in attached if m in self.meters)
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
                t.meter.c.count_offset,
                t.meter.c.align_requested_at,
            )
            .join(t.meter, t.meter.c.id == t.account_meter.c.meter_id)
            .where(
                t.account_meter.c.meter_id == meter_id,
                t.account_meter.c.detached_at.is_(None),
                t.account_meter.c.control_mode == ControlMode.LOCAL.value,
            )
        ).first()
        if row is None or row.align_requested_at is not None:
            return None  # not LOCAL, or its count is about to be read and aligned
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
        # The platform's counts in the meter's numbering (the offset of an alignment).
        offset = int(row.count_offset)
        platform, confirmed = int(row.buy_count) - offset, int(row.confirmed_buy_count) - offset
        if meter_count != confirmed or meter_count != platform:
            problems.append(
                f"purchase count: meter {meter_count}, platform {platform} (confirmed {confirmed})"
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
            platform,
            detail,
        )


class CountAligner:
    """Reads the purchase count of LOCAL meters whose alignment was requested (attached,
    replaced, or `openprepay meter align`) ahead of routine polls and aligns the platform's
    numbering with it (`commands.align_buy_count`), audited. Until then their RECHARGE and
    REFUND commands wait; a delivery whose count is already fixed is let finish first."""

    ACTOR = "prepay-engine"

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        db: Database,
        arbiter: Any,
        *,
        timeout_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.arbiter = arbiter
        self.timeout_s = timeout_s
        self.clock = clock
        #: This instance's meters that report a purchase count, and those that do not.
        self.meters: set[str] = set()
        self.uncounted: set[str] = set()
        for d in site.devices.values():
            model = models.get(d.model)
            points = {p.name for p in model.points} if model is not None else set()
            (self.meters if "buy_count" in points else self.uncounted).add(d.id)

    def requested(self) -> list[str]:
        """This instance's meters whose count is to be read. A request for a meter whose
        model reports no purchase count is dropped (nothing to align; its deliveries go
        ahead and fail visibly if the meter cannot take them)."""
        with self.db.read() as conn:
            rows = set(
                conn.execute(
                    sa.select(t.meter.c.id).where(t.meter.c.align_requested_at.is_not(None))
                ).scalars()
            )
        dropped = sorted(rows & self.uncounted)
        if dropped:
            with self.db.begin() as conn:
                conn.execute(
                    t.meter.update()
                    .where(t.meter.c.id.in_(dropped))
                    .values(align_requested_at=None)
                )
            for meter_id in dropped:
                log.info(
                    "meter %s reports no purchase count: nothing to align",
                    meter_id,
                    extra={"meter": meter_id},
                )
        return sorted(rows & self.meters)

    async def align(self, meter_id: str) -> Effects:
        """Read the meter now and align; nothing happens when it cannot be read (the next
        round tries again)."""
        effects = Effects()
        try:
            sample = await asyncio.wait_for(self.arbiter.read_now(meter_id), self.timeout_s)
        except (DeviceIOError, TimeoutError) as exc:
            log.info(
                "meter %s: purchase count not read yet: %s",
                meter_id,
                exc,
                extra={"meter": meter_id},
            )
            return effects
        count = sample.values.get("buy_count")
        if count is None or not sample.quality_of("buy_count").is_good:
            return effects
        await asyncio.to_thread(self._align, meter_id, int(count), effects)
        return effects

    def _align(self, meter_id: str, count: int, effects: Effects) -> None:
        now = self.clock()
        try:
            with self.db.begin() as conn:
                done = cmds.align_buy_count(conn, meter_id, count, now=now)
                account = account_for_meter(conn, meter_id)
                audit(conn, effects, self.ACTOR, "align", meter_id, done.describe(), now=now)
        except RequestError as exc:
            log.info("meter %s: %s", meter_id, exc.message, extra={"meter": meter_id})
            return
        log.info(
            "meter %s: %s",
            meter_id,
            done.describe(),
            extra={"meter": meter_id, "account": account or "-"},
        )
        if account:
            effects.accounts.add(account)


class FailureWatch:
    """Raises `CommandResolved` once a FAILED RECHARGE or REFUND was retried or refunded —
    by the CLI, OPC UA or this process — so the alarms of every running service clear."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock
        #: FAILED money commands not resolved when last looked (None: not looked yet).
        self._open: set[int] | None = None
        self._failed_here: set[int] = set()

    def on_failed(self, event: CommandFailed) -> None:
        if event.command in (cmds.CommandKind.RECHARGE, cmds.CommandKind.REFUND):
            self._failed_here.add(event.command_id)

    def check(self) -> Effects:
        effects = Effects()
        with self.db.read() as conn:
            current = {c.id for c in cmds.open_failures(conn)}
            known = (self._open or set()) | self._failed_here
            self._failed_here = set()
            gone = sorted(known - current)
            for command_id in gone:
                c = cmds.get_command(conn, command_id)
                if c.resolution is None:
                    continue
                retry = conn.execute(
                    sa.select(t.meter_command.c.id).where(t.meter_command.c.retry_of == c.id)
                ).scalar()
                effects.events.append(
                    CommandResolved(
                        c.id,
                        c.meter_id,
                        c.account_id,
                        c.kind,
                        "retry" if retry is not None else "refund",
                        retry,
                        c.resolved_by or "",
                        c.resolution,
                        at=c.resolved_at or self.clock(),
                    )
                )
                if c.account_id:
                    effects.accounts.add(c.account_id)
        self._open = current
        return effects


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
        self.arbiter = arbiter
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
            default_tariffs=self.settings.default_tariffs,
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
    def _committed(self, effects: Effects) -> None:
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
        self._committed(report.effects)

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
        self._committed(effects)

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
            with self.db.begin() as conn:
                self.control.reevaluate(conn, account_id, effects=effects, now=now)
        return effects
