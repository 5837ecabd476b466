"""[cluster]: every change of a link's owner this instance sees is an OPC UA event on the
Server object (LinkOwnerChangedEventType), so a SCADA learns which box drives which link."""

from __future__ import annotations

import pytest

from openprepay.core.events import LinkOwnerChanged
from tests.conftest import until

from .conftest import OpcUaSite
from .test_prepayment import subscribe

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_link_owner_changes_reach_server_subscribers(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("viewer1") as client:
        sub, events = await subscribe(client, "LinkOwnerChangedEventType")
        bus = opcua_site.runtime.bus
        bus.publish(LinkOwnerChanged("gw-x", "box-a", 7, "box-a"))
        bus.publish(LinkOwnerChanged("gw-x", None, 7, "box-a", "local deadline passed"))
        await until(lambda: len(events.of(LinkId="gw-x")) == 2)
        taken, given = events.of(LinkId="gw-x")
        assert (taken.Owner, taken.Epoch, taken.Instance) == ("box-a", 7, "box-a")
        assert (given.Owner, given.Detail) == ("", "local deadline passed")
        assert "given up by box-a" in given.Message.Text
        await sub.delete()
