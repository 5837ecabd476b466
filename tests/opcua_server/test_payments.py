"""The Payments object and the payment conflict alarm over a real client: figures read from
the real database, a mismatched notification raises PaymentConflictAlarmType on the Server
object and counts as a conflict; no reconciliation yet → BadWaitingForInitialData."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asyncua import Client, ua

from openprepay.core.contracts import PaymentRequest
from tests.conftest import until, until_async
from tests.payments.double import DoubleProvider

from .conftest import OpcUaSite
from .test_prepayment import subscribe

pytestmark = pytest.mark.asyncio(loop_scope="session")

S = ua.StatusCodes


async def data(client: Client, ident: str) -> ua.DataValue:
    s = await client.get_namespace_index("urn:openprepay:site:t")
    return await client.get_node(ua.NodeId(ident, s)).read_data_value(raise_on_bad_status=False)


async def test_the_payments_object_shows_the_figures(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("viewer1") as client:
        t, s = await opcua_site.ns(client)
        payments = await client.nodes.objects.get_child([f"{s}:OpenPrepay", f"{s}:Payments"])
        assert await payments.read_type_definition() == ua.NodeId("PaymentsType", t)
        names = {(await c.read_browse_name()).Name for c in await payments.get_children()}
        assert {
            "OrdersCreated",
            "OrdersCredited",
            "Conflicts",
            "CreditedToday",
            "CreditedTodayFen",
            "LastNotificationTime",
            "LastReconciliationTime",
            "LastReconciliationResult",
            "LastReconciliationDifferences",
        } <= names

        async def read() -> bool:
            return (await data(client, "Payments/OrdersCreated")).StatusCode.is_good()

        await until_async(read)
        # No reconciliation on this site: waiting for one, not a made-up value.
        for name in ("LastReconciliationTime", "LastReconciliationResult"):
            dv = await data(client, f"Payments/{name}")
            assert dv.StatusCode.value == S.BadWaitingForInitialData
        site = client.get_node(ua.NodeId(f"Site:{opcua_site.runtime.site.id}", s))
        assert payments.nodeid in [n.nodeid for n in await site.get_children()]


async def test_a_mismatched_payment_raises_the_conflict_alarm(opcua_site: OpcUaSite) -> None:
    ops = opcua_site.ops
    provider = DoubleProvider()
    ops.use_providers([provider])
    try:
        order = await asyncio.to_thread(
            ops.open_payment, "A-102", 2000, "test", "native", actor="test"
        )
        await provider.create(
            PaymentRequest(
                order.out_trade_no,
                order.amount_fen,
                order.currency,
                "test",
                order.expires_at,
                "native",
                "https://pay.example.com/pay/notify/test",
            )
        )
        async with opcua_site.connect("viewer1") as client:
            _, s = await opcua_site.ns(client)
            before = (await data(client, "Payments/Conflicts")).Value.Value or 0
            sub, events = await subscribe(client, "PaymentConflictAlarmType")
            notice = provider.pay(order.out_trade_no, amount_fen=1)
            outcome = await asyncio.to_thread(ops.apply_notice, notice, actor="web:test")
            assert outcome.state.value == "CONFLICT"

            await until(lambda: events.of(OutTradeNo=order.out_trade_no))
            (alarm,) = events.of(OutTradeNo=order.out_trade_no)
            assert alarm.AccountId == "A-102" and alarm.AmountFen == 2000
            assert alarm.Channel == "test" and alarm.Actor == "web:test"
            assert "amount 1 fen" in alarm.Reason
            assert alarm.SourceNode == ua.NodeId("Payments", s)
            assert alarm.NodeId == ua.NodeId(f"Payment:{order.out_trade_no}/Conflict", s)
            assert alarm.ActiveState.Text == "Active" and alarm.Retain is True

            async def counted() -> bool:
                dv = await data(client, "Payments/Conflicts")
                return dv.StatusCode.is_good() and dv.Value.Value == before + 1

            await until_async(counted)
            last = await data(client, "Payments/LastNotificationTime")
            assert last.StatusCode.is_good() and last.Value.Value is not None

            async def channel_shown() -> Any:
                dv = await data(client, "Payments/test/CreditedToday")
                return dv.StatusCode.is_good()

            await until_async(channel_shown)
            await sub.delete()
    finally:
        ops.use_providers([])
