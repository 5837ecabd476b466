"""The payment order's states and the one function that decides a transition.

CREATED → PAID → CREDITED; CREATED → CLOSED (expired or cancelled); CREDITED → REFUNDED
(not built yet: a refund the provider reports is a conflict for now); any → CONFLICT for a
person. CLOSED, REFUNDED and CONFLICT are terminal, and a paid order never goes back: a late
NOTPAY or CLOSED after PAID or CREDITED changes nothing (notifications and query answers
arrive in any order, some twice).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ..contracts import PaymentNotice


class OrderState(StrEnum):
    CREATED = "CREATED"
    PAID = "PAID"
    CREDITED = "CREDITED"
    CLOSED = "CLOSED"
    REFUNDED = "REFUNDED"
    CONFLICT = "CONFLICT"


#: Nothing a provider says moves an order out of these.
TERMINAL = frozenset({OrderState.CLOSED, OrderState.REFUNDED, OrderState.CONFLICT})

#: The provider states a `PaymentNotice` carries (core/contracts.py).
NOTICE_STATES = (
    "PAID",
    "NOTPAY",
    "CLOSED",
    "REFUNDED",
    "REFUND_FAILED",
    "REFUND_PROCESSING",
    "REFUND_ABNORMAL",
)


class Action(StrEnum):
    """What to do with a notice."""

    #: Nothing changes but the notice is kept (a replay, a late or uninformative notice).
    KEEP = "KEEP"
    #: CREATED → PAID (the transaction id and paid time recorded).
    PAY = "PAY"
    #: PAID → CREDITED: the top-up, in the same transaction.
    CREDIT = "CREDIT"
    #: CREATED → PAID → CREDITED at once.
    PAY_AND_CREDIT = "PAY_AND_CREDIT"
    #: CREATED → CLOSED.
    CLOSE = "CLOSE"
    #: → CONFLICT, with the reason; nothing credited.
    CONFLICT = "CONFLICT"


@dataclass(frozen=True, slots=True)
class OrderFacts:
    """What `decide` needs of an order."""

    state: OrderState
    channel: str
    amount_fen: int
    currency: str
    merchant_id: str
    app_id: str
    transaction_id: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    #: Why (for the audit row and the outcome): "replay", "late NOTPAY after PAID"...
    reason: str
    conflict: str | None = None

    @property
    def credits(self) -> bool:
        return self.action in (Action.CREDIT, Action.PAY_AND_CREDIT)


def mismatch(order: OrderFacts, notice: PaymentNotice) -> str | None:
    """Why a notice about money does not fit the order (None: it fits). Only PAID and
    REFUNDED notices are checked: an unpaid order's query answer may carry no amount."""
    if notice.state not in ("PAID", "REFUNDED"):
        return None
    problems = []
    if notice.channel != order.channel:
        problems.append(f"channel {notice.channel!r}, order {order.channel!r}")
    if notice.amount_fen != order.amount_fen:
        problems.append(f"amount {notice.amount_fen} fen, order {order.amount_fen} fen")
    if notice.currency != order.currency:
        problems.append(f"currency {notice.currency!r}, order {order.currency!r}")
    if notice.merchant_id != order.merchant_id:
        problems.append(f"merchant {notice.merchant_id!r}, order {order.merchant_id!r}")
    if notice.app_id != order.app_id:
        problems.append(f"app {notice.app_id!r}, order {order.app_id!r}")
    if notice.state == "PAID" and not notice.transaction_id:
        problems.append("PAID without a transaction id")
    if (
        order.transaction_id is not None
        and notice.transaction_id is not None
        and notice.transaction_id != order.transaction_id
    ):
        problems.append(
            f"transaction {notice.transaction_id!r}, order paid by {order.transaction_id!r}"
        )
    return "; ".join(problems) or None


def decide(order: OrderFacts, notice: PaymentNotice, *, credit: bool = True) -> Decision:
    """What `notice` does to `order`. `credit=False` only stores (the web route answers the
    provider first and credits after): a PAID notice then moves CREATED to PAID and no
    further."""
    state = order.state
    if state is OrderState.CLOSED and notice.state == "PAID":
        why = f"paid at the provider ({notice.transaction_id}) after it was closed here"
        return Decision(Action.CONFLICT, why, why)
    if state in TERMINAL:
        return Decision(Action.KEEP, f"{state} is final: {notice.state} kept, nothing changed")
    wrong = mismatch(order, notice)
    if wrong is not None:
        return Decision(Action.CONFLICT, f"does not match the order: {wrong}", wrong)
    kind = notice.state
    if kind == "PAID":
        if state is OrderState.CREATED:
            if credit:
                return Decision(Action.PAY_AND_CREDIT, "paid")
            return Decision(Action.PAY, "paid, to be credited")
        if state is OrderState.PAID:
            if credit:
                return Decision(Action.CREDIT, "paid")
            return Decision(Action.KEEP, "replay: already paid, to be credited")
        return Decision(Action.KEEP, "replay: already credited")
    if kind == "CLOSED":
        if state is OrderState.CREATED:
            return Decision(Action.CLOSE, "closed at the provider")
        return Decision(Action.KEEP, f"late CLOSED after {state}: nothing changed")
    if kind == "NOTPAY":
        if state is OrderState.CREATED:
            return Decision(Action.KEEP, "not paid yet")
        return Decision(Action.KEEP, f"late NOTPAY after {state}: nothing changed")
    if kind == "REFUNDED":
        # Refunds are not started from here yet: one the provider reports is for a person.
        why = f"refunded at the provider ({notice.refund_fen} fen) while {state} here"
        return Decision(Action.CONFLICT, why, why)
    if kind in ("REFUND_FAILED", "REFUND_PROCESSING", "REFUND_ABNORMAL"):
        # Refunds have their own rows (core.payments.refunds): the order is not moved.
        return Decision(Action.KEEP, f"{kind} is about a refund: the order is unchanged")
    raise ValueError(f"unknown notice state {kind!r} (expected one of {NOTICE_STATES})")
