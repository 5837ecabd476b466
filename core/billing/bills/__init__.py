"""Post-paid bills (domain.md §6): draft → review → confirm → issue, payments and arrears.

A bill covers one account and one billing period (freeze instant to freeze instant, the
same periods as apportionment: the cycle is aligned with the meters' freeze day). Its lines:

- **usage** of each POSTPAID meter of the account: the difference of the meter's own
  registers at the two freeze instants (`readings`), T1..T4 mapped to the tariff's rates,
  billed by `rating.bill_usage` (tiers continue from the energy of the account's earlier
  bills in the same tier cycle; a price change inside the period splits it by days);
- every **billed item** not on a bill yet: common-area shares, property fee, rent and
  service charges in mode `bill`, and charges the general wallet could not pay;
- a **late fee** for each issued bill still unpaid after its due date (optional,
  `late_fee_per_day` of the overdue amount per overdue day in the period, at least
  `late_fee_min`).

`draft` computes and stores drafts (again and again, until they are confirmed); a draft
with problems (a missing reading) cannot be confirmed. `confirm` recomputes each draft,
refuses one that changed since it was reviewed, posts the usage and late fees of all the
bills it confirms in one journal (Dr `asset:ar:<account>` / Cr `rev:electricity`,
`rev:water`, `rev:late_fee`) and attaches the billed items. `issue` sets the due date
(issue date + `due_days`). `pay` applies a payment to the account's bills, oldest first
(Dr `asset:psp_clearing:<channel>` / Cr `asset:ar:<account>`), anything left over going to
the general wallet; its reference is unique, so a replay changes nothing. `arrears` lists
what is overdue. Arrears never trip a relay or close a valve (Civil Code Art. 944).

`void` withdraws a CONFIRMED or ISSUED bill no payment was applied to (a wrong reading, a
wrong charge): one journal reverses what confirming it posted for it (Dr the revenue / Cr
`asset:ar:<account>` of its usage and late-fee lines, key `bill-void:<number>`), the items
confirm made of those lines are voided, the billed items it carried are released for the
next draft, and the bill stays, lines and all, as VOID with its reason, who and when. A bill
with a payment on it is refused: refund or move the payment first (a payment is applied
oldest bill first, so moving it silently would change which bills it paid). The account is
billed again for the period by the next draft, numbered `<number>-R2`, `-R3`... (the
number of a bill is unique; void bills keep theirs).

The package, one job a module: `model` (states and views), `store` (the bill table's
queries), `inputs` (what a bill depends on, and its digest), `lines` (rating the usage,
billed items, late fees), `drafting`, `confirming` (and issuing), `paying` (payments,
arrears, receivables), `voiding`. `Bills` below is the door the rest of the product uses.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from sqlalchemy.engine import Connection

from ...config.site import Site
from ...model import DeviceModel
from ...prepay.settings import PrepaySettings
from ...rating.rounding import Rounding
from ...rating.tariffs import TariffCatalogue
from ..periods import Calendar
from ..settings import BillingSettings
from . import confirming, paying, voiding
from .drafting import store_drafts
from .inputs import BillInputs
from .lines import BillLines, Computed
from .model import Arrear, BillSummary, BillView, PaymentResult, VoidResult, bill_number
from .store import get_bill, list_bills


class Bills:
    """The post-paid bills of a site (see the package docstring)."""

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        settings: BillingSettings,
        prepay: PrepaySettings,
        catalogue: TariffCatalogue,
        default_tariffs: Mapping[str, str] | None = None,
    ) -> None:
        self.site = site
        self.models = models
        self.settings = settings
        self.prepay = prepay
        self.rounding: Rounding = prepay.rounding
        self.catalogue = catalogue
        self.default_tariffs = dict(default_tariffs or {})
        self.calendar = Calendar(site.info.tz, settings.freeze_day, settings.freeze_hour)
        self.inputs = BillInputs(
            site, models, settings, prepay, catalogue, self.default_tariffs, self.calendar
        )
        self.lines = BillLines(site, settings.bills, prepay, catalogue, self.inputs)

    def number(self, account_id: str, period: str, revision: int = 1) -> str:
        """The bill number; a bill made after `revision - 1` void ones gets `-R<revision>`."""
        return bill_number(self.settings.bills.number_prefix, account_id, period, revision)

    # -- reading ---------------------------------------------------------------------------
    def get(self, conn: Connection, number: str) -> BillView:
        return get_bill(conn, number)

    def list(
        self,
        conn: Connection,
        *,
        period: str | None = None,
        state: str | None = None,
        account_id: str | None = None,
    ) -> list[BillView]:
        return list_bills(conn, period=period, state=state, account_id=account_id)

    # -- drafting --------------------------------------------------------------------------
    def digests(
        self, conn: Connection, period: str, accounts: Sequence[str] | None = None
    ) -> dict[str, str]:
        """account → the digest of its bill's inputs now (no rating)."""
        return self.inputs.digests(conn, period, accounts)

    def compute(
        self, conn: Connection, period: str, accounts: Sequence[str] | None = None
    ) -> Computed:
        """account → (lines, problems, inputs digest) of its bill for `period` (nothing
        is written)."""
        return self.lines.compute(conn, period, accounts)

    def late_fee(self, outstanding_fen: int, days: int) -> int:
        """Late fee of `outstanding_fen` overdue for `days` days (0 when off or not due)."""
        return self.lines.late_fee(outstanding_fen, days)

    def draft(
        self,
        conn: Connection,
        period: str,
        *,
        accounts: Sequence[str] | None = None,
        now: dt.datetime,
        computed: Computed | None = None,
    ) -> list[BillSummary]:
        """Compute and store the drafts of `period` (all accounts with something to bill,
        or `accounts`); confirmed bills are left alone. Returns the drafts. `computed` is
        `compute()`'s result when the caller has it already (same transaction)."""
        if computed is None:
            computed = self.compute(conn, period, accounts)
        return store_drafts(
            conn,
            period,
            computed,
            dates=self.calendar.dates(period),
            number_prefix=self.settings.bills.number_prefix,
            accounts=accounts,
            now=now,
        )

    # -- confirming and issuing ------------------------------------------------------------
    def confirm(
        self,
        conn: Connection,
        *,
        period: str | None = None,
        numbers: Sequence[str] | None = None,
        actor: str,
        now: dt.datetime,
    ) -> tuple[list[BillSummary], list[tuple[str, str]]]:
        """Confirm drafts (all of `period`, or `numbers`): ([confirmed], [(number, why
        not)]). Each draft is computed again; one that changed since it was stored, or has
        problems, is not confirmed (its draft is refreshed for another review)."""
        confirming.check_actor(actor)
        refused: list[tuple[str, str]] = []
        confirmed = []
        for p, drafts in confirming.lock_drafts(conn, period, numbers).items():
            digests = self.digests(conn, p, [r.account_id for r in drafts])
            ok, not_ok, changed = confirming.recheck(drafts, digests)
            confirmed.extend(ok)
            refused.extend(not_ok)
            if changed:
                self.draft(conn, p, accounts=changed, now=now)
        if not confirmed:
            return [], refused
        return confirming.post_confirmed(conn, confirmed, actor=actor, now=now), refused

    def issue(
        self,
        conn: Connection,
        *,
        period: str | None = None,
        numbers: Sequence[str] | None = None,
        on: dt.date | None = None,
        actor: str,
        now: dt.datetime,
    ) -> list[BillSummary]:
        """Issue confirmed bills: due date = `on` (default today) + `due_days`."""
        day = on or now.astimezone(self.site.info.tz).date()
        due = (day + dt.timedelta(days=self.settings.bills.due_days)).isoformat()
        return confirming.issue(
            conn, period=period, numbers=numbers, due_date=due, actor=actor, now=now
        )

    # -- voiding ----------------------------------------------------------------------------
    def void(
        self, conn: Connection, number: str, *, reason: str, actor: str, now: dt.datetime
    ) -> VoidResult:
        """Void a CONFIRMED or ISSUED bill no payment was applied to (see the package
        docstring). The same void again (same reason) returns the first result."""
        return voiding.void(conn, number, reason=reason, actor=actor, now=now)

    # -- payments and arrears --------------------------------------------------------------
    def pay(
        self,
        conn: Connection,
        account_id: str,
        amount_fen: int,
        reference: str,
        *,
        channel: str = "cash",
        actor: str,
        now: dt.datetime,
    ) -> PaymentResult:
        """Apply a payment to the account's bills, oldest first; the rest goes to the
        general wallet. The same reference again returns the first result."""
        return paying.pay(
            conn, account_id, amount_fen, reference, channel=channel, actor=actor, now=now
        )

    def arrears(self, conn: Connection, as_of: dt.date) -> list[Arrear]:
        """Issued bills unpaid after their due date, oldest first."""
        return paying.arrears(conn, as_of, self.late_fee)
