"""Post-paid bills through the door: draft, confirm, issue, pay, apply a general-wallet
credit, void (core/billing/bills computes; here each step becomes one audited transaction
whose effects every running service learns of)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property

from sqlalchemy.engine import Connection

from ..billing.bills import paying
from ..billing.bills.model import BillSummary, PaymentResult, VoidResult
from ..billing.service import Billing
from ..ledger import format_fen
from ..prepay.control import Effects
from .door import Door


class BillDoor(Door):
    @cached_property
    def billing(self) -> Billing:
        """The site's billing with this door's prepayment settings and tariffs."""
        return Billing(
            self.site,
            self.models,
            prepay=self.settings,
            catalogue=self.catalogue,
            default_tariffs=self.binding.default_tariffs,
        )

    def draft_bills(
        self,
        period: str,
        *,
        accounts: Sequence[str] | None = None,
        actor: str,
        override: str | None = None,
    ) -> list[BillSummary]:
        """Compute and store the drafts of `period` (all accounts, or `accounts`); refused
        before the period has ended or while a POSTPAID meter lacks its freeze reading,
        unless `override` says why (audited)."""

        def work(conn: Connection, effects: Effects, now: datetime) -> list[BillSummary]:
            effects.extend(
                self.billing.require_closable(
                    conn,
                    period,
                    "bill drafting",
                    now=now,
                    actor=actor,
                    override=override,
                    pools=(),
                    accounts=accounts,
                )
            )
            return self.billing.bills.draft(conn, period, accounts=accounts, now=now)

        return self._call(
            "bill_draft", period, actor, work, lambda drafts: f"{len(drafts)} draft(s)"
        )

    def confirm_bills(
        self,
        *,
        period: str | None = None,
        numbers: Sequence[str] | None = None,
        actor: str,
    ) -> tuple[list[BillSummary], list[tuple[str, str]]]:
        """Confirm reviewed drafts; a draft that changed since it was made is refreshed,
        not confirmed: ([confirmed], [(number, why not)])."""

        def work(
            conn: Connection, effects: Effects, now: datetime
        ) -> tuple[list[BillSummary], list[tuple[str, str]]]:
            confirmed, refused = self.billing.bills.confirm(
                conn, period=period, numbers=numbers, actor=actor, now=now
            )
            effects.accounts.update(b.account_id for b in confirmed)
            return confirmed, refused

        return self._call(
            "bill_confirm",
            period or ",".join(numbers or ())[:100],
            actor,
            work,
            lambda r: f"{len(r[0])} confirmed, {len(r[1])} not",
        )

    def issue_bills(
        self,
        *,
        period: str | None = None,
        numbers: Sequence[str] | None = None,
        on: dt.date | None = None,
        actor: str,
    ) -> list[BillSummary]:
        """Issue confirmed bills: due date = `on` (default today) + `due_days`."""

        def work(conn: Connection, effects: Effects, now: datetime) -> list[BillSummary]:
            return self.billing.bills.issue(
                conn, period=period, numbers=numbers, on=on, actor=actor, now=now
            )

        return self._call(
            "bill_issue",
            period or ",".join(numbers or ())[:100],
            actor,
            work,
            lambda issued: f"{len(issued)} issued",
        )

    def pay_bills(
        self,
        account_id: str,
        amount_fen: int,
        reference: str,
        *,
        channel: str = "cash",
        actor: str,
    ) -> PaymentResult:
        """A payment of the account: its bills first (oldest first), the rest to the general
        wallet; the same reference again returns the first result."""

        def work(conn: Connection, effects: Effects, now: datetime) -> PaymentResult:
            result = self.billing.bills.pay(
                conn, account_id, amount_fen, reference, channel=channel, actor=actor, now=now
            )
            effects.accounts.add(account_id)
            return result

        return self._call(
            "bill_pay",
            account_id,
            actor,
            work,
            lambda r: (
                f"{format_fen(r.amount_fen)} via {channel}, reference {r.reference}"
                + (" (replay: nothing changed)" if r.replayed else "")
            ),
        )

    def apply_credit(
        self,
        account_id: str,
        *,
        bill: str | None = None,
        amount_fen: int | None = None,
        reference: str | None = None,
        actor: str,
    ) -> PaymentResult:
        """Pay the account's unpaid bills (or only `bill`), oldest first, from its general
        wallet: `amount_fen`, or all the wallet holds up to what the bills owe. Refused
        beyond either. `reference` (default: one made of the account and the time) makes it
        idempotent: the same reference again returns the first result."""

        def work(conn: Connection, effects: Effects, now: datetime) -> PaymentResult:
            ref = reference or f"credit-{account_id}-{now:%Y%m%d%H%M%S%f}"
            result = paying.apply_credit(
                conn, account_id, ref, amount_fen=amount_fen, bill=bill, actor=actor, now=now
            )
            effects.accounts.add(account_id)
            return result

        return self._call(
            "bill_credit",
            account_id,
            actor,
            work,
            lambda r: (
                f"general wallet credit {format_fen(r.amount_fen)} applied to "
                + ", ".join(f"{n} {format_fen(f)}" for n, f in r.allocations.items())
                + f", reference {r.reference}"
                + (" (replay: nothing changed)" if r.replayed else "")
            ),
        )

    def void_bill(self, number: str, reason: str, *, actor: str) -> VoidResult:
        """Void a confirmed or issued bill nothing was paid on (what confirming it posted
        is reversed; its items go to the account's next draft)."""

        def work(conn: Connection, effects: Effects, now: datetime) -> VoidResult:
            result = self.billing.bills.void(conn, number, reason=reason, actor=actor, now=now)
            effects.accounts.add(result.account_id)
            return result

        return self._call("bill_void", number, actor, work, lambda r: f"void: {reason}")
