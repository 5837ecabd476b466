"""Custom charges: property fee, rent, service fee, anything else (domain.md §6).

A charge from `[billing.charges]` is fixed (an amount per month, or once) or by floor area
(a rate per m² and month × the room's area), periodic (`monthly`) or `once` (in the period
that holds its `date`). A tenant who moved in during the period pays for the days they
had the room: actual days ÷ days in the period, or days ÷ 30 (`prorate`). Every line is
rounded once, half-up by default (`rating.round_fen`, the `[prepay] rounding` mode).

Each (charge, period) is one run (`runs.apply`): idempotent, re-run = reverse and re-post
when something changed, one itemised line per account, taken from the general wallet or
billed. A charge never touches the energy wallet and so never affects supply (Civil Code
Art. 944: property fees may not be collected by cutting power or water).

`charge_once` is the ad-hoc one-off charge of the command line (a repair, a key, a
cleaning fee): its own journal with the caller's reference as idempotency key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import ledger
from ..config.site import Site
from ..db import schema as t
from ..ledger import JournalKind, Posting, RequestError, format_fen
from ..rating.rounding import Rounding, round_fen
from . import runs
from .periods import Calendar
from .runs import Computed, Line, RunState, ar_code
from .settings import (
    DEFAULT_REVENUE,
    Basis,
    BillingSettings,
    Charge,
    ChargeType,
    Cycle,
    Mode,
    Prorate,
)


def _dec(x: Decimal) -> str:
    return f"{x.normalize():f}"


class Charges:
    def __init__(
        self,
        site: Site,
        settings: BillingSettings,
        *,
        rounding: Rounding = Rounding.HALF_UP,
    ) -> None:
        self.site = site
        self.settings = settings
        self.rounding = rounding
        self.calendar = Calendar(site.info.tz, settings.freeze_day, settings.freeze_hour)

    def charge(self, charge_id: str) -> Charge:
        charge = self.settings.charges.get(charge_id)
        if charge is None:
            known = ", ".join(sorted(self.settings.charges)) or "none defined"
            raise RequestError("charge", f"unknown charge {charge_id!r} (charges: {known})")
        return charge

    def due(self, charge: Charge, period: str) -> bool:
        if charge.cycle is Cycle.MONTHLY:
            return True
        start, end = self.calendar.dates(period)
        assert charge.date is not None
        return start <= charge.date < end

    def factor(
        self, charge: Charge, period: str, opened_at: dt.datetime | None
    ) -> tuple[Fraction, str]:
        """The share of the month an account pays (1 = whole) and how it was found."""
        if charge.cycle is Cycle.ONCE or charge.prorate is Prorate.NONE:
            return Fraction(1), ""
        start, end = self.calendar.bounds(period)
        if opened_at is None or opened_at <= start:
            return Fraction(1), ""
        tz = self.site.info.tz
        days_total = (end.astimezone(tz).date() - start.astimezone(tz).date()).days
        days = (end.astimezone(tz).date() - opened_at.astimezone(tz).date()).days
        days = max(0, min(days, days_total))
        if charge.prorate is Prorate.ACTUAL_DAYS:
            return Fraction(days, days_total), f"{days}/{days_total} days"
        return min(Fraction(days, 30), Fraction(1)), f"{min(days, 30)}/30 days"

    def compute(self, conn: Connection, charge: Charge, period: str) -> Computed:
        a = t.account
        rows = conn.execute(
            sa.select(a.c.id, a.c.room, a.c.opened_at).where(a.c.state == "OPEN").order_by(a.c.id)
        ).all()
        lines = []
        problems = []
        for account_id, room, opened_at in rows:
            building = self.site.rooms[room].building if room in self.site.rooms else None
            if not charge.applies_to(account_id, room, building):
                continue
            factor, note = self.factor(charge, period, opened_at)
            if charge.basis is Basis.AREA:
                area = self.settings.area_of(self.site, room) if room else None
                if area is None:
                    problems.append(f"{account_id}: room {room or '-'} has no area")
                    continue
                exact = Fraction(charge.rate) * Fraction(area) * factor * 100
                quantity = f"{_dec(area)} m²" + (f" × {note}" if note else "")
                price = f"{_dec(charge.rate)}/m²"
            else:
                exact = Fraction(charge.rate) * factor * 100
                quantity = note or "1"
                price = _dec(charge.rate)
            fen = round_fen(exact, self.rounding)
            if fen <= 0:
                continue
            lines.append(
                Line(
                    account_id,
                    room,
                    fen,
                    charge.type.value,
                    f"{charge.name} {period}" + (f" ({note})" if note else ""),
                    quantity,
                    price,
                )
            )
        computed = Computed(
            charge.source,
            period,
            RunState.POSTED if lines else RunState.EMPTY,
            lines,
            f"rev:{charge.revenue}",
            charge.mode,
            JournalKind.CHARGE.value,
            f"{charge.name} {period}",
            reason="; ".join(problems)[:500],
            detail={"charge": charge.id, "basis": charge.basis.value, "rate": str(charge.rate)},
        )
        return computed

    def run(
        self,
        conn: Connection,
        period: str,
        *,
        charges: Sequence[str] | None = None,
        actor: str,
        now: dt.datetime,
        dry_run: bool = False,
    ) -> list[runs.RunResult | Computed]:
        chosen = (
            [self.charge(c) for c in charges] if charges else list(self.settings.charges.values())
        )
        out: list[runs.RunResult | Computed] = []
        for charge in chosen:
            if not self.due(charge, period):
                continue
            computed = self.compute(conn, charge, period)
            out.append(computed if dry_run else runs.apply(conn, computed, actor=actor, now=now))
        return out


def charge_once(
    conn: Connection,
    account_id: str,
    kind: str,
    amount_fen: int,
    reference: str,
    *,
    description: str,
    mode: Mode,
    period: str,
    actor: str,
    now: dt.datetime,
) -> ledger.Posted:
    """An ad-hoc one-off charge of one account (key `once:<reference>`): from the general
    wallet when it holds enough (mode wallet), owed otherwise."""
    try:
        charge_type = ChargeType(kind)
    except ValueError:
        raise RequestError(
            "type", f"expected one of {', '.join(c.value for c in ChargeType)}; got {kind!r}"
        ) from None
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen <= 0:
        raise RequestError("amount", f"expected more than 0.00, got {amount_fen!r}")
    if amount_fen > ledger.CAPACITY_FEN:
        raise RequestError("amount", f"{format_fen(amount_fen)} is absurd for one charge")
    if not description.strip():
        raise RequestError("description", "required: what is charged (it is printed on bills)")
    key = f"once:{reference}"
    acct = conn.execute(sa.select(t.account.c.state).where(t.account.c.id == account_id)).scalar()
    if acct is None:
        raise RequestError("account", f"unknown account {account_id!r}")
    if acct != "OPEN":
        raise RequestError("account", f"account {account_id!r} is {acct}, not open")
    existing = conn.execute(
        sa.select(t.journal.c.id).where(t.journal.c.idempotency_key == key)
    ).scalar()
    revenue = f"rev:{DEFAULT_REVENUE[charge_type]}"
    balance = runs.general_balances(conn, [account_id]).get(account_id, 0)
    from_wallet = mode is Mode.WALLET and balance >= amount_fen and existing is None
    debit = ledger.wallet_code(account_id, "general") if from_wallet else ar_code(account_id)
    request = {
        "account": account_id,
        "amount_fen": amount_fen,
        "type": charge_type.value,
        "description": description,
    }
    posted = ledger.post_journal(
        conn,
        JournalKind.CHARGE,
        [Posting(debit, amount_fen), Posting(revenue, -amount_fen)],
        idempotency_key=key,
        account_id=account_id,
        memo=description[:500],
        requested_by=actor,
        request=request,
        now=now,
    )
    if not posted.replayed:
        conn.execute(
            t.billing_item.insert(),
            {
                "account_id": account_id,
                "period": period,
                "kind": charge_type.value,
                "source": key[:100],
                "description": description[:300],
                "quantity": "1",
                "unit_price": format_fen(amount_fen),
                "amount_fen": amount_fen,
                "mode": Mode.WALLET.value if from_wallet else Mode.BILL.value,
                "run_id": None,
                "journal_id": posted.journal.id,
                "bill_id": None,
                "void": False,
                "created_at": now,
            },
        )
    return posted


def items_of(
    conn: Connection, account_id: str, *, period: str | None = None
) -> list[Mapping[str, object]]:
    """The itemised charges of an account (newest first)."""
    i = t.billing_item
    q = sa.select(i).where(i.c.account_id == account_id).order_by(i.c.id.desc())
    if period is not None:
        q = q.where(i.c.period == period)
    return [dict(r._mapping) for r in conn.execute(q).all()]
