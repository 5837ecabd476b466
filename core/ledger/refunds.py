"""Refunds: out of the energy wallet, back through the channels of recent top-ups.

A refund is requested (Dr wallet / Cr liab:refund_payable), then settled (paid out per
channel) or failed (reversed); for a LOCAL meter the meter is debited first.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t
from ..events import utcnow
from ..money import check_amount, format_fen
from .codes import REFUND_PAYABLE, clearing_code
from .errors import LedgerIntegrityError, RequestError
from .journal import (
    check_reference,
    describe_request,
    find_replay,
    get_journal,
    reused_key,
    write_journal,
)
from .local import LocalMeterCommands, require_local
from .position import (
    Position,
    balances,
    energy_balance,
    local_meter_for,
    lock_position,
    lock_wallet,
)
from .reversal import write_reversal
from .values import JournalKind, Posting, RefundAllocation, RefundResult, WalletKind

#: Refunds through the payment channel are possible within this window (domain.md §5.3).
REFUND_WINDOW = timedelta(days=365)


def refundable(conn: Connection, account_id: str, *, now: datetime | None = None) -> int:
    """What can be refunded now: min(energy wallet − outstanding emergency credit − meter
    refunds under way, unrefunded top-ups of the last 365 days) (domain.md §5.3)."""
    b = balances(conn, account_id)
    orders = _refundable_topups(conn, account_id, now or utcnow())
    awaiting = _awaiting_meter_refunds(conn, account_id)
    return max(
        0, min(b.energy_fen - b.emergency_outstanding_fen - awaiting, sum(r[2] for r in orders))
    )


def _awaiting_meter_refunds(conn: Connection, account_id: str) -> int:
    """Refunds reserved while a LOCAL meter is being debited (not posted yet)."""
    return int(
        conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(t.refund.c.amount_fen), 0)).where(
                t.refund.c.account_id == account_id, t.refund.c.state == "AWAITING_METER"
            )
        ).scalar()
    )


def _refundable_topups(
    conn: Connection, account_id: str, now: datetime
) -> list[tuple[int, str, int, str]]:
    """(topup id, reference, unrefunded fen, channel), newest first, within the window."""
    reversed_ids = sa.select(t.journal.c.reverses_id).where(t.journal.c.reverses_id.is_not(None))
    rows = conn.execute(
        sa.select(
            t.topup.c.id,
            t.topup.c.reference,
            t.topup.c.amount_fen,
            t.topup.c.refunded_fen,
            t.topup.c.channel,
        )
        .where(
            t.topup.c.account_id == account_id,
            t.topup.c.created_at >= now - REFUND_WINDOW,
            t.topup.c.refunded_fen < t.topup.c.amount_fen,
            t.topup.c.journal_id.not_in(reversed_ids),
        )
        .order_by(t.topup.c.created_at.desc(), t.topup.c.id.desc())
    ).all()
    return [(r.id, r.reference, r.amount_fen - r.refunded_fen, r.channel) for r in rows]


def refund(
    conn: Connection,
    account_id: str,
    amount_fen: int,
    reference: str,
    *,
    settle: bool = False,
    meter_id: str | None = None,
    requested_by: str = "",
    now: datetime | None = None,
    local: LocalMeterCommands | None = None,
    topup_reference: str | None = None,
    force: bool = False,
) -> RefundResult:
    """Refund from the energy wallet: Dr wallet / Cr liab:refund_payable (state REQUESTED).

    `reference` is the refund number (out_refund_no): the same number again returns the
    original result and changes nothing. The amount is allocated to the account's top-ups
    newest first, only those of the last 365 days, and may not exceed `refundable()`.
    `settle=True` also records the pay-out at once (cash at the counter):
    Dr liab:refund_payable / Cr asset:psp_clearing:{channel of each top-up}. Otherwise call
    `settle_refund` when the channel confirms, or `fail_refund` to reverse the request.

    An account with a LOCAL meter (the only one, or `meter_id`) holds its money in the
    meter, so the meter is debited first (domain.md §1.5, §5.3): the refund waits in
    AWAITING_METER with its top-ups reserved and an equal-count REFUND command queued;
    nothing is posted until the meter confirms (`commands.mark_confirmed` then posts the
    request, and the pay-out when `settle`). A REFUND that finally fails ends the refund
    FAILED and releases the top-ups. `local` queues that command; without it such a refund
    is refused.

    `topup_reference`: refund that top-up only (an online payment refunded through its own
    channel), at most what is left of it. `force`: refund it even when the wallet lacks
    the money (the tenant already used it: the wallet goes below zero, into arrears);
    still never more than the top-ups' unrefunded amount.
    """
    check_amount(amount_fen)
    check_reference(reference)
    request = {"account": account_id, "amount_fen": amount_fen}
    replay = _refund_replay(conn, reference, request)
    if replay is not None:
        return replay
    pos = lock_position(conn, account_id)
    replay = _refund_replay(conn, reference, request)  # a concurrent twin may have won
    if replay is not None:
        return replay
    wallet = pos.wallet
    local_meter = local_meter_for(conn, account_id, meter_id, pos)
    if local_meter is not None:
        local = require_local(local, local_meter)
    now = now or utcnow()
    orders = _check_refundable(
        conn, account_id, amount_fen, pos, now, topup_reference=topup_reference, force=force
    )
    journal_id = None
    if local_meter is None:
        journal_id = _post_request(
            conn,
            reference,
            account_id,
            wallet,
            amount_fen,
            memo="refund requested",
            requested_by=requested_by,
            now=now,
        )
        if journal_id is None:  # a concurrent twin posted this refund number
            find_replay(conn, f"refund:{reference}", request, "refund")
            return refund_result(conn, reference, replayed=True)
    refund_id = conn.execute(
        t.refund.insert().returning(t.refund.c.id),
        {
            "account_id": account_id,
            "reference": reference,
            "amount_fen": amount_fen,
            "state": "REQUESTED" if local_meter is None else "AWAITING_METER",
            "request_journal_id": journal_id,
            "meter_id": local_meter,
            "settle_on_confirm": bool(settle and local_meter is not None),
            "created_at": now,
            "updated_at": now,
        },
    ).scalar_one()
    _allocate(conn, refund_id, orders, amount_fen)
    if local_meter is not None and local is not None:
        command_id = local.refund(
            conn,
            local_meter,
            account_id=account_id,
            amount_fen=amount_fen,
            reference=reference,
            reason=f"refund {reference} of {format_fen(amount_fen)}",
            requested_by=requested_by or "ledger",
            now=now,
        )
        _set_refund(conn, refund_id, command_id=command_id)
    elif settle:
        settle_refund(conn, reference, requested_by=requested_by, now=now)
    return refund_result(conn, reference, replayed=False)


def _check_refundable(
    conn: Connection,
    account_id: str,
    amount_fen: int,
    pos: Position,
    now: datetime,
    *,
    topup_reference: str | None = None,
    force: bool = False,
) -> list[Any]:
    """The account's refundable top-ups (newest first), refusing `amount_fen` above what
    can be refunded: the energy wallet less emergency credit and refunds awaiting a
    meter, and at most the unrefunded top-ups of the last 365 days."""
    balance = pos.balance_fen
    awaiting = _awaiting_meter_refunds(conn, account_id)
    orders = _refundable_topups(conn, account_id, now)
    if topup_reference is not None:
        orders = [o for o in orders if o[1] == topup_reference]
        left = sum(o[2] for o in orders)
        if amount_fen > left:
            raise RequestError(
                "amount",
                f"at most {format_fen(left)} of top-up {topup_reference} can be refunded "
                "(its amount less earlier refunds, within 365 days)",
            )
    unrefunded = sum(o[2] for o in orders)
    available = min(balance - pos.emergency_fen - awaiting, unrefunded)
    if force:
        available = unrefunded
    if amount_fen > available:
        raise RequestError(
            "amount",
            f"at most {format_fen(max(available, 0))} can be refunded: energy wallet "
            f"{format_fen(balance)}"
            + (
                f" (of which {format_fen(pos.emergency_fen)} emergency credit)"
                if pos.emergency_fen
                else ""
            )
            + (f" (of which {format_fen(awaiting)} awaiting meter refunds)" if awaiting else "")
            + f", unrefunded top-ups of the last 365 days {format_fen(unrefunded)}",
        )
    return orders


def _allocate(conn: Connection, refund_id: int, orders: list[Any], amount_fen: int) -> None:
    """Take the refund from the top-ups, newest first."""
    need = amount_fen
    for topup_id, _ref, free, _channel in orders:
        if need == 0:
            break
        take = min(free, need)
        need -= take
        conn.execute(
            t.refund_allocation.insert(),
            {"refund_id": refund_id, "topup_id": topup_id, "amount_fen": take},
        )
        _add_refunded(conn, topup_id, take)


def _post_request(
    conn: Connection,
    reference: str,
    account_id: str,
    wallet: str,
    amount_fen: int,
    *,
    meter_id: str | None = None,
    memo: str,
    requested_by: str,
    now: datetime,
) -> int | None:
    """The refund request: Dr wallet / Cr liab:refund_payable under `refund:<reference>`,
    posted at once or when the LOCAL meter confirmed its debit."""
    return write_journal(
        conn,
        JournalKind.REFUND_REQUEST,
        f"refund:{reference}",
        [Posting(wallet, amount_fen), Posting(REFUND_PAYABLE, -amount_fen)],
        request={"account": account_id, "amount_fen": amount_fen},
        account_id=account_id,
        meter_id=meter_id,
        memo=memo,
        requested_by=requested_by,
        now=now,
        known_wallets=(wallet,),
    )


def _refund_replay(
    conn: Connection, reference: str, request: Mapping[str, Any]
) -> RefundResult | None:
    row = conn.execute(
        sa.select(t.refund.c.account_id, t.refund.c.amount_fen).where(
            t.refund.c.reference == reference
        )
    ).first()
    if row is None:
        return None
    recorded = {"account": row.account_id, "amount_fen": int(row.amount_fen)}
    if recorded != {k: request.get(k) for k in recorded}:
        raise reused_key(
            f"refund:{reference}", "refund", describe_request(recorded), describe_request(request)
        )
    return refund_result(conn, reference, replayed=True)


def complete_meter_refund(
    conn: Connection, command_id: int, *, requested_by: str = "", now: datetime | None = None
) -> RefundResult | None:
    """The meter confirmed the REFUND command: post the refund request (and the pay-out
    when it was asked for). Called by `commands.mark_confirmed`; idempotent."""
    row = _awaiting_refund(conn, command_id)
    if row is None:
        return None
    pos = lock_position(conn, row.account_id, open_only=False)
    now = now or utcnow()
    journal_id = _post_request(
        conn,
        row.reference,
        row.account_id,
        pos.wallet,
        int(row.amount_fen),
        meter_id=row.meter_id,
        memo=f"refund requested; meter {row.meter_id} debited (command {command_id})",
        requested_by=requested_by,
        now=now,
    )
    if journal_id is None:  # pragma: no cover - the state check above prevents it
        raise LedgerIntegrityError(f"refund {row.reference} was posted twice")
    _set_refund(conn, row.id, state="REQUESTED", request_journal_id=journal_id, updated_at=now)
    if row.settle_on_confirm:
        return settle_refund(conn, row.reference, requested_by=requested_by, now=now)
    return refund_result(conn, row.reference, replayed=False)


def abandon_meter_refund(
    conn: Connection, command_id: int, reason: str, *, now: datetime | None = None
) -> RefundResult | None:
    """The meter refused the REFUND for good (or it was cancelled): nothing was posted, so
    the refund ends FAILED and its top-ups are released. Called by `commands`."""
    row = _awaiting_refund(conn, command_id)
    if row is None:
        return None
    _release_allocations(conn, row.id)
    _set_refund(conn, row.id, state="FAILED", reason=reason[:500], updated_at=now or utcnow())
    return refund_result(conn, row.reference, replayed=False)


def _awaiting_refund(conn: Connection, command_id: int) -> Any:
    """The refund waiting for the meter to carry out REFUND command `command_id`, or None
    (no such refund, or it was already completed or abandoned: nothing left to do)."""
    row = conn.execute(sa.select(t.refund).where(t.refund.c.command_id == command_id)).first()
    if row is None or row.state != "AWAITING_METER":
        return None
    return row


def _set_refund(conn: Connection, refund_id: int, **values: Any) -> None:
    """Record a refund's new state (and the journal or command that moved it)."""
    conn.execute(t.refund.update().where(t.refund.c.id == refund_id).values(**values))


def _add_refunded(conn: Connection, topup_id: int, amount_fen: int) -> None:
    """Reserve (amount > 0) or release (< 0) part of a top-up for a refund."""
    conn.execute(
        t.topup.update()
        .where(t.topup.c.id == topup_id)
        .values(refunded_fen=t.topup.c.refunded_fen + amount_fen)
    )


def _release_allocations(conn: Connection, refund_id: int) -> None:
    for topup_id, amount in conn.execute(
        sa.select(t.refund_allocation.c.topup_id, t.refund_allocation.c.amount_fen).where(
            t.refund_allocation.c.refund_id == refund_id
        )
    ).all():
        _add_refunded(conn, topup_id, -amount)


def _load_refund(conn: Connection, reference: str) -> Any:
    row = conn.execute(sa.select(t.refund).where(t.refund.c.reference == reference)).first()
    if row is None:
        raise RequestError("reference", f"unknown refund {reference!r}")
    return row


def _requested_refund(conn: Connection, reference: str, *, done: str, cannot: str) -> Any:
    """The REQUESTED refund about to end `done`; None when it already has (a replay).
    Any other state is refused: the refund `cannot` do that now."""
    row = _load_refund(conn, reference)
    if row.state == done:
        return None
    if row.state != "REQUESTED":
        raise RequestError("reference", f"refund {reference!r} is {row.state}, it cannot {cannot}")
    return row


def _allocations(conn: Connection, refund_id: int) -> list[RefundAllocation]:
    rows = conn.execute(
        sa.select(t.topup.c.reference, t.topup.c.channel, t.refund_allocation.c.amount_fen)
        .join(t.topup, t.topup.c.id == t.refund_allocation.c.topup_id)
        .where(t.refund_allocation.c.refund_id == refund_id)
        .order_by(t.topup.c.created_at.desc(), t.topup.c.id.desc())
    ).all()
    return [RefundAllocation(r.reference, r.channel, r.amount_fen) for r in rows]


def refund_result(conn: Connection, reference: str, *, replayed: bool) -> RefundResult:
    row = _load_refund(conn, reference)
    return RefundResult(
        row.reference,
        row.account_id,
        row.amount_fen,
        row.state,
        energy_balance(conn, row.account_id),
        tuple(_allocations(conn, row.id)),
        replayed,
        row.meter_id,
        row.command_id,
    )


def settle_refund(
    conn: Connection, reference: str, *, requested_by: str = "", now: datetime | None = None
) -> RefundResult:
    """The channel paid the refund out: Dr liab:refund_payable / Cr psp_clearing per channel."""
    row = _requested_refund(conn, reference, done="SETTLED", cannot="be paid")
    if row is None:
        return refund_result(conn, reference, replayed=True)
    now = now or utcnow()
    by_channel: dict[str, int] = {}
    for a in _allocations(conn, row.id):
        by_channel[a.channel] = by_channel.get(a.channel, 0) + a.amount_fen
    postings = [Posting(REFUND_PAYABLE, row.amount_fen)] + [
        Posting(clearing_code(ch), -amount) for ch, amount in sorted(by_channel.items())
    ]
    journal_id = write_journal(
        conn,
        JournalKind.REFUND_SETTLE,
        f"refund_settle:{reference}",
        postings,
        request={"refund": reference},
        account_id=row.account_id,
        memo="refund paid out",
        requested_by=requested_by,
        now=now,
    )
    if journal_id is None:
        return refund_result(conn, reference, replayed=True)
    _set_refund(conn, row.id, state="SETTLED", settle_journal_id=journal_id, updated_at=now)
    return refund_result(conn, reference, replayed=False)


def fail_refund(
    conn: Connection,
    reference: str,
    reason: str,
    *,
    requested_by: str = "",
    now: datetime | None = None,
) -> RefundResult:
    """The channel could not pay the refund: reverse the request and give the money back to
    the wallet and the top-ups it was allocated to. Retry later under the same number."""
    if not reason or not reason.strip():
        raise RequestError("reason", "required: say why the refund failed (audit)")
    row = _requested_refund(conn, reference, done="FAILED", cannot="fail")
    if row is None:
        return refund_result(conn, reference, replayed=True)
    lock_wallet(conn, row.account_id, WalletKind.ENERGY)
    now = now or utcnow()
    original = get_journal(conn, row.request_journal_id)
    journal_id = write_reversal(
        conn, original, f"refund_fail:{reference}", reason, requested_by, now
    )
    _release_allocations(conn, row.id)
    _set_refund(
        conn,
        row.id,
        state="FAILED",
        reversal_journal_id=journal_id,
        reason=reason[:500],
        updated_at=now,
    )
    return refund_result(conn, reference, replayed=False)
