"""The running site: the one place that wires a running OpenPrepay.

`Runtime(site, plugins)` builds the link arbiter (a transport per link, a driver per
device, both from plugins) and the event bus; `start()` opens the database, builds the core
services from the composition root (`core.app.services.running_services`: the door, the
prepayment engine, billing, the event-outbox tail) and the services plugins contribute
(OPC UA server, historian...), and starts and stops them in order. The CLI's `run` and
`demo` commands and the tests all go through it; nothing else constructs these singletons.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..billing.service import BillingService
from ..billing.settings import check_billing
from ..cluster.manager import LinkLeases
from ..cluster.settings import ClusterSettings, read_cluster
from ..config.site import Site, check_devices_against_models
from ..contracts import Service
from ..db import Database, open_database, read_database_config
from ..errors import ConfigError
from ..events import EventBus
from ..field.arbiter import LinkArbiter, LinkWorker
from ..field.history import HistoryReader
from ..field.latest import LatestReadings
from ..field.plausibility import check_device_limits
from ..model import DeviceModel
from ..operations import Operations
from ..payments.service import PaymentService
from ..payments.settings import check_payments
from ..prepay.engine import PrepayEngine
from ..prepay.site_check import check_prepayment_sections
from ..tasks import finish_within
from .plugins import Plugins
from .services import running_services
from .vitals import Vitals

log = logging.getLogger("openprepay.runtime")

#: `Runtime.stop()` ends within this many seconds, whatever a service or a device does:
#: the service, `demo --duration`, `read` and the device commands exit within 5 s.
STOP_DEADLINE_S = 4.0

#: The interpreter's thread switch interval while a runtime with the door runs (CPython's
#: default is 5 ms). The group-commit thread releases the GIL for every SQLite statement
#: (about a dozen per top-up); with the event loop and the poller busy, taking it back
#: waited up to the whole interval each time, and the one thread every durable write passes
#: through spent most of its time waiting (profiled: bare top-ups 270–320/s at 5 ms,
#: 390/s at 0.5 ms on 2 cores). Shorter slices cost the busy threads a little switching.
SWITCH_INTERVAL_S = 0.0005


def build_arbiter(site: Site, plugins: Plugins, bus: EventBus) -> LinkArbiter:
    workers = {}
    for link in site.links.values():
        devices = site.devices_on(link.id)
        transport = plugins.make_transport(link)
        drivers = {
            d.id: plugins.make_driver(plugins.model(d.model, f"devices.{d.id}.model"), d, transport)
            for d in devices
        }
        intervals = {d.id: site.poll_interval(d) for d in devices}
        workers[link.id] = LinkWorker(link, transport, drivers, site.poll, intervals, bus.publish)
    return LinkArbiter(workers)


def _owner_check(runtime: Runtime, link_id: str) -> Callable[[], bool]:
    """The link worker's guard: does this instance still own `link_id`?"""

    def owned() -> bool:
        return runtime.cluster is not None and runtime.cluster.owns(link_id)

    return owned


def _lease_info(runtime: Runtime, link_id: str) -> Callable[[], tuple[int, float]]:
    """The link's lease epoch and seconds left, for its statistics points."""

    def info() -> tuple[int, float]:
        if runtime.cluster is None or not runtime.cluster.owns(link_id):
            return 0, 0.0
        return runtime.cluster.epoch(link_id), runtime.cluster.left_s(link_id)

    return info


def _fence_metering(cluster: LinkLeases, metering: Any, site: Site) -> None:
    """[cluster]: metering writes only under the current lease of each meter's link, and
    forgets what it held for the meters of a link given up."""
    link_of = {d.id: d.link for d in site.devices.values()}
    meters_of: dict[str, list[str]] = {}
    for meter_id, link_id in link_of.items():
        meters_of.setdefault(link_id, []).append(meter_id)
    metering.guard = lambda conn, meters: cluster.guard_meters(conn, link_of, meters)
    cluster.on_give_up.append(lambda link_id: metering.forget(meters_of.get(link_id, ())))


class Runtime:
    def __init__(self, site: Site, plugins: Plugins, bus: EventBus | None = None) -> None:
        check_devices_against_models(site, plugins.models)
        plugins.validate_site(site)
        self.site = site
        self.plugins = plugins
        self.bus = bus or EventBus()
        self.readings = LatestReadings(self.bus)
        self.arbiter = build_arbiter(site, plugins, self.bus)
        self.services: list[Service] = []
        #: Event-loop lag, collector pauses, CPU and memory of this process (a service of
        #: its own, started first and stopped last).
        self.vitals = Vitals(self.bus, site.poll.stats_interval_s, site.poll.full_collection_s)
        self._started: list[Service] = []
        #: The switch interval before `start` shortened it (`SWITCH_INTERVAL_S`).
        self._switch_interval: float | None = None
        #: What did not stop within its share of `STOP_DEADLINE_S` (see `stop()`).
        self.abandoned: list[str] = []
        #: Set by the historian service when it is created (see core/field/history.py).
        self.history: HistoryReader | None = None
        #: Lines for the operator at start (endpoints, demo credentials), added by services.
        self.announcements: list[str] = []
        #: The site's database (accounts, ledger, meter commands), opened and migrated to
        #: the current schema by `start()`. None for a site built in memory without a
        #: [database] section (tests, in-memory demos). The config is checked here.
        self.db: Database | None = None
        self._wants_db = site.path is not None or "database" in site.sections
        if self._wants_db:
            read_database_config(site)
        problems = check_device_limits(site, plugins.models)
        problems.extend(check_prepayment_sections(site, plugins.models))
        problems.extend(check_billing(site, plugins.models))
        problems.extend(check_payments(site))
        if problems:
            raise ConfigError(str(site.path or "site"), problems)
        #: With [cluster]: the link leases (core/cluster); links run only while owned.
        self.cluster_settings: ClusterSettings | None = read_cluster(site)
        self.cluster: LinkLeases | None = None
        if self.cluster_settings is not None:
            self.arbiter.leased = True
            for worker in self.arbiter.workers.values():
                worker.guard = _owner_check(self, worker.link.id)
                worker.lease_info = _lease_info(self, worker.link.id)
        #: With a database: the prepayment engine (metering, command executor, deferred
        #: trips, reconciliation, notices) and the door every change goes through
        #: (`core.operations.Operations`), both built by `start()` (`core.app.services`).
        self.prepay: PrepayEngine | None = None
        self.operations: Operations | None = None
        #: With a database: billing operations (meter readings at the freeze instants,
        #: month-end apportionment, charges and bills, batch jobs), built by `start()`.
        self.billing: BillingService | None = None
        #: With a database and a payment provider: online payment (core/payments/service.py).
        self.payments: PaymentService | None = None

    @property
    def models(self) -> Mapping[str, DeviceModel]:
        return self.plugins.models

    async def start(self) -> None:
        if self._wants_db and self.db is None:
            self.db = await asyncio.to_thread(open_database, self.site)
        if self.db is not None and self._switch_interval is None:
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL_S))
        services: list[Service] = []
        if self.db is not None:
            core = running_services(
                self.site,
                self.models,
                self.db,
                self.bus,
                self.arbiter,
                notifiers=self.plugins.notifiers(self.site),
                providers=self.plugins.payment_providers(self.site),
            )
            core.operations.loop = asyncio.get_running_loop()
            self.prepay, self.operations, self.billing, self.payments = (
                core.engine,
                core.operations,
                core.billing_service,
                core.payments,
            )
            if self.cluster_settings is not None:
                self.cluster = LinkLeases(
                    self.cluster_settings,
                    self.db,
                    self.arbiter,
                    self.bus.publish,
                    list(self.site.links),
                )
                executor = core.engine.executor
                executor.use_fences(
                    self.cluster.fences,
                    {
                        link_id: [d.id for d in self.site.devices_on(link_id)]
                        for link_id in self.site.links
                    },
                    self.cluster_settings.instance_id,
                )
                self.cluster.on_change.append(executor.wake)
                # The jobs that must run once run on the jobs leader only (docs/cluster.md).
                core.billing_service.leader = self.cluster.leader_fence
                if core.payments is not None:
                    core.payments.leader = self.cluster.leader_fence
                if core.outbox is not None:
                    core.outbox.leader = self.cluster.leader_fence
                _fence_metering(self.cluster, core.engine.metering, self.site)
                core.billing_service.instance = f"{self.cluster_settings.instance_id}:billing"
                # First in, last out: links are given up after everything else stopped.
                services.insert(0, self.cluster)
            services.extend(core.loops())
        self.services = [self.vitals, *services, *self.plugins.services(self)]
        # Start-up builds millions of long-lived objects (the OPC UA address space, the
        # per-meter state): collecting while it does walked them again and again (pauses
        # of seconds at 4k meters). `settle_heap` freezes it all at the end instead.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for service in self.services:
                log.info("starting %s", service.name)
                await service.start()
                self._started.append(service)
            await self.arbiter.start()
        except BaseException:
            if collecting:
                gc.enable()
            await self.stop()
            raise
        self.vitals.settle_heap()
        if collecting:
            gc.enable()
        if self.cluster is not None:
            self.cluster.begin_taking()  # the loop is free of start-up's stalls now
        log.info(
            "site %s running: %d links, %d devices",
            self.site.id,
            len(self.site.links),
            len(self.site.devices),
        )

    async def stop(self) -> None:
        """Stop the links, then every started service in reverse order, within
        `STOP_DEADLINE_S` in all: each gets a share of the time left in proportion to its
        `stop_weight` (default 1; what a quick one leaves over goes to the ones after it), so
        the historian's last commit is not cut for a web server's sake; one that overruns is
        cancelled and, if even that does not end it, abandoned (named in `abandoned` and
        logged) so that stopping always ends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_DEADLINE_S
        steps: list[tuple[str, Callable[[], Awaitable[None]], float]] = [
            ("links", self.arbiter.stop, 1.0)
        ]
        while self._started:
            service = self._started.pop()
            steps.append((service.name, service.stop, float(getattr(service, "stop_weight", 1.0))))
        weight_left = sum(weight for _, _, weight in steps)
        for name, stop, weight in steps:
            share = max(deadline - loop.time(), 0.0) * weight / weight_left
            weight_left -= weight
            if not await finish_within(stop(), share, what=name, log=log):
                self.abandoned.append(name)
        if self.db is not None:
            self.db.dispose()
            self.db = None
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None

    async def __aenter__(self) -> Runtime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
