"""Comparing a provider's T+1 trade bill with our orders (pure: no database, no network).

For each paid row of the bill (state PAID), by our `out_trade_no`:
- an order we do not have → `unknown_order` (someone else's trade on our merchant id, or a
  lost order row: a person looks);
- another amount than our order's → `amount_mismatch` (nothing credited);
- paid by another transaction than the one we recorded → `transaction_mismatch`;
- our order CREATED or PAID (the notification and the query both missed it, or the credit
  did not happen) → `paid_not_credited`, to be credited (`credit` true) through the same
  top-up, the provider's transaction id its idempotency key;
- our order CLOSED or in CONFLICT → `paid_not_credited` too, but for a person (credit or
  refund), not credited;
- CREDITED or REFUNDED with the same amount and transaction → matched.

Each order of ours paid on that day (PAID, CREDITED, REFUNDED) that no paid row of the
bill names → `credited_not_paid`: an alarm (money credited that the provider never got).
Refund rows are totalled (`refunded_fen`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..contracts import TradeRecord
from .orders import PaymentOrder
from .states import OrderState

KINDS = (
    "paid_not_credited",
    "credited_not_paid",
    "amount_mismatch",
    "transaction_mismatch",
    "unknown_order",
)
_PAID_HERE = (OrderState.PAID, OrderState.CREDITED, OrderState.REFUNDED)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    out_trade_no: str
    transaction_id: str | None
    #: The provider's amount (the bill's), or ours for `credited_not_paid`.
    amount_fen: int
    #: Our order's amount (None: no such order).
    ours_fen: int | None
    detail: str
    #: To be credited by the reconciliation.
    credit: bool = False

    def record(self, **extra: Any) -> dict[str, Any]:
        return {**asdict(self), **extra}


@dataclass(slots=True)
class Comparison:
    bill_rows: int = 0
    matched: int = 0
    paid_fen: int = 0
    refunded_fen: int = 0
    findings: list[Finding] = field(default_factory=list)


def compare(
    rows: Sequence[TradeRecord],
    known: Mapping[str, PaymentOrder],
    paid_that_day: Iterable[PaymentOrder],
) -> Comparison:
    """`known`: our orders by `out_trade_no` for every order number the bill names;
    `paid_that_day`: our orders of the channel paid on the bill's day."""
    result = Comparison(bill_rows=len(rows))
    seen: set[str] = set()
    for row in rows:
        if row.state == "REFUNDED":
            result.refunded_fen += row.refund_fen
            continue
        if row.state != "PAID":
            continue
        result.paid_fen += row.amount_fen
        seen.add(row.out_trade_no)
        finding = _paid_row(row, known.get(row.out_trade_no))
        if finding is None:
            result.matched += 1
        else:
            result.findings.append(finding)
    for order in paid_that_day:
        if order.state in _PAID_HERE and order.out_trade_no not in seen:
            result.findings.append(
                Finding(
                    "credited_not_paid",
                    order.out_trade_no,
                    order.transaction_id,
                    order.amount_fen,
                    order.amount_fen,
                    f"{order.state} here (transaction {order.transaction_id}) but not paid in "
                    "the provider's bill: check the order at the merchant platform",
                )
            )
    return result


def _paid_row(row: TradeRecord, order: PaymentOrder | None) -> Finding | None:
    def finding(kind: str, detail: str, credit: bool = False) -> Finding:
        ours = order.amount_fen if order is not None else None
        return Finding(
            kind, row.out_trade_no, row.transaction_id, row.amount_fen, ours, detail, credit
        )

    if order is None:
        return finding("unknown_order", "paid at the provider, no such order here")
    if row.amount_fen != order.amount_fen:
        return finding(
            "amount_mismatch",
            f"paid {row.amount_fen} fen at the provider, the order is {order.amount_fen} fen",
        )
    if order.transaction_id is not None and order.transaction_id != row.transaction_id:
        return finding(
            "transaction_mismatch",
            f"paid by {row.transaction_id} at the provider, by {order.transaction_id} here",
        )
    if order.state in (OrderState.CREATED, OrderState.PAID):
        return finding("paid_not_credited", f"{order.state} here: credited now", credit=True)
    if order.state in (OrderState.CLOSED, OrderState.CONFLICT):
        why = order.conflict or "closed"
        return finding(
            "paid_not_credited",
            f"{order.state} here ({why}): a person decides — credit or refund",
        )
    return None
