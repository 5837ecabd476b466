"""The billing service the runtime starts, and `Billing`, the calls behind it.

`Billing` bundles a site's billing settings with apportionment, charges and bills;
`month_end(period)` is what runs after each freeze instant (and what `openprepay billing
month-end` and the benchmark run): every pool, every charge due in the period, and the
drafts of the post-paid bills, each step idempotent.

`BillingService` (a core service, started by the runtime after the prepayment engine):

- captures the registers of the pool and POSTPAID meters at each capture instant
  (`readings.ReadingCapture`), saving them every `reading_flush_s` and when it stops;
- runs the **month-end** of a period `run_delay_h` after it ended (D+1 by default), once
  per period across instances (the `billing_cycle` row is claimed with a lease), for
  periods the service has seen (so installing it mid-month never bills the months before);
  FAULT and HELD pools raise an `ApportionmentAlert`;
- runs due **batch jobs** (`batch.Batches`), claimed with a lease, resumed after a restart;
  with [cluster] month-end and batch jobs run on the jobs leader only (`leading`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..cluster import lease
from ..cluster.leader import run_resumable
from ..cluster.lease import Fence
from ..config.site import Site
from ..db import Database
from ..db import schema as t
from ..db.bounded import READINGS_ROWS, write_in_chunks
from ..errors import CommandFenced, RequestError
from ..events import ApportionmentAlert, EventBus, MonthEndHeld, publish_on_loop, utcnow
from ..ledger import insert_ignore
from ..model import DeviceModel, Sample
from ..prepay.effects import Effects
from ..prepay.engine_settings import load_engine
from ..prepay.settings import PrepaySettings, load_prepay
from ..rating.tariff_reading import load_tariffs
from ..rating.tariffs import TariffCatalogue
from .apportion import Apportionment
from .batch import Batches
from .bills import Bills
from .charges import Charges
from .closing import PeriodCheck, check_period, postpaid_meters, require_closable
from .periods import Calendar
from .readings import ReadingCapture, save_captured
from .runs import Computed, RunResult, RunState
from .settings import BillingSettings, load_billing

log = logging.getLogger("openprepay.billing")

MONTH_END = "month-end"


@dataclass(slots=True)
class MonthEndReport:
    period: str
    pools: list[RunResult | Computed] = field(default_factory=list)
    charges: list[RunResult | Computed] = field(default_factory=list)
    drafts: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    #: The audit event of an override that let the month-end close the period early.
    overridden: list[Any] = field(default_factory=list)

    def alerts(self) -> list[ApportionmentAlert]:
        out = []
        for r in self.pools:
            if isinstance(r, RunResult) and r.unchanged:
                continue
            if r.state in (RunState.FAULT.value, RunState.HELD.value):
                source = r.source.removeprefix("pool:")
                out.append(ApportionmentAlert(source, r.period, str(r.state), r.reason))
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "pools": {r.source: str(r.state) for r in self.pools},
            "charges": {r.source: str(r.state) for r in self.charges},
            "drafts": self.drafts,
        }


class Billing:
    """A site's billing: apportionment, charges and bills with their settings."""

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        *,
        settings: BillingSettings | None = None,
        prepay: PrepaySettings | None = None,
        catalogue: TariffCatalogue | None = None,
        default_tariffs: Mapping[str, str] | None = None,
    ) -> None:
        self.site = site
        self.models = models
        self.settings = settings or load_billing(site, models)
        self.prepay = prepay or load_prepay(site)
        self.catalogue = catalogue or load_tariffs(site)
        if default_tariffs is None:
            default_tariffs = load_engine(site, self.catalogue).default_tariffs
        self.calendar = Calendar(site.info.tz, self.settings.freeze_day, self.settings.freeze_hour)
        rounding = self.prepay.rounding
        self.apportionment = Apportionment(site, models, self.settings, rounding=rounding)
        self.charges = Charges(site, self.settings, rounding=rounding)
        self.bills = Bills(
            site, models, self.settings, self.prepay, self.catalogue, default_tariffs
        )

    #: The steps of `month_end`, in order (what a progress display counts).
    MONTH_END_STEPS = ("apportionment", "charges", "drafts")

    def period_check(
        self,
        conn: Connection,
        period: str,
        *,
        now: dt.datetime,
        pools: Sequence[str] | None = None,
        drafts: bool = True,
        accounts: Sequence[str] | None = None,
    ) -> PeriodCheck:
        """Whether `period` may be closed at `now` (core/billing/closing.py) for the meters
        a step bills: those of `pools` (all pools when None, none when empty) and, with
        `drafts`, the POSTPAID meters (of `accounts`)."""
        meters: set[str] = set()
        if self.settings.apportionment:
            chosen = list(self.settings.pools) if pools is None else list(pools)
            meters.update(m for p in chosen for m in self.apportionment.pool(p).meters)
        if drafts:
            meters.update(postpaid_meters(conn, accounts))
        max_age = dt.timedelta(seconds=self.settings.reading_max_age_s)
        return check_period(conn, self.calendar, period, meters, now=now, max_age=max_age)

    def require_closable(
        self,
        conn: Connection,
        period: str,
        step: str,
        *,
        now: dt.datetime,
        actor: str,
        override: str | None = None,
        pools: Sequence[str] | None = None,
        drafts: bool = True,
        accounts: Sequence[str] | None = None,
    ) -> Effects:
        """Refuse `step` of a period that has not ended or lacks freeze readings, unless
        `override` says why (audited in `conn`'s transaction; the effects carry the audit
        event)."""
        check = self.period_check(
            conn, period, now=now, pools=pools, drafts=drafts, accounts=accounts
        )
        return require_closable(conn, check, step=step, override=override, actor=actor, now=now)

    def month_end(
        self,
        db: Database,
        period: str,
        *,
        actor: str,
        now: dt.datetime | None = None,
        progress: Callable[[str, int], None] | None = None,
        override: str | None = None,
    ) -> MonthEndReport:
        """Apportionment, charges and post-paid drafts of `period` (each idempotent; each
        step its own transaction). Refused, before anything is written, for a period that
        has not ended or lacks freeze readings, unless `override` says why (audited).
        `progress(step, steps_done)` is called before each step and once at the end (step
        "done")."""
        import time

        now = now or utcnow()
        report = MonthEndReport(period)
        steps = self.month_end_steps(period, report, actor=actor, now=now, override=override)
        for done, (name, run) in enumerate(steps):
            if progress is not None:
                progress(name, done)
            started = time.perf_counter()
            # Each step is idempotent: one that found the database busy is run again whole.
            db.write(run, what=f"month-end {period} {name}")
            report.timings[f"{name}_s"] = time.perf_counter() - started
        if progress is not None:
            progress("done", len(steps))
        return report

    def month_end_steps(
        self,
        period: str,
        report: MonthEndReport,
        *,
        actor: str,
        now: dt.datetime,
        override: str | None = None,
    ) -> list[tuple[str, Callable[[Connection], None]]]:
        """The month-end of `period` as steps, each one transaction that fills `report`
        (with [cluster] the jobs leader runs them resumably: core/cluster/leader.py)."""

        def apportionment(conn: Connection) -> None:
            report.overridden = self.require_closable(
                conn, period, "month-end", now=now, actor=actor, override=override
            ).events
            report.pools = self.apportionment.run(conn, period, actor=actor, now=now)

        def charges(conn: Connection) -> None:
            report.charges = self.charges.run(conn, period, actor=actor, now=now)

        def drafts(conn: Connection) -> None:
            report.drafts = len(self.bills.draft(conn, period, now=now))

        return [("apportionment", apportionment), ("charges", charges), ("drafts", drafts)]


class BillingService:
    """See the module docstring."""

    name = "billing"

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        db: Database,
        bus: EventBus,
        operations: Any,
        *,
        billing: Billing | None = None,
        instance: str | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.site = site
        self.models = models
        self.db = db
        self.bus = bus
        self.clock = clock
        self.billing = billing or Billing(
            site,
            models,
            prepay=getattr(operations, "settings", None),
            catalogue=getattr(operations, "catalogue", None),
        )
        self.settings = self.billing.settings
        self.calendar = self.billing.calendar
        self.instance = instance or f"{socket.gethostname()}:{site.id}:billing"
        self.capture = ReadingCapture.for_meters(
            self.calendar, site, models, self.settings.capture_meters(site, models)
        )
        self.batches = Batches(
            site,
            models,
            db,
            operations,
            owner=self.instance,
            lease_s=self.settings.batch_lease_s,
            clock=clock,
            publish=self._publish,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._wake_batches = asyncio.Event()
        self.month_ends: list[MonthEndReport] = []
        #: period → why its month-end is held (said once per reason).
        self._held: dict[str, str] = {}
        #: With [cluster]: the jobs leader's fence while this instance is the leader (else
        #: None); month-end then runs on the leader only, resumably (core/cluster/leader.py).
        self.leader: Callable[[], Fence | None] | None = None
        self.batches.guard = self.leader_guard

    def leading(self) -> bool:
        """Whether this instance runs the jobs that must run once: always without
        [cluster], only while it holds the jobs leader's lease with it."""
        return self.leader is None or self.leader() is not None

    def leader_guard(self, conn: Connection) -> None:
        """[cluster]: raise `CommandFenced` in the caller's transaction unless this
        instance holds the jobs leader's lease (checked in the database, `lease.check`)."""
        if self.leader is None:
            return
        fence = self.leader()
        if fence is None:
            raise CommandFenced(f"{self.instance} is not the jobs leader")
        lease.check(conn, fence)

    def _publish(self, item: object) -> None:
        """Publish on the service's event loop, whatever thread the call comes from (batch
        jobs run in a worker thread)."""
        publish_on_loop(self._loop, self.bus.publish, item)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        await asyncio.to_thread(self._add_postpaid_meters)
        self._unsubscribe = self.bus.subscribe(Sample, self.capture.on_sample)
        self._tasks = [
            asyncio.create_task(self._readings_loop(), name="billing-readings"),
            asyncio.create_task(self._batch_loop(), name="billing-batches"),
            asyncio.create_task(self._month_end_loop(), name="billing-month-end"),
        ]
        log.info(
            "billing running: %d pools, %d charges, %d meters captured at %02d:00 each day",
            len(self.settings.pools) if self.settings.apportionment else 0,
            len(self.settings.charges),
            len(self.capture.layouts),
            self.settings.freeze_hour,
        )

    async def stop(self) -> None:
        self._stop.set()
        self._wake_batches.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        try:
            await asyncio.to_thread(self.flush_readings)
        except Exception:
            log.exception("saving the last meter readings failed")

    def wake(self) -> None:
        """Look for due batch jobs now (a job was created in this process)."""
        self._wake_batches.set()

    def _add_postpaid_meters(self) -> None:
        """Meters attached as POSTPAID in the database (overriding the site file) are
        captured too: their bills difference the same readings. Looked up at start and
        before every flush, so an account opened while the service runs (by the CLI, in
        another process) is captured from its first sample on."""
        from ..rating.errors import RatingError
        from ..rating.layout import RegisterLayout

        with self.db.read() as conn:
            meters = conn.execute(
                sa.select(t.account_meter.c.meter_id).where(
                    t.account_meter.c.detached_at.is_(None),
                    t.account_meter.c.control_mode == "POSTPAID",
                )
            ).scalars()
            for meter in meters:
                device = self.site.devices.get(meter)
                model = self.models.get(device.model) if device is not None else None
                if model is None or meter in self.capture.layouts:
                    continue
                try:
                    self.capture.layouts[meter] = RegisterLayout.from_model(model)
                except RatingError:
                    continue
                if self._tasks:  # not the first look at start
                    log.info(
                        "billing: POSTPAID meter %s captured from now on",
                        meter,
                        extra={"meter": meter},
                    )

    # -- readings --------------------------------------------------------------------------
    def flush_readings(self, *, periodic: bool = False) -> int:
        """Save the captured readings: all of them, or (`periodic`) the final ones and the
        provisional ones due (`readings.PROVISIONAL_SAVE_S`)."""
        taken = self.capture.take(self.clock() if periodic else None)
        if not taken:
            return 0
        readings = list(self.capture.readings(taken))
        now = self.clock()
        try:
            # Bounded transactions, each waiting out a busy database (core/db/bounded.py).
            saved = write_in_chunks(
                self.db,
                readings,
                READINGS_ROWS,
                lambda conn, part: save_captured(conn, part, now=now),
                what="saving captured meter readings",
            )
        except Exception:
            self.capture.restore(taken)  # re-saving a part is an idempotent upsert
            raise
        self.capture.saved(taken)
        return sum(saved)

    async def _readings_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.reading_flush_s)
            except TimeoutError:
                pass
            if self._stop.is_set():
                return
            try:
                await asyncio.to_thread(self._add_postpaid_meters)
                await asyncio.to_thread(self.flush_readings, periodic=True)
            except Exception:
                log.exception("saving meter readings failed; kept for the next flush")

    # -- batch jobs ------------------------------------------------------------------------
    async def _batch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.run_batches)
            except Exception:
                log.exception("running batch jobs failed")
            self._wake_batches.clear()
            try:
                await asyncio.wait_for(self._wake_batches.wait(), self.settings.batch_poll_s)
            except TimeoutError:
                pass

    def run_batches(self) -> list[Any]:
        """Follow, claim and run the due batch jobs: with [cluster] on the jobs leader only,
        stopping between items once its lease is gone (the next leader resumes the job at
        its first item not done)."""
        if not self.leading():
            return []
        return self.batches.run_due(stop=lambda: self._stop.is_set() or not self.leading())

    # -- month-end -------------------------------------------------------------------------
    def _seen(self, now: dt.datetime) -> None:
        """Remember that the service ran during the current period."""
        period = self.calendar.period_of(now)
        self.db.write(
            lambda conn: conn.execute(
                insert_ignore(conn, t.billing_cycle),
                {"period": period, "state": "OPEN", "summary": {}, "started_at": now},
            ),
            what="noting the billing period",
            stop=self._stop,
        )

    def month_end_due(self, now: dt.datetime) -> str | None:
        """The period whose month-end this instance should run now, claimed, or None."""
        period = self.calendar.previous(self.calendar.period_of(now))
        _, end = self.calendar.bounds(period)
        if now < end + dt.timedelta(hours=self.settings.run_delay_h):
            return None
        leading = self.leader is not None and self.leader() is not None
        if self.leader is not None and not leading:
            return None  # [cluster]: the jobs leader runs it
        c = t.billing_cycle

        def claim(conn: Connection) -> str | None:
            row = conn.execute(
                sa.select(c).where(c.c.period == period).with_for_update(skip_locked=True)
            ).first()
            if row is None or row.state == "DONE":
                return None
            # [cluster]: a run another instance started as leader is this leader's now (the
            # other lost the lease: the database refuses its steps).
            taken_over = leading and row.claimed_by != self.instance[:100]
            running = row.state == "RUNNING" and row.lease_until and row.lease_until > now
            if running and not taken_over:
                return None
            conn.execute(
                c.update()
                .where(c.c.period == period)
                .values(
                    state="RUNNING",
                    claimed_by=self.instance[:100],
                    lease_until=now + dt.timedelta(hours=1),
                )
            )
            return period

        return self.db.write(claim, what=f"claiming month-end {period}", stop=self._stop)

    def run_month_end(self, period: str) -> MonthEndReport | None:
        """The month-end of a claimed `period`; None when it is held (freeze readings
        missing or stale: an operator records them, or runs it with an override), in which
        case the cycle is HELD with the reason and retried at the next look."""
        now = self.clock()
        try:
            if self.leader is not None:
                report = MonthEndReport(period)
                steps = self.billing.month_end_steps(period, report, actor=MONTH_END, now=now)
                run_resumable(self.db, self.leader, f"month-end:{period}", steps)
            else:
                report = self.billing.month_end(self.db, period, actor=MONTH_END, now=now)
        except RequestError as refused:
            self._hold(period, refused.message)
            return None
        except CommandFenced as exc:
            log.warning("month-end of %s stopped: %s", period, exc)
            return None
        self.db.write(
            lambda conn: conn.execute(
                t.billing_cycle.update()
                .where(t.billing_cycle.c.period == period)
                .values(
                    state="DONE",
                    lease_until=None,
                    summary=report.summary(),
                    finished_at=self.clock(),
                )
            ),
            what=f"month-end {period} done",
        )
        self.month_ends.append(report)
        return report

    def _hold(self, period: str, reason: str) -> None:
        self.db.write(
            lambda conn: conn.execute(
                t.billing_cycle.update()
                .where(t.billing_cycle.c.period == period)
                .values(state="HELD", lease_until=None, summary={"held": reason})
            ),
            what=f"holding month-end {period}",
        )
        if self._held.get(period) != reason:  # said once, not at every look
            self._held[period] = reason
            log.warning("month-end of %s held: %s", period, reason, extra={"period": period})
            self._publish(MonthEndHeld(period, reason))

    async def _month_end_loop(self) -> None:
        while not self._stop.is_set():
            try:
                now = self.clock()
                await asyncio.to_thread(self._seen, now)
                period = await asyncio.to_thread(self.month_end_due, now)
                if period is not None:
                    await asyncio.to_thread(self.flush_readings)
                    report = await asyncio.to_thread(self.run_month_end, period)
                    if report is not None:  # a held one was said once, by _hold
                        log.info("month-end of %s done: %s", period, report.summary())
                    for alert in report.alerts() if report is not None else ():
                        log.warning(
                            "common area %s %s %s: %s",
                            alert.pool_id,
                            alert.period,
                            alert.state,
                            alert.reason,
                        )
                        self.bus.publish(alert)
            except Exception:
                log.exception("month-end failed; retried later")
            try:
                await asyncio.wait_for(self._stop.wait(), self.settings.month_end_poll_s)
            except TimeoutError:
                pass
