"""The billing services a billing command works with, built from a site file in one place
(`billing_services`): the door (`Operations`) and `Billing` from the composition root
(`core.app.services.command_services`), and — when a command needs them — batch jobs,
reports and loss analysis."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property

from ...app.services import SiteServices, command_services
from ...billing.batch import Batches
from ...billing.loss import LossAnalysis
from ...billing.reports import Reports
from ...billing.service import Billing
from ...config.site import Site
from ...db import Database
from ...model import DeviceModel
from ...operations import Operations
from .. import CliContext
from ..common import load_checked_site
from ..database import operator, site_database


class BillingServices:
    """A site's billing services for one command (built on first use)."""

    def __init__(self, core: SiteServices) -> None:
        self.site: Site = core.site
        self.db: Database = core.db
        self.models: Mapping[str, DeviceModel] = core.models
        self.billing: Billing = core.billing
        self.operations: Operations = core.operations

    @cached_property
    def batches(self) -> Batches:
        """Batch jobs, claimed and run here as `<operator>:cli`."""
        return Batches(
            self.site,
            self.models,
            self.db,
            self.operations,
            owner=f"{operator()}:cli",
            lease_s=self.billing.settings.batch_lease_s,
        )

    @cached_property
    def reports(self) -> Reports:
        b = self.billing
        return Reports(
            self.site,
            self.models,
            b.catalogue,
            calendar=b.calendar,
            register_rates=b.prepay.register_rates,
            default_tariffs=b.bills.default_tariffs,
        )

    @cached_property
    def loss(self) -> LossAnalysis:
        return LossAnalysis(self.site, self.models, self.billing.settings)


@contextmanager
def billing_services(site_file: str, obj: CliContext) -> Iterator[BillingServices]:
    """The billing services of the site in `site_file` (its database closed at the end)."""
    site = load_checked_site(site_file)
    db = site_database(site_file)
    try:
        yield BillingServices(command_services(site, obj.plugins.models, db))
    finally:
        db.dispose()
