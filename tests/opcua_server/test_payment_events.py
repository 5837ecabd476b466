"""A `PaymentDiscrepancy` (trade-bill reconciliation, abnormal refund) reaches OPC UA
subscribers on the Server object as a PaymentDiscrepancyEventType with its fields."""

from __future__ import annotations

import pytest

from tests.conftest import until

from .conftest import OpcUaSite
from .test_prepayment import subscribe

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_payment_discrepancy_is_an_opcua_event(opcua_site: OpcUaSite) -> None:
    from openprepay.core.events import PaymentDiscrepancy

    async with opcua_site.connect("viewer1") as client:
        sub, events = await subscribe(client, "PaymentDiscrepancyEventType")
        opcua_site.runtime.bus.publish(
            PaymentDiscrepancy(
                "wechat",
                "credited_not_paid",
                "OP261202101500abcdefABCDEF",
                5000,
                "CREDITED here but not paid in the provider's bill",
                "2026-12-02",
            )
        )
        await until(lambda: events.of(Kind="credited_not_paid"))
        (found,) = events.of(Kind="credited_not_paid")
        assert (found.Channel, found.OutTradeNo, found.AmountFen, found.Day) == (
            "wechat",
            "OP261202101500abcdefABCDEF",
            5000,
            "2026-12-02",
        )
        assert found.Severity == 700 and "not paid" in found.Detail
        await sub.delete()
