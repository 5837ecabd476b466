"""Refund notifications on the web route over a real socket (the runtime, the web plugin
and the test-double provider, SQLite and PostgreSQL): a signed notice about one of our
refunds moves the refund, not the order; a forged one changes nothing; copies are kept."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp

from openprepay.core.payments.refunds import RefundState
from openprepay.core.payments.states import OrderState
from tests.conftest import until

from .test_web import _balance, _order, _state, site

__all__ = ["site"]


async def test_a_refund_notification_settles_the_refund(site: Any) -> None:
    no = await _order(site)
    headers, body = site.provider.notification(site.provider.pay(no))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{site.url}/pay/notify/test", data=body, headers=headers) as resp:
            assert resp.status == 204
        await until(lambda: _state(site, no) is OrderState.CREDITED)
        ops = site.ops
        refund = (
            await asyncio.to_thread(ops.request_refund, no, 5000, "moved out", actor="test:admin")
        ).refund
        number = refund.out_refund_no
        await until(lambda: ops.payment_refund(number).state is RefundState.PROCESSING)

        forged_headers, forged = site.provider.notification(
            site.provider.finish_refund(number), bad=True
        )
        async with http.post(
            f"{site.url}/pay/notify/test", data=forged, headers=forged_headers
        ) as resp:
            assert resp.status == 500
        assert ops.payment_refund(number).state is RefundState.PROCESSING

        headers, body = site.provider.notification(site.provider.refunds[number])
        answers = await asyncio.gather(
            *(
                http.post(f"{site.url}/pay/notify/test", data=body, headers=headers)
                for _ in range(3)
            )
        )
        assert [a.status for a in answers] == [204] * 3
        for a in answers:
            a.release()
    done = ops.payment_refund(number)
    assert done.state is RefundState.SUCCESS and done.last_notice["state"] == "REFUNDED"
    assert _state(site, no) is OrderState.REFUNDED and _balance(site) == 0


async def test_a_notice_naming_no_refund_of_ours_is_about_the_order(site: Any) -> None:
    no = await _order(site)
    paid = site.provider.pay(no)
    headers, body = site.provider.notification(replace(paid, out_refund_no="NOT-OURS"))
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{site.url}/pay/notify/test", data=body, headers=headers) as resp,
    ):
        assert resp.status == 204
    await until(lambda: _state(site, no) is OrderState.CREDITED)
    await until(lambda: not site.runtime.payments._credits)
