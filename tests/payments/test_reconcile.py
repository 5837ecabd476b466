"""The trade-bill comparison alone (`core.payments.reconcile.compare`): every kind of
finding, what is credited and what is left for a person; refund rows totalled."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from openprepay.core.contracts import TradeRecord
from openprepay.core.payments.orders import PaymentOrder
from openprepay.core.payments.reconcile import compare
from openprepay.core.payments.states import OrderState

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)


def order(no: str, state: OrderState, amount: int = 1000, txn: str | None = None) -> Any:
    return PaymentOrder(
        1, no, "wechat", "native", "A-101", "A-101", amount, "CNY", state, txn, "M", "A",
        NOW, NOW, NOW if txn else None, None, None, 0,
        "closed by hand" if state is OrderState.CONFLICT else None, 0, None, None, "t",
    )  # fmt: skip


def test_every_kind_of_finding() -> None:
    orders = {
        "OK1": order("OK1", OrderState.CREDITED, txn="T1"),
        "LOST": order("LOST", OrderState.CREATED),
        "STORED": order("STORED", OrderState.PAID, txn="T3"),
        "GONE": order("GONE", OrderState.CLOSED),
        "HELD": order("HELD", OrderState.CONFLICT),
        "MORE": order("MORE", OrderState.CREATED, 1000),
        "OTHER": order("OTHER", OrderState.CREDITED, txn="T7"),
        "BACK": order("BACK", OrderState.REFUNDED, txn="T9"),
    }
    rows = [
        TradeRecord("OK1", "T1", "PAID", 1000),
        TradeRecord("LOST", "T2", "PAID", 1000),
        TradeRecord("STORED", "T3", "PAID", 1000),
        TradeRecord("GONE", "T4", "PAID", 1000),
        TradeRecord("HELD", "T5", "PAID", 1000),
        TradeRecord("MORE", "T6", "PAID", 1001),
        TradeRecord("OTHER", "T8", "PAID", 1000),
        TradeRecord("BACK", "T9", "PAID", 1000),
        TradeRecord("BACK", "T9", "REFUNDED", 0, 1000),
        TradeRecord("STRANGER", "T10", "PAID", 300),
        TradeRecord("LOST", "T2", "NOTPAY", 0),
    ]
    missing = order("MISSING", OrderState.CREDITED, txn="T11")
    result = compare(rows, orders, [orders["OK1"], orders["BACK"], missing])
    found = {(f.kind, f.out_trade_no): f for f in result.findings}
    assert set(found) == {
        ("paid_not_credited", "LOST"),
        ("paid_not_credited", "STORED"),
        ("paid_not_credited", "GONE"),
        ("paid_not_credited", "HELD"),
        ("amount_mismatch", "MORE"),
        ("transaction_mismatch", "OTHER"),
        ("unknown_order", "STRANGER"),
        ("credited_not_paid", "MISSING"),
    }
    credited = {no for (kind, no), f in found.items() if f.credit}
    assert credited == {"LOST", "STORED"}  # a closed or held order is for a person
    assert "a person decides" in found[("paid_not_credited", "HELD")].detail
    assert found[("amount_mismatch", "MORE")].ours_fen == 1000
    assert found[("unknown_order", "STRANGER")].ours_fen is None
    assert (result.matched, result.bill_rows) == (2, 11)
    assert result.paid_fen == 7 * 1000 + 1001 + 300  # the paid rows
    assert result.refunded_fen == 1000


def test_an_empty_bill_and_nothing_here_is_clean() -> None:
    result = compare([], {}, [])
    assert result.findings == [] and result.matched == 0 and result.paid_fen == 0
