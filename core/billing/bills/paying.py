"""Payments, arrears and what an account owes.

`pay` applies a payment to the account's bills, oldest first (Dr
`asset:psp_clearing:<channel>` / Cr `asset:ar:<account>`), anything left over going to the
general wallet; its reference is unique, so a replay changes nothing. `arrears` lists what
is overdue. Arrears never trip a relay or close a valve (Civil Code Art. 944)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ... import ledger
from ...db import schema as t
from ...ledger import JournalKind, Posting, RequestError, format_fen
from ..runs import ar_code
from .model import OPEN_STATES, Arrear, BillState, PaymentResult


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
    conn.execute(
        t.bill_payment.insert(),
        {
            "reference": reference,
            "account_id": account_id,
            "amount_fen": amount_fen,
            "channel": channel,
            "journal_id": journal_id,
            "allocations": allocations,
            "to_wallet_fen": left,
            "requested_by": actor[:100],
            "created_at": now,
        },
    )
    return PaymentResult(reference, account_id, amount_fen, allocations, left, journal_id, False)


def _check_payment(amount_fen: int, reference: str, channel: str) -> None:
    ledger.check_channel(channel)
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen <= 0:
        raise RequestError("amount", f"expected more than 0.00, got {amount_fen!r}")
    if amount_fen > ledger.CAPACITY_FEN:
        raise RequestError("amount", f"{format_fen(amount_fen)} is above the capacity")
    if not isinstance(reference, str) or not reference.strip() or " " in reference:
        raise RequestError("reference", "required: the payment id or receipt, no spaces")


def _replay(
    conn: Connection, account_id: str, amount_fen: int, reference: str
) -> PaymentResult | None:
    """The first result of a payment with this reference (None: a new payment); the same
    reference with another account or amount is refused."""
    p = t.bill_payment
    existing = conn.execute(sa.select(p).where(p.c.reference == reference)).first()
    if existing is None:
        return None
    if existing.account_id != account_id or int(existing.amount_fen) != amount_fen:
        raise ledger.reused_key(
            f"billpay:{reference}",
            "payment",
            f"{format_fen(existing.amount_fen)} for account {existing.account_id}",
            f"{format_fen(amount_fen)} for account {account_id}",
        )
    return PaymentResult(
        reference,
        account_id,
        amount_fen,
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
        q = q.where(t.posting.c.ledger_account.in_([ar_code(a) for a in account_ids]))
    return {code.split(":", 2)[2]: int(total) for code, total in conn.execute(q).all()}
