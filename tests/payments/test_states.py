"""The transition function, exhaustively: every order state × every notice state × a
notice that fits the order or does not."""

from __future__ import annotations

import itertools

import pytest

from openprepay.core.contracts import PaymentNotice
from openprepay.core.payments.states import (
    NOTICE_STATES,
    TERMINAL,
    Action,
    OrderFacts,
    OrderState,
    decide,
)

ORDER = dict(channel="test", amount_fen=1000, currency="CNY", merchant_id="M1", app_id="A1")


def facts(state: OrderState, txn: str | None = None) -> OrderFacts:
    paid = state in (OrderState.PAID, OrderState.CREDITED, OrderState.REFUNDED)
    return OrderFacts(state, transaction_id=txn or ("T1" if paid else None), **ORDER)


def notice(state: str, **changes: object) -> PaymentNotice:
    values: dict[str, object] = dict(
        channel="test",
        out_trade_no="OP1",
        state=state,
        amount_fen=1000,
        currency="CNY",
        transaction_id="T1" if state != "NOTPAY" else None,
        merchant_id="M1",
        app_id="A1",
    )
    values.update(changes)
    return PaymentNotice(**values)  # type: ignore[arg-type]


#: (order state, notice state) → (action with credit, action without) for a fitting notice.
EXPECTED = {
    ("CREATED", "PAID"): (Action.PAY_AND_CREDIT, Action.PAY),
    ("CREATED", "NOTPAY"): (Action.KEEP, Action.KEEP),
    ("CREATED", "CLOSED"): (Action.CLOSE, Action.CLOSE),
    ("CREATED", "REFUNDED"): (Action.CONFLICT, Action.CONFLICT),
    ("CREATED", "REFUND_FAILED"): (Action.KEEP, Action.KEEP),
    ("CREATED", "REFUND_PROCESSING"): (Action.KEEP, Action.KEEP),
    ("CREATED", "REFUND_ABNORMAL"): (Action.KEEP, Action.KEEP),
    ("PAID", "PAID"): (Action.CREDIT, Action.KEEP),
    ("PAID", "NOTPAY"): (Action.KEEP, Action.KEEP),
    ("PAID", "CLOSED"): (Action.KEEP, Action.KEEP),
    ("PAID", "REFUNDED"): (Action.CONFLICT, Action.CONFLICT),
    ("PAID", "REFUND_FAILED"): (Action.KEEP, Action.KEEP),
    ("PAID", "REFUND_PROCESSING"): (Action.KEEP, Action.KEEP),
    ("PAID", "REFUND_ABNORMAL"): (Action.KEEP, Action.KEEP),
    ("CREDITED", "PAID"): (Action.KEEP, Action.KEEP),
    ("CREDITED", "NOTPAY"): (Action.KEEP, Action.KEEP),
    ("CREDITED", "CLOSED"): (Action.KEEP, Action.KEEP),
    ("CREDITED", "REFUNDED"): (Action.CONFLICT, Action.CONFLICT),
    ("CREDITED", "REFUND_FAILED"): (Action.KEEP, Action.KEEP),
    ("CREDITED", "REFUND_PROCESSING"): (Action.KEEP, Action.KEEP),
    ("CREDITED", "REFUND_ABNORMAL"): (Action.KEEP, Action.KEEP),
    ("CLOSED", "PAID"): (Action.CONFLICT, Action.CONFLICT),
}


@pytest.mark.parametrize(
    "state,kind", list(itertools.product(list(OrderState), NOTICE_STATES)), ids=str
)
def test_every_state_and_notice(state: OrderState, kind: str) -> None:
    with_credit = decide(facts(state), notice(kind), credit=True)
    without = decide(facts(state), notice(kind), credit=False)
    if (state.value, kind) in EXPECTED:
        assert (with_credit.action, without.action) == EXPECTED[(state.value, kind)]
    else:  # every other pair: a final state keeps what it is
        assert state in TERMINAL
        assert with_credit.action is without.action is Action.KEEP
    if with_credit.action is Action.CONFLICT:
        assert with_credit.conflict


MISMATCHES = {
    "amount": dict(amount_fen=999),
    "currency": dict(currency="USD"),
    "merchant": dict(merchant_id="M2"),
    "app": dict(app_id="A2"),
    "channel": dict(channel="other"),
    "transaction": dict(transaction_id="T2"),
}


#: (state, field) pairs to try; an unpaid order has no transaction id to differ from.
MISMATCH_CASES = [
    (state, field)
    for state in (OrderState.CREATED, OrderState.PAID, OrderState.CREDITED)
    for field in MISMATCHES
    if not (field == "transaction" and state is OrderState.CREATED)
]


@pytest.mark.parametrize(("state", "field"), MISMATCH_CASES)
@pytest.mark.parametrize("kind", ["PAID", "REFUNDED"])
def test_a_mismatch_is_a_conflict_and_never_credits(
    state: OrderState, field: str, kind: str
) -> None:
    d = decide(facts(state), notice(kind, **MISMATCHES[field]))
    assert d.action is Action.CONFLICT and not d.credits
    assert field in d.conflict or (field == "transaction" and "transaction" in d.conflict)


@pytest.mark.parametrize("field", list(MISMATCHES))
def test_an_unpaid_answer_is_not_checked_for_money(field: str) -> None:
    """A query answer for an unpaid order may carry no amount: not a conflict."""
    assert (
        decide(facts(OrderState.CREATED), notice("NOTPAY", **MISMATCHES[field])).action
        is Action.KEEP
    )


def test_paid_without_transaction_id_is_a_conflict() -> None:
    d = decide(facts(OrderState.CREATED), notice("PAID", transaction_id=None))
    assert d.action is Action.CONFLICT and "transaction id" in d.conflict


def test_unknown_notice_state_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown notice state"):
        decide(facts(OrderState.CREATED), notice("MAYBE"))
