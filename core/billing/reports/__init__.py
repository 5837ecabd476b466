"""Finance and energy reports (AcrelCloud §4.4, §4.5), reconciled with the ledger.

Finance (from the journal and its postings, nothing else):

- `orders` — every order in a span: top-ups, refunds, emergency credit, charges, common-area
  shares, bill payments, reversals, one row per journal and customer; usage deductions
  summed per account, day and commodity. Columns are the changes of the energy wallet, the
  general wallet and what is owed (`asset:ar:<account>`); their totals are exactly the net
  postings of those ledger accounts in the span.
- `revenue` — revenue by day, month, year or the whole span, and its composition
  (electricity, water, common area, property, rent, services, late fees): the credits to
  `rev:*` net of reversals, by posting date (its total is exactly the net `rev:*` postings
  of the span) or by service period (`attribution`: the period each posting pays for);
- `revenue_bases` — the two bases side by side per bucket, with what moved between them;
- `channels` — top-ups, bill payments and refunds per payment channel (the clearing
  accounts);
- `payment_orders` — online payment orders per channel (`payment_orders`): credited,
  refunded, closed unpaid, open, and conflicts (paid at the provider, not credited).

Energy (from the consumption the engine keeps per meter and day, `meter_usage_day`, and for
meters without an account — main and public meters — from their registers at the capture
instants):

- `monthly` — the comprehensive monthly report per room: total and 尖/峰/平/谷 energy, the
  cost of each on the service basis (the prepaid usage of the room's meters read in the
  month and the month's post-paid bills — exactly the ledger's — split over the rates in
  proportion to the exact tariff amounts of the month's energy by
  `rating.largest_remainder`, tier surcharges in their own column), the same month of the
  previous year and the month before with the changes ("no data" is not 0), then the
  pools' main and public meters;
- `meter_energy` — energy per meter by day, month or year (electricity or water), each
  meter marked (room, main or public meter of a pool) and, without a figure, why
  (`meter_status`).

Every report is a `export.Table`: printed on the command line, written as CSV or XLSX (with
a chart), saying in its title or first note which basis it uses. Times are bucketed in the
site's time zone.

The package: `common` (the site's scope, day buckets, shared queries), `attribution` (the
service period of each revenue posting), `finance` (orders, revenue), `channels` (payment
channels), `meter_status` (roles, no data and why), `energy` (energy per meter),
`monthly` (the monthly report per room). `Reports` below is what the command line and the
tests call.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from sqlalchemy.engine import Connection

from ...config.site import Site
from ...model import DeviceModel
from ...rating.tariffs import TariffCatalogue
from ..export import Table
from ..periods import Calendar
from ..settings import Pool, load_billing
from . import channels, energy, finance, monthly, payment_orders
from .common import ReportScope, buckets


class Reports:
    """The finance and energy reports of a site (see the package docstring)."""

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        catalogue: TariffCatalogue,
        *,
        calendar: Calendar,
        register_rates: Mapping[str, Sequence[str]] | None = None,
        default_tariffs: Mapping[str, str] | None = None,
        pools: Sequence[Pool] | None = None,
    ) -> None:
        if pools is None:  # the site's own [billing] pools
            pools = list(load_billing(site, models).pools.values())
        self.scope = ReportScope(
            site,
            models,
            catalogue,
            calendar,
            dict(register_rates or {}),
            dict(default_tariffs or {}),
            tuple(pools),
        )

    def buckets(self, start: dt.date, end: dt.date, by: str) -> list[tuple[str, dt.date]]:
        """(label, first day) of each bucket of [start, end)."""
        return buckets(start, end, by)

    # -- finance ---------------------------------------------------------------------------
    def revenue(
        self,
        conn: Connection,
        start: dt.date,
        end: dt.date,
        by: str = "month",
        basis: str = "posting",
    ) -> Table:
        """Revenue by stream, by posting date (default) or by service period."""
        return finance.revenue(self.scope, conn, start, end, by, basis)

    def revenue_bases(
        self, conn: Connection, start: dt.date, end: dt.date, by: str = "month"
    ) -> Table:
        """Revenue by posting date against by service period, with what moved."""
        return finance.revenue_bases(self.scope, conn, start, end, by)

    def channels(self, conn: Connection, start: dt.date, end: dt.date, by: str = "month") -> Table:
        """Money received and paid back per payment channel (see `channels`)."""
        return channels.channels(self.scope, conn, start, end, by)

    def payment_orders(
        self, conn: Connection, start: dt.date, end: dt.date, by: str = "month"
    ) -> Table:
        """Online payment orders per channel: credited, refunded, closed, open, conflicts."""
        return payment_orders.payment_orders(self.scope, conn, start, end, by)

    def orders(
        self, conn: Connection, start: dt.date, end: dt.date, *, account: str | None = None
    ) -> Table:
        return finance.orders(self.scope, conn, start, end, account=account)

    # -- energy ----------------------------------------------------------------------------
    def meter_energy(
        self,
        conn: Connection,
        start: dt.date,
        end: dt.date,
        by: str = "day",
        commodity: str = "electricity",
        meters: Sequence[str] | None = None,
    ) -> Table:
        return energy.meter_energy(self.scope, conn, start, end, by, commodity, meters)

    def energy_by_bucket(self, table: Table) -> Table:
        """A chartable summary of `meter_energy`: total energy per bucket."""
        return energy.energy_by_bucket(table)

    def monthly(self, conn: Connection, month: str, commodity: str = "electricity") -> Table:
        """The comprehensive monthly report per room (see `monthly`)."""
        return monthly.monthly(self.scope, conn, month, commodity)
