"""Refunds and the trade-bill reconciliation end to end with the real providers (WeChat Pay
v3 and Alipay) against their emulators, the full runtime and the web route, on SQLite and
PostgreSQL (the `start_site` fixture of test_providers_e2e; `ledger verify` after each).

- a refund requested through the door is sent by the payment service; WeChat accepts it
  (PROCESSING) and its REFUND.SUCCESS notification, decrypted on the notify route, settles
  it; Alipay refunds synchronously;
- the day's trade bill, downloaded and checked, credits a payment whose notification was
  lost (once) and reports an order credited here but missing from the bill.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

from openprepay.core.payments.refunds import RefundState
from openprepay.core.payments.states import OrderState
from tests.conftest import until

from .test_providers_e2e import AMOUNT_FEN, StartSite, keys, start_site

__all__ = ["keys", "start_site"]

CHINA = timezone(timedelta(hours=8))


async def test_a_refund_is_sent_and_settled_by_the_providers_word(
    start_site: StartSite,
) -> None:
    site = await start_site()
    no = await site.start_payment()
    await site.channel.pay(no)
    await site.credited_once(no)
    outcome = await asyncio.to_thread(
        site.r.ops.request_refund, no, 2000, "moved out", actor="test:admin"
    )
    number = outcome.refund.out_refund_no
    assert site.balance() == AMOUNT_FEN - 2000

    def refund_state() -> RefundState:
        return site.r.ops.payment_refund(number).state

    if site.channel.name == "wechat":
        await until(lambda: refund_state() is RefundState.PROCESSING)
        status, _ = await site.channel.emu.finish_refund(number)  # REFUND.SUCCESS
        assert status == 204
    await until(lambda: refund_state() is RefundState.SUCCESS)
    refund = site.r.ops.payment_refund(number)
    assert refund.finished_at is not None and refund.failure is None
    order = site.order(no)
    assert order.state is OrderState.CREDITED and order.refunded_fen == 2000
    assert site.balance() == AMOUNT_FEN - 2000
    assert site.r.runtime.payments.counters.refunds_sent == 1


async def test_the_trade_bill_credits_a_lost_payment_and_reports_a_missing_one(
    start_site: StartSite,
) -> None:
    site = await start_site(query_after_s=3600)  # the active query will not find it first
    matched = await site.start_payment()
    await site.channel.pay(matched)
    await site.credited_once(matched)
    lost = await site.start_payment()
    assert await site.channel.pay(lost, lost=True) == []
    missing = await site.start_payment()
    await site.channel.pay(missing)
    await until(lambda: site.order(missing).state is OrderState.CREDITED)
    day = datetime.now(UTC).astimezone(CHINA).date()
    if site.channel.name == "wechat":
        site.channel.emu.bill_missing.add(missing)
    else:
        site.channel.emu.publish_bill(day, missing={missing})
    assert site.order(lost).state is OrderState.CREATED

    service = site.r.runtime.payments
    result = await service.reconcile(site.channel.name, day)
    assert result.state == "DIFFERENCES", result
    assert (result.matched, result.credited) == (1, 1)
    assert sorted((f["kind"], f["out_trade_no"]) for f in result.report) == sorted(
        [("paid_not_credited", lost), ("credited_not_paid", missing)]
    )
    assert site.order(lost).state is OrderState.CREDITED
    assert site.balance() == 3 * AMOUNT_FEN
    again = await service.reconcile(site.channel.name, day)
    assert (again.matched, again.credited, again.differences) == (2, 0, 1)
    assert site.balance() == 3 * AMOUNT_FEN
