"""The composition root of a site's core services: the one place that decides what is
built from what.

Two shapes, one set of parts:

- `command_services` — for one command (the CLI, a script, a benchmark): the door
  (`core.operations.Operations`) and the billing calculations on the site's database, and
  no loops. What a command changes reaches the running service through the event outbox.
- `running_services` — for the running service (`core.app.runtime.Runtime`): the same door,
  wired to the prepayment engine (its fee control, today's unsaved energy, its executor
  woken after every commit), the billing service, and the outbox tail that publishes what
  other processes committed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..billing.service import Billing, BillingService
from ..config.site import Site
from ..contracts import Notifier, PaymentProvider, Service
from ..db import Database
from ..events import EventBus, utcnow
from ..model import DeviceModel
from ..operations import Operations
from ..operations.outbox import OutboxTail
from ..payments.service import PaymentService
from ..prepay.engine import PrepayEngine


@dataclass
class SiteServices:
    site: Site
    models: Mapping[str, DeviceModel]
    db: Database
    bus: EventBus
    #: The door every state change goes through.
    operations: Operations
    #: Apportionment, charges and bills (calculations; no loops).
    billing: Billing
    #: The running service's loops (None for a command).
    engine: PrepayEngine | None = None
    billing_service: BillingService | None = None
    outbox: OutboxTail | None = None
    #: Online payment (active query, expiry, crediting): only when a provider is configured.
    payments: PaymentService | None = None

    def loops(self) -> list[Service]:
        """The services to start, in order (stopped in reverse)."""
        return [
            s
            for s in (self.engine, self.billing_service, self.payments, self.outbox)
            if s is not None
        ]


def command_services(
    site: Site,
    models: Mapping[str, DeviceModel],
    db: Database,
    *,
    bus: EventBus | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> SiteServices:
    """The door and billing for one command on the site's database."""
    bus = bus or EventBus()
    ops = Operations(site, db, bus, models=models, clock=clock)
    return SiteServices(site, models, db, bus, ops, ops.billing)


def operations_for(engine: PrepayEngine) -> Operations:
    """The door of a running engine: the engine's settings and fee control, today's energy
    rated but not saved yet, and the engine's executor and dispatcher woken after every
    commit."""
    ops = Operations(
        engine.site,
        engine.db,
        engine.bus,
        models=engine.models,
        settings=engine.prepay,
        catalogue=engine.catalogue,
        control=engine.control,
        default_tariffs=engine.settings.default_tariffs,
        clock=engine.clock,
    )
    ops.unsaved_energy = engine.metering.unsaved_energy
    ops.committed.append(engine.on_committed)
    return ops


def running_services(
    site: Site,
    models: Mapping[str, DeviceModel],
    db: Database,
    bus: EventBus,
    arbiter: Any,
    *,
    notifiers: list[Notifier] | None = None,
    providers: list[PaymentProvider] | None = None,
) -> SiteServices:
    """Everything the running service needs on the site's database (`arbiter`: the link
    arbiter that executes device commands; None in tests that run no devices; `providers`:
    the site's online payment channels, whose service runs only when there is one)."""
    engine = PrepayEngine(site, models, db, bus, arbiter, notifiers=notifiers)
    ops = operations_for(engine)
    billing_service = BillingService(
        site,
        models,
        db,
        bus,
        ops,
        billing=ops.billing,
        instance=f"{engine.settings.instance_name(site)}:billing",
    )
    tail = OutboxTail(db, ops.origin, ops.publish_committed, poll_s=engine.settings.outbox_poll_s)
    payments = None
    if providers:
        ops.use_providers(providers)
        payments = PaymentService(ops, ops.payment_providers, clock=engine.clock)
    return SiteServices(
        site, models, db, bus, ops, billing_service.billing, engine, billing_service, tail, payments
    )
