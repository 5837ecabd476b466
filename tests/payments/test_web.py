"""The web route end to end over a real socket: the runtime with the web plugin and the
test-double provider, an aiohttp client posting signed callbacks to /pay/notify/test."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from openprepay.core import ledger
from openprepay.core.model import Sample
from openprepay.core.payments import get_order
from openprepay.core.payments.states import OrderState
from tests.conftest import until

from .conftest import PAYMENTS
from .double import DoublePlugin

WEB = {"bind": "127.0.0.1", "port": 0, "public_base_url": "https://pay.example.com"}


def _balance(r: Any) -> int:
    with r.db.read() as conn:
        return ledger.balances(conn, "A-101").energy_fen


def _state(r: Any, no: str) -> OrderState:
    with r.db.read() as conn:
        return get_order(conn, no).state


def _web(r: Any) -> Any:
    return next(s for s in r.runtime.services if s.name == "web")


@pytest.fixture
async def site(db_url: str, running: Any, double_plugin: DoublePlugin) -> Any:
    """The runtime on SQLite and on PostgreSQL, with the web service and the double.
    (`db_url` first: its schema is dropped after the runtime stops, not under it.)"""
    # No reconciliation: the double's trade bill lists every payment whatever the day, and
    # the start-up one, late on a busy machine, would count as one more notice of an order.
    payments = {**PAYMENTS, "test": {}, "reconcile_at": "off"}
    r = await running(payments=payments, web=dict(WEB), database={"url": db_url})
    assert r.db.dialect == db_url.split(":")[0].split("+")[0]
    r.open_account("A-101", ("E-101", "W-101"))
    r.provider = double_plugin.made[-1]
    r.url = f"http://127.0.0.1:{_web(r).port}"
    yield r
    with r.db.read() as conn:
        report = ledger.verify(conn)
    assert report.ok, report.breaks


async def _order(r: Any, amount_fen: int = 5000) -> str:
    order, _ = await r.runtime.payments.start_payment(
        "A-101", amount_fen, "test", "native", actor="test:payer", description="Electricity A-101"
    )
    assert r.provider.requests[-1].notify_url == "https://pay.example.com/pay/notify/test"
    return order.out_trade_no


async def test_a_signed_callback_is_answered_then_credited_once(site: Any) -> None:
    no = await _order(site)
    headers, body = site.provider.notification(site.provider.pay(no))
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # a duplicate a moment later
            async with http.post(f"{site.url}/pay/notify/test", data=body, headers=headers) as resp:
                assert resp.status == 204
        await until(lambda: _state(site, no) is OrderState.CREDITED)
        assert _balance(site) == 5000
        # Two copies at once after the credit: answered, nothing changes.
        answers = await asyncio.gather(
            *(
                http.post(f"{site.url}/pay/notify/test", data=body, headers=headers)
                for _ in range(2)
            )
        )
        assert [a.status for a in answers] == [204, 204]
        for a in answers:
            a.release()
    await until(lambda: not site.runtime.payments._credits)
    assert _balance(site) == 5000
    with site.db.read() as conn:
        assert get_order(conn, no).notices == 4
    assert _web(site).counters.notify_accepted == 4


async def test_callbacks_arriving_together_are_each_answered_as_alone(site: Any) -> None:
    """Callbacks verified in one turn of the event loop go to the door together: ten
    orders, three copies of each and a callback naming no order of ours, all at once."""
    orders = [await _order(site, 1000) for _ in range(10)]
    signed = [site.provider.notification(site.provider.pay(no)) for no in orders]
    stranger = site.provider.notification(
        replace(site.provider.pay(orders[0]), out_trade_no="OPnope")
    )
    async with aiohttp.ClientSession() as http:

        async def post(headers: Any, body: bytes) -> int:
            async with http.post(f"{site.url}/pay/notify/test", data=body, headers=headers) as r:
                return r.status

        answers = await asyncio.gather(
            *(post(h, b) for _ in range(3) for h, b in signed), post(*stranger)
        )
    assert answers == [204] * 30 + [500]
    await until(lambda: not site.runtime.payments._credits)
    assert all(_state(site, no) is OrderState.CREDITED for no in orders)
    assert _balance(site) == 10 * 1000
    with site.db.read() as conn:
        assert all(get_order(conn, no).notices == 3 for no in orders)
    counters = _web(site).counters
    assert counters.notify_accepted == 30 and counters.notify_failed == 1


async def test_a_forged_callback_is_refused_and_changes_nothing(site: Any) -> None:
    no = await _order(site)
    headers, body = site.provider.notification(site.provider.pay(no), bad=True)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{site.url}/pay/notify/test", data=body, headers=headers) as resp:
            assert resp.status == 500 and b"FAIL" in await resp.read()
        async with http.post(f"{site.url}/pay/notify/nope", data=body, headers=headers) as resp:
            assert resp.status == 404
    assert _state(site, no) is OrderState.CREATED and _balance(site) == 0
    assert _web(site).counters.notify_refused == 1


async def test_a_mismatched_amount_over_the_wire_is_a_conflict(site: Any) -> None:
    no = await _order(site)
    headers, body = site.provider.notification(site.provider.pay(no, amount_fen=1))
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{site.url}/pay/notify/test", data=body, headers=headers) as resp,
    ):
        assert resp.status == 204  # stored (for a person): the provider need not retry
    assert _state(site, no) is OrderState.CONFLICT and _balance(site) == 0


async def test_an_oversized_body_is_refused(site: Any) -> None:
    async with aiohttp.ClientSession() as http:
        big = b"x" * (70 * 1024)
        async with http.post(f"{site.url}/pay/notify/test", data=big) as resp:
            assert resp.status == 413


async def test_health_and_its_points(site: Any) -> None:
    samples: list[Sample] = []
    site.runtime.bus.subscribe(Sample, lambda s: samples.append(s) if s.source == "web" else None)
    async with aiohttp.ClientSession() as http, http.get(f"{site.url}/health") as resp:
        assert resp.status == 200
        data = await resp.json()
    assert data["status"] == "ok" and data["payment_channels"] == ["test"] and data["up"]
    _web(site)._publish()
    assert (
        samples
        and samples[-1].values["requests"] >= 1
        and samples[-1].model.name == "openprepay.web"
    )


async def test_the_rate_limit_spares_the_providers_callbacks(site: Any) -> None:
    web = _web(site)
    web.limiter.capacity = web.limiter.rate = 0.0  # no request allowed for anyone
    web.limiter._buckets.clear()
    no = await _order(site)
    headers, body = site.provider.notification(site.provider.pay(no))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{site.url}/health") as resp:
            assert resp.status == 429
        async with http.post(f"{site.url}/pay/notify/test", data=body, headers=headers) as resp:
            assert resp.status == 204
    await until(lambda: _state(site, no) is OrderState.CREDITED)
