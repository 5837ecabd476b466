"""What a plugin's services get from the running site (`hookspecs.openprepay_services`).

A structural type, so that the hook specifications need not know the runtime that
implements it (`core.app.runtime.Runtime`), and a test can hand a service a smaller host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .config.site import Site
    from .db import Database
    from .events import EventBus
    from .field.history import HistoryReader
    from .field.latest import LatestReadings
    from .model import DeviceModel
    from .operations import Operations
    from .payments.service import PaymentService


class ServiceHost(Protocol):
    #: The checked site file.
    site: Site
    #: Samples and events of the site; a service subscribes to what it needs.
    bus: EventBus
    #: The latest sample of every device (what a server shows at connect).
    readings: LatestReadings
    #: Set by the service that keeps history (the historian), read by those that serve it.
    history: HistoryReader | None
    #: Lines for the operator at start (endpoints, demo credentials).
    announcements: list[str]
    #: The site's database, open and migrated once the runtime started; None without one.
    db: Database | None
    #: The door every state change goes through; None without a database.
    operations: Operations | None
    #: Online payment (orders, crediting, active query); None without a payment provider.
    payments: PaymentService | None

    @property
    def models(self) -> Mapping[str, DeviceModel]:
        """The device models of every loaded plugin, by name."""
        ...
