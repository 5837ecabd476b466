"""Payments, credits applied, arrears and what an account owes.

`pay` applies a payment to the account's bills, oldest first (Dr
`asset:psp_clearing:<channel>` / Cr `asset:ar:<account>`), anything left over going to the
general wallet; its reference is unique, so a replay changes nothing. `apply_credit` pays
the account's bills, oldest first, from money already in its general wallet (Dr
`liab:wallet:<account>:general` / Cr `asset:ar:<account>`), recorded like a payment with
channel `credit`. `arrears` lists what is overdue. Arrears never trip a relay or close a
valve (Civil Code Art. 944)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ... import ledger
from ...db import schema as t
from ...db.among import among
from ...ledger import JournalKind, Posting, RequestError, format_fen
from ..runs import ar_code, general_balances
from .model import (
    CREDIT_CHANNEL,
    OPEN_STATES,
    Arrear,
    BillPayment,
    BillState,
    BillView,
    PaymentResult,
)


def pay(
    conn: Connection,
    account_id: str,
    amount_fen: int,
    reference: str,
    *,
    channel: str,
    actor: str,
    now: dt.datetime,
) -> PaymentResult:
    """Apply a payment to the account's bills, oldest first; the rest goes to the
    general wallet. The same reference again returns the first result."""
    _check_payment(amount_fen, reference, channel)
    replayed = _replay(conn, account_id, amount_fen, reference)
    if replayed is not None:
        return replayed
    _check_account(conn, account_id)
    open_bills = _open_bills(conn, account_id)
    allocations = _allocate(open_bills, amount_fen)
    left = amount_fen - sum(allocations.values())
    journal_id = _post_payment(
        conn, account_id, amount_fen, left, reference, channel=channel, actor=actor, now=now
    )
    _apply_to_bills(conn, open_bills, allocations, now)
    result = PaymentResult(reference, account_id, amount_fen, allocations, left, journal_id, False)
    _record_payment(conn, result, channel, actor, now)
    return result


def _record_payment(
    conn: Connection, r: PaymentResult, channel: str, actor: str, now: dt.datetime
) -> None:
    conn.execute(
        t.bill_payment.insert(),
        {
            "reference": r.reference,
            "account_id": r.account_id,
            "amount_fen": r.amount_fen,
            "channel": channel,
            "journal_id": r.journal_id,
            "allocations": dict(r.allocations),
            "to_wallet_fen": r.to_wallet_fen,
            "requested_by": actor[:100],
            "created_at": now,
        },
    )


def apply_credit(
    conn: Connection,
    account_id: str,
    reference: str,
    *,
    amount_fen: int | None = None,
    bill: str | None = None,
    actor: str,
    now: dt.datetime,
) -> PaymentResult:
    """Pay the account's unpaid bills (or only `bill`), oldest first, from its general
    wallet: `amount_fen`, or as much as the wallet holds and the bills owe. More than
    either is refused. The same reference again returns the first result."""
    if amount_fen is not None:
        _check_payment(amount_fen, reference, CREDIT_CHANNEL)
    elif not isinstance(reference, str) or not reference.strip() or " " in reference:
        raise RequestError("reference", "required: a reference for this credit, no spaces")
    replayed = _replay(conn, account_id, amount_fen, reference, credit=True)
    if replayed is not None:
        return replayed
    _check_account(conn, account_id)
    open_bills = _bills_to_credit(conn, account_id, bill)
    owed = sum(int(r.total_fen) - int(r.paid_fen) for r in open_bills)
    held = general_balances(conn, [account_id]).get(account_id, 0)
    amount = _credit_amount(amount_fen, held, owed, bill)
    allocations = _allocate(open_bills, amount)
    posted = ledger.post_journal(
        conn,
        JournalKind.SETTLEMENT,
        [
            Posting(ledger.wallet_code(account_id, "general"), amount),
            Posting(ar_code(account_id), -amount),
        ],
        idempotency_key=f"credit:{reference}",
        account_id=account_id,
        memo=f"general wallet credit applied to {', '.join(allocations)}",
        requested_by=actor,
        request={"account": account_id, "amount_fen": amount, "bills": list(allocations)},
        now=now,
    )
    _apply_to_bills(conn, open_bills, allocations, now)
    result = PaymentResult(reference, account_id, amount, allocations, 0, posted.journal.id, False)
    _record_payment(conn, result, CREDIT_CHANNEL, actor, now)
    return result


def _bills_to_credit(conn: Connection, account_id: str, bill: str | None) -> list[Any]:
    """The account's unpaid bills (only `bill` when named), oldest first, row-locked."""
    open_bills = _open_bills(conn, account_id)
    if bill is None:
        if not open_bills:
            raise RequestError("account", f"{account_id} has no unpaid confirmed or issued bill")
        return open_bills
    chosen = [r for r in open_bills if r.number == bill]
    if not chosen:
        row = conn.execute(
            sa.select(t.bill.c.account_id, t.bill.c.state).where(t.bill.c.number == bill)
        ).first()
        why = (
            "unknown bill"
            if row is None
            else f"a bill of {row.account_id}"
            if row.account_id != account_id
            else f"{row.state}, nothing owed on it"
        )
        raise RequestError("bill", f"{bill}: {why} (name an unpaid bill of {account_id})")
    return chosen


def _credit_amount(amount_fen: int | None, held: int, owed: int, bill: str | None) -> int:
    """What to apply: `amount_fen`, or all the wallet can pay of what is owed."""
    what = bill or "the unpaid bills"
    if held <= 0:
        raise RequestError("account", "the general wallet holds 0.00: nothing to apply")
    if amount_fen is None:
        return min(held, owed)
    if amount_fen > held:
        raise RequestError(
            "amount",
            f"{format_fen(amount_fen)} is more than the general wallet holds ({format_fen(held)})",
        )
    if amount_fen > owed:
        raise RequestError(
            "amount", f"{format_fen(amount_fen)} is more than {what} owe ({format_fen(owed)})"
        )
    return amount_fen


def _check_payment(amount_fen: int, reference: str, channel: str) -> None:
    ledger.check_channel(channel)
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen <= 0:
        raise RequestError("amount", f"expected more than 0.00, got {amount_fen!r}")
    if amount_fen > ledger.CAPACITY_FEN:
        raise RequestError("amount", f"{format_fen(amount_fen)} is above the capacity")
    if not isinstance(reference, str) or not reference.strip() or " " in reference:
        raise RequestError("reference", "required: the payment id or receipt, no spaces")


def _replay(
    conn: Connection,
    account_id: str,
    amount_fen: int | None,
    reference: str,
    *,
    credit: bool = False,
) -> PaymentResult | None:
    """The first result of a payment with this reference (None: a new payment); the same
    reference with another account or amount is refused (`amount_fen` None: any amount)."""
    p = t.bill_payment
    existing = conn.execute(sa.select(p).where(p.c.reference == reference)).first()
    if existing is None:
        return None
    if (
        existing.account_id != account_id
        or int(existing.amount_fen) != (existing.amount_fen if amount_fen is None else amount_fen)
        or (existing.channel == CREDIT_CHANNEL) != credit
    ):
        raise ledger.reused_key(
            f"billpay:{reference}",
            "payment",
            f"{format_fen(existing.amount_fen)} for account {existing.account_id}",
            f"{format_fen(amount_fen or 0)} for account {account_id}",
        )
    return PaymentResult(
        reference,
        account_id,
        int(existing.amount_fen),
        dict(existing.allocations),
        int(existing.to_wallet_fen),
        int(existing.journal_id),
        True,
    )


def _check_account(conn: Connection, account_id: str) -> None:
    state = conn.execute(sa.select(t.account.c.state).where(t.account.c.id == account_id)).scalar()
    if state is None:
        raise RequestError("account", f"unknown account {account_id!r}")
    if state == "CLOSED":
        raise RequestError("account", f"account {account_id!r} is closed")


def _open_bills(conn: Connection, account_id: str) -> list[Any]:
    """The account's bills still owed, oldest first, row-locked."""
    b = t.bill
    return list(
        conn.execute(
            sa.select(b)
            .where(
                b.c.account_id == account_id,
                b.c.state.in_(OPEN_STATES),
                b.c.total_fen > b.c.paid_fen,
            )
            .order_by(b.c.period, b.c.id)
            .with_for_update()
        ).all()
    )


def _allocate(open_bills: Sequence[Any], amount_fen: int) -> dict[str, int]:
    """bill number → the part of `amount_fen` it takes, oldest bill first."""
    left = amount_fen
    allocations: dict[str, int] = {}
    for r in open_bills:
        if not left:
            break
        part = min(left, int(r.total_fen) - int(r.paid_fen))
        allocations[r.number] = part
        left -= part
    return allocations


def _post_payment(
    conn: Connection,
    account_id: str,
    amount_fen: int,
    left_fen: int,
    reference: str,
    *,
    channel: str,
    actor: str,
    now: dt.datetime,
) -> int:
    applied = amount_fen - left_fen
    postings = [Posting(ledger.clearing_code(channel), amount_fen)]
    if applied:
        postings.append(Posting(ar_code(account_id), -applied))
    if left_fen:
        postings.append(Posting(ledger.wallet_code(account_id, "general"), -left_fen))
    posted = ledger.post_journal(
        conn,
        JournalKind.SETTLEMENT,
        postings,
        idempotency_key=f"billpay:{reference}",
        account_id=account_id,
        memo=f"payment {reference} via {channel}",
        requested_by=actor,
        request={"account": account_id, "amount_fen": amount_fen, "channel": channel},
        now=now,
    )
    return posted.journal.id


def _apply_to_bills(
    conn: Connection,
    open_bills: Sequence[Any],
    allocations: Mapping[str, int],
    now: dt.datetime,
) -> None:
    b = t.bill
    for r in open_bills:
        part = allocations.get(r.number)
        if not part:
            continue
        paid = int(r.paid_fen) + part
        conn.execute(
            b.update()
            .where(b.c.id == r.id)
            .values(
                paid_fen=paid,
                state=BillState.PAID if paid >= int(r.total_fen) else r.state,
                updated_at=now,
            )
        )


def arrears(conn: Connection, as_of: dt.date, late_fee: Callable[[int, int], int]) -> list[Arrear]:
    """Issued bills unpaid after their due date, oldest first. `late_fee(outstanding_fen,
    days)`: the late fee accrued so far."""
    b, a = t.bill, t.account
    rows = conn.execute(
        sa.select(b, a.c.name, a.c.room)
        .join(a, a.c.id == b.c.account_id)
        .where(
            b.c.state == BillState.ISSUED,
            b.c.due_date < as_of.isoformat(),
            b.c.total_fen > b.c.paid_fen,
        )
        .order_by(b.c.due_date, b.c.account_id)
    ).all()
    out = []
    for r in rows:
        days = (as_of - dt.date.fromisoformat(r.due_date)).days
        out.append(
            Arrear(
                r.number,
                r.account_id,
                r.name,
                r.room,
                r.period,
                r.due_date,
                int(r.total_fen),
                int(r.paid_fen),
                days,
                late_fee(int(r.total_fen) - int(r.paid_fen), days),
            )
        )
    return out


def receivable(conn: Connection, account_ids: Iterable[str] | None = None) -> dict[str, int]:
    """What each account owes (the balance of asset:ar:<account>), from the ledger."""
    q = (
        sa.select(t.posting.c.ledger_account, sa.func.sum(t.posting.c.amount_fen))
        .where(t.posting.c.ledger_account.like("asset:ar:%"))
        .group_by(t.posting.c.ledger_account)
    )
    if account_ids is not None:
        codes = [ar_code(a) for a in account_ids]
        q = q.where(among(conn, t.posting.c.ledger_account, codes))
    return {code.split(":", 2)[2]: int(total) for code, total in conn.execute(q).all()}


def with_payments(conn: Connection, bills: Sequence[BillView]) -> list[BillView]:
    """`bills` with the payments and credits applied to each (`BillView.payments`), read
    with one query per 5,000 accounts."""
    accounts = sorted({b.account_id for b in bills})
    wanted = {b.number for b in bills}
    parts: dict[str, list[BillPayment]] = {}
    p = t.bill_payment
    for i in range(0, len(accounts), 5000):
        rows = conn.execute(
            sa.select(p)
            .where(p.c.account_id.in_(accounts[i : i + 5000]))
            .order_by(p.c.created_at, p.c.id)
        ).all()
        for r in rows:
            for number, fen in dict(r.allocations or {}).items():
                if number in wanted and int(fen):
                    parts.setdefault(number, []).append(
                        BillPayment(r.reference, r.channel, int(fen), r.created_at, r.requested_by)
                    )
    return [replace(b, payments=tuple(parts.get(b.number, ()))) for b in bills]
