"""Voiding a CONFIRMED or ISSUED bill no payment was applied to (a wrong reading, a wrong
charge): one journal reverses what confirming it posted for it (Dr the revenue / Cr
`asset:ar:<account>` of its usage and late-fee lines, key `bill-void:<number>`), the items
confirm made of those lines are voided, the billed items it carried are released for the
next draft, and the bill stays, lines and all, as VOID with its reason, who and when."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ... import ledger
from ...db import schema as t
from ...ledger import JournalKind, Posting, RequestError, format_fen
from ..runs import ar_code
from .model import OPEN_STATES, BillState, VoidResult


def void(conn: Connection, number: str, *, reason: str, actor: str, now: dt.datetime) -> VoidResult:
    """Void bill `number` (see the module docstring). The same void again (same reason)
    returns the first result."""
    reason = _checked_reason(reason, actor)
    b = t.bill
    row = conn.execute(sa.select(b).where(b.c.number == number).with_for_update()).first()
    if row is None:
        raise RequestError("bill", f"unknown bill {number!r}")
    lines = list(row.lines or ())
    reversed_fen = sum(
        int(ln["amount_fen"]) for ln in lines if not ln.get("posted") and ln["amount_fen"]
    )
    item_ids = [int(ln["item"]) for ln in lines if ln.get("posted") and ln.get("item") is not None]
    if row.state == BillState.VOID:
        if row.void_reason != reason:
            raise RequestError(
                "bill", f"bill {number} is already void ({row.void_reason!r}, by {row.voided_by})"
            )
        return VoidResult(
            number,
            row.account_id,
            row.period,
            reversed_fen,
            len(item_ids),
            row.void_journal_id,
            True,
        )
    _check_voidable(row)
    _check_no_late_fee_on_it(conn, row)
    journal_id = _reverse(conn, row, lines, reversed_fen, reason=reason, actor=actor, now=now)
    _release_items(conn, row, item_ids)
    conn.execute(
        b.update()
        .where(b.c.id == row.id)
        .values(
            state=BillState.VOID,
            void_reason=reason,
            voided_by=actor[:100],
            voided_at=now,
            void_journal_id=journal_id,
            updated_at=now,
        )
    )
    return VoidResult(
        number, row.account_id, row.period, reversed_fen, len(item_ids), journal_id, False
    )


def _checked_reason(reason: str, actor: str) -> str:
    if not actor or not actor.strip():
        raise RequestError("actor", "required (audit)")
    if not isinstance(reason, str) or not reason.strip():
        raise RequestError("reason", "required: say why the bill is void (wrong reading...)")
    reason = reason.strip()
    if len(reason) > 300:
        raise RequestError("reason", f"at most 300 characters, got {len(reason)}")
    return reason


def _check_voidable(row: Any) -> None:
    """A draft, a bill with a payment on it, or a bill in another state is refused."""
    number = row.number
    if row.state == BillState.DRAFT:
        raise RequestError(
            "bill", f"bill {number} is a draft: nothing was posted, draft it again instead"
        )
    if int(row.paid_fen) > 0:
        raise RequestError(
            "bill",
            f"bill {number} has {format_fen(int(row.paid_fen))} paid on it: "
            "refund or move the payment first",
        )
    if row.state not in OPEN_STATES and not (
        row.state == BillState.PAID and int(row.paid_fen) == 0
    ):
        raise RequestError("bill", f"bill {number} is {row.state}: it cannot be void")


def _check_no_late_fee_on_it(conn: Connection, row: Any) -> None:
    """A later bill that charged a late fee on this one must be void first."""
    b = t.bill
    later = conn.execute(
        sa.select(b.c.number, b.c.lines).where(
            b.c.account_id == row.account_id,
            b.c.period > row.period,
            b.c.state.not_in([BillState.DRAFT, BillState.VOID]),
        )
    ).all()
    for other, other_lines in later:
        if any(
            ln.get("kind") == "late_fee" and ln.get("bill") == row.number
            for ln in other_lines or ()
        ):
            raise RequestError(
                "bill", f"bill {other} charged a late fee on {row.number}: void {other} first"
            )


def _reverse(
    conn: Connection,
    row: Any,
    lines: Sequence[Mapping[str, Any]],
    reversed_fen: int,
    *,
    reason: str,
    actor: str,
    now: dt.datetime,
) -> int | None:
    """The journal reversing what confirming the bill posted (None: it posted nothing)."""
    postings: dict[str, int] = {}
    for ln in lines:
        fen = int(ln["amount_fen"])
        if ln.get("posted") or not fen:
            continue
        code = ar_code(row.account_id)
        postings[code] = postings.get(code, 0) - fen
        revenue = f"rev:{ln['kind']}"
        postings[revenue] = postings.get(revenue, 0) + fen
    postings_list = [Posting(code, fen) for code, fen in sorted(postings.items()) if fen]
    if not postings_list:
        return None
    posted = ledger.post_journal(
        conn,
        JournalKind.ADJUSTMENT,
        postings_list,
        idempotency_key=f"bill-void:{row.number}",
        account_id=row.account_id,
        memo=f"bill {row.number} void: {reason}"[:300],
        requested_by=actor,
        request={"bill": row.number, "reversed_fen": reversed_fen},
        now=now,
    )
    return posted.journal.id


def _release_items(conn: Connection, row: Any, item_ids: Sequence[int]) -> None:
    i = t.billing_item
    if item_ids:  # billed items: on the account's next draft again
        conn.execute(
            i.update().where(i.c.id.in_(item_ids), i.c.bill_id == row.id).values(bill_id=None)
        )
    # What confirm made of the usage and late-fee lines: reversed above, never billed.
    conn.execute(
        i.update()
        .where(i.c.bill_id == row.id, i.c.source == f"bill:{row.number}"[:100])
        .values(void=True)
    )
