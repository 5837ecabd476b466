"""The payment service's refunds and the daily reconciliation, on SQLite and PostgreSQL,
with the test-double provider: a refund is sent, queried until the provider says it is
done, closed (money back) on a final refusal and sent again after a retryable one; the
trade bill credits what was paid there and not here (once, also when run again), and
reports what was credited here and not paid there, amounts that differ and trades unknown
here; the schedule runs once a day after `reconcile_at`. `ledger verify` after each."""

from __future__ import annotations

import asyncio
from datetime import datetime, time, timedelta
from typing import Any

import pytest

from openprepay.core.contracts import TradeRecord
from openprepay.core.db import Database
from openprepay.core.events import PaymentDiscrepancy, utcnow
from openprepay.core.operations import Operations
from openprepay.core.payments import get_order
from openprepay.core.payments.refunds import RefundState
from openprepay.core.payments.service import PaymentService
from openprepay.core.payments.states import OrderState

from .double import DoubleProvider
from .test_door import ACTOR, balance, opened
from .test_refunds import ADMIN, credited, ledger_refund_state


@pytest.fixture(autouse=True)
def _verify_after(check: Any) -> Any:
    yield
    check()


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


def service(ops: Operations, provider: DoubleProvider, clock: Clock) -> PaymentService:
    return PaymentService(ops, {provider.channel: provider}, clock=clock)


def test_a_refund_is_sent_queried_and_settled(ops: Operations, db: Database, provider) -> None:
    clock = Clock()
    svc = service(ops, provider, clock)
    no = credited(ops, provider)
    refund = ops.request_refund(no, 1200, "moved out", actor=ADMIN).refund
    asyncio.run(svc.sweep_refunds())
    assert provider.refund_calls == 1
    assert ops.payment_refund(refund.out_refund_no).state is RefundState.PROCESSING
    asyncio.run(svc.sweep_refunds())  # not yet time to ask
    assert provider.refund_queries == 0 and provider.refund_calls == 1
    provider.finish_refund(refund.out_refund_no)  # done there, the notification lost
    clock.now += timedelta(seconds=61)
    asyncio.run(svc.sweep_refunds())
    assert provider.refund_queries == 1
    done = ops.payment_refund(refund.out_refund_no)
    assert done.state is RefundState.SUCCESS and done.last_query_at is not None
    assert ledger_refund_state(db, refund.out_refund_no) == "SETTLED" and balance(db) == 3800
    clock.now += timedelta(seconds=61)
    asyncio.run(svc.sweep_refunds())  # nothing left to do
    assert (provider.refund_calls, provider.refund_queries) == (1, 1)


def test_a_final_refusal_closes_and_a_retryable_one_is_sent_again(
    ops: Operations, db: Database, provider
) -> None:
    clock = Clock()
    svc = service(ops, provider, clock)
    no = credited(ops, provider)
    first = ops.request_refund(no, 1000, "a", actor=ADMIN).refund
    second = ops.request_refund(no, 2000, "b", actor=ADMIN).refund
    assert balance(db) == 2000
    provider.refuse_refunds = ("TRADE_ERROR: no", True)
    asyncio.run(svc.send_refund(first.out_refund_no))
    closed = ops.payment_refund(first.out_refund_no)
    assert closed.state is RefundState.CLOSED and "TRADE_ERROR" in closed.failure
    assert balance(db) == 3000
    provider.refuse_refunds = ("SYSTEM_ERROR: busy", False)
    asyncio.run(svc.sweep_refunds())
    waiting = ops.payment_refund(second.out_refund_no)
    assert waiting.state is RefundState.REQUESTED and waiting.attempts == 1
    assert "busy" in waiting.failure and balance(db) == 3000
    provider.refuse_refunds = None
    asyncio.run(svc.sweep_refunds())  # too early: not sent again yet
    assert provider.refund_calls == 2
    clock.now += timedelta(seconds=61)
    asyncio.run(svc.sweep_refunds())
    assert ops.payment_refund(second.out_refund_no).state is RefundState.PROCESSING
    assert provider.refund_calls == 3


def _today(ops: Operations) -> Any:
    return utcnow().astimezone(ops.site.info.tz).date()


def test_the_trade_bill_credits_reports_and_credits_once(
    ops: Operations, db: Database, provider
) -> None:
    seen: list[PaymentDiscrepancy] = []
    ops.bus.subscribe(PaymentDiscrepancy, seen.append)
    svc = service(ops, provider, Clock())
    credited(ops, provider, 1000)  # matched
    lost = opened(ops, provider, 2000)
    provider.pay(lost)  # paid there; notification and query both missed
    missing = credited(ops, provider, 3000)
    provider.bill_missing.add(missing)  # credited here, not in the bill
    wrong = opened(ops, provider, 4000)
    provider.bill_extra.append(TradeRecord(wrong, "TX-wrong", "PAID", 4100))
    provider.bill_extra.append(TradeRecord("OTHER0001", "TX-other", "PAID", 500))
    assert balance(db) == 4000
    day = _today(ops)

    result = asyncio.run(svc.reconcile("test", day))
    assert result.state == "DIFFERENCES" and result.credited == 1 and result.matched == 1
    kinds = sorted((f["kind"], f["out_trade_no"]) for f in result.report)
    assert kinds == sorted(
        [
            ("paid_not_credited", lost),
            ("credited_not_paid", missing),
            ("amount_mismatch", wrong),
            ("unknown_order", "OTHER0001"),
        ]
    )
    assert balance(db) == 6000  # the lost payment credited, nothing else
    with db.read() as conn:
        assert get_order(conn, lost).state is OrderState.CREDITED
        assert get_order(conn, wrong).state is OrderState.CREATED
    assert sorted(e.kind for e in seen) == sorted(k for k, _ in kinds)
    assert all(e.day == day.isoformat() for e in seen)

    again = asyncio.run(svc.reconcile("test", day))  # the same day again: replaced
    assert again.credited == 0 and again.matched == 2 and again.differences == 3
    assert balance(db) == 6000
    assert [r.day for r in ops.reconciliations()] == [day]


def test_a_bill_that_cannot_be_had_is_failed_and_retried(
    ops: Operations, db: Database, provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    tz = ops.site.info.tz
    local = datetime.combine(_today(ops), time(11, 0), tzinfo=tz)
    clock.now = local
    svc = service(ops, provider, clock)

    async def broken(day: Any) -> list[TradeRecord]:
        raise OSError("connection reset")

    monkeypatch.setattr(provider, "trade_bill", broken)
    assert asyncio.run(svc.reconcile_due()) == 1
    yesterday = _today(ops) - timedelta(days=1)
    failed = ops.reconciliation("test", yesterday)
    assert failed.state == "FAILED" and "connection reset" in failed.error
    assert asyncio.run(svc.reconcile_due()) == 0  # within the hour: not again
    monkeypatch.undo()
    clock.now += timedelta(hours=1, seconds=1)
    assert asyncio.run(svc.reconcile_due()) == 1
    assert ops.reconciliation("test", yesterday).state == "OK"
    clock.now += timedelta(hours=2)
    assert asyncio.run(svc.reconcile_due()) == 0  # done for that day


def test_the_schedule_waits_for_reconcile_at(ops: Operations, db: Database, provider) -> None:
    clock = Clock()
    clock.now = datetime.combine(_today(ops), time(10, 29), tzinfo=ops.site.info.tz)
    svc = service(ops, provider, clock)
    assert asyncio.run(svc.reconcile_due()) == 0
    clock.now += timedelta(minutes=1)
    assert asyncio.run(svc.reconcile_due()) == 1
    assert asyncio.run(svc.reconcile_due()) == 0


def test_reconciling_an_unknown_channel_names_it(ops: Operations, db: Database) -> None:
    from openprepay.core.ledger import RequestError

    with pytest.raises(RequestError) as refused:
        ops.reconcile_payments("nope", _today(ops), [], actor=ACTOR)
    assert refused.value.field == "channel"
