"""An implausible reading (issue 9 §2) reaches OPC UA clients as an
ImplausibleReadingEventType event on the Server object, sourced at the meter."""

from __future__ import annotations

import pytest
from asyncua import ua

from openprepay.core.events import ImplausibleReading
from tests.conftest import until

from .conftest import OpcUaSite
from .test_prepayment import subscribe

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_an_implausible_reading_is_an_opc_ua_event(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("viewer1") as client:
        _, s = await opcua_site.ns(client)
        sub, events = await subscribe(client, "ImplausibleReadingEventType")
        opcua_site.runtime.bus.publish(
            ImplausibleReading("E-A-101", "gw1", "voltage", 3686.1, "at most 300 V")
        )
        await until(lambda: events.of(MeterId="E-A-101", Point="voltage"), timeout=30)
        event = events.of(MeterId="E-A-101", Point="voltage")[0]
        assert (event.LinkId, event.Value, event.Limit, event.Source) == (
            "gw1",
            3686.1,
            "at most 300 V",
            "sample",
        )
        assert event.SourceNode == ua.NodeId("Meter:E-A-101", s)
        assert "implausible voltage 3686.1" in event.Message.Text
        await sub.delete()
