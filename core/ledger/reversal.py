"""Corrections: a journal is reversed by its exact opposite, never edited."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t
from ..events import utcnow
from ..money import format_fen
from .errors import RequestError
from .journal import check_key, find_replay, get_journal, load_journal, write_journal
from .position import lock_wallet
from .values import Journal, JournalKind, Posted, Posting, WalletKind

#: Journals with a business record of their own: corrected through their own function.
_NOT_REVERSIBLE = {
    JournalKind.REFUND_REQUEST.value: "fail the refund instead (fail_refund)",
    JournalKind.REFUND_SETTLE.value: "a paid-out refund is final; post a new top-up",
    JournalKind.EMERGENCY_REPAY.value: "reverse the top-up that repaid it",
    JournalKind.REVERSAL.value: "post the original entry again under a new key",
}


#: A reversal is the same one whatever reason text a retry gives.
REVERSAL_IDENTITY = ("reverses",)


def reverse(
    conn: Connection,
    journal_id: int,
    *,
    reason: str,
    requested_by: str = "",
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> Posted:
    """Correct a journal by posting its exact opposite (never an edit).

    A journal is reversed at most once (`reversal:<id>`); reversing a top-up also reverses
    the emergency-credit repayment it made and takes it out of the refundable top-ups. A
    top-up delivered (or on its way) to a LOCAL meter, or partly refunded, cannot be
    reversed; one whose RECHARGE ended FAILED can (the meter never got the money).
    """
    if not reason or not reason.strip():
        raise RequestError("reason", "required: say why the entry is reversed (audit)")
    original = get_journal(conn, journal_id)
    key = check_key(idempotency_key or f"reversal:{journal_id}")
    request = {"reverses": journal_id, "reason": reason}
    existing = find_replay(conn, key, request, "reversal", REVERSAL_IDENTITY)
    if existing is not None:
        return Posted(existing, True)
    if original.kind in _NOT_REVERSIBLE:
        raise RequestError(
            "journal",
            f"journal {journal_id} is a {original.kind}: {_NOT_REVERSIBLE[original.kind]}",
        )
    if original.account_id is not None:
        lock_wallet(conn, original.account_id, WalletKind.ENERGY)
        # The same reversal may have committed while this one waited for the lock.
        existing = find_replay(conn, key, request, "reversal", REVERSAL_IDENTITY)
        if existing is not None:
            return Posted(existing, True)
    # Checked under the lock: a concurrent reversal by another key must see this one.
    already = conn.execute(
        sa.select(t.journal.c.id).where(t.journal.c.reverses_id == journal_id)
    ).scalar()
    if already is not None:
        raise RequestError("journal", f"journal {journal_id} is already reversed by {already}")
    now = now or utcnow()
    if original.kind == JournalKind.TOPUP:
        order = conn.execute(
            sa.select(t.topup).where(
                t.topup.c.reference == original.idempotency_key.removeprefix("topup:")
            )
        ).first()
        if order is not None and order.buy_count is not None and not _undelivered(conn, order):
            raise RequestError(
                "journal",
                f"top-up {order.reference} was delivered to LOCAL meter {order.meter_id} "
                f"(purchase {order.buy_count}); refund it through the meter instead",
            )
        if order is not None and order.refunded_fen:
            raise RequestError(
                "journal",
                f"top-up {order.reference} is partly refunded ({format_fen(order.refunded_fen)})",
            )
        if order is not None:
            repay = load_journal(conn, f"emergency_repay:{order.reference}")
            if repay is not None:
                write_reversal(conn, repay, key + ":repay", reason, requested_by, now)
    new_id = write_reversal(conn, original, key, reason, requested_by, now, request=request)
    # A concurrent reversal under the same key may have won: it counts only if it is this one.
    journal = (
        load_journal(conn, key)
        if new_id is not None
        else find_replay(conn, key, request, "reversal", REVERSAL_IDENTITY)
    )
    assert journal is not None
    return Posted(journal, new_id is None)


def _undelivered(conn: Connection, order: Any) -> bool:
    """A LOCAL top-up whose RECHARGE ended FAILED never reached the meter: the money is only
    in the platform's wallet, so reversing the top-up refunds it."""
    state = conn.execute(
        sa.select(t.meter_command.c.state).where(t.meter_command.c.id == order.command_id)
    ).scalar()
    return state == "FAILED"


def write_reversal(
    conn: Connection,
    original: Journal,
    key: str,
    reason: str,
    requested_by: str,
    now: datetime,
    request: Mapping[str, Any] | None = None,
) -> int | None:
    return write_journal(
        conn,
        JournalKind.REVERSAL,
        key,
        [Posting(p.ledger_account, -p.amount_fen) for p in original.postings],
        request=request or {"reverses": original.id, "reason": reason},
        account_id=original.account_id,
        meter_id=original.meter_id,
        reverses_id=original.id,
        memo=f"reversal of journal {original.id}: {reason}",
        requested_by=requested_by,
        now=now,
    )
