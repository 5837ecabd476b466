"""[cluster]: each instance's OPC UA server advertises non-transparent Warm redundancy, the
ApplicationUris of the live instances, and a ServiceLevel high while it owns links and low
as a standby, so SCADA clients pick the live one."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from asyncua import Server, ua

from openprepay.opcua_server.redundancy import Redundancy, application_uri

pytestmark = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Leases:
    """What the redundancy state reads from the lease manager (core/cluster/manager.py)."""

    instance: str = "box-a"
    peers: list[str] = field(default_factory=lambda: ["box-a", "box-b"])
    owned: bool = True

    def service_level(self) -> int:
        return 250 if self.owned else 100


async def test_service_level_follows_ownership_and_peers_are_listed() -> None:
    server = Server()
    await server.init()
    ns = await server.register_namespace("urn:openprepay:site:t")
    leases = Leases()
    redundancy = Redundancy(server, leases, "t", ns)
    await redundancy.start()
    try:
        support = server.get_node(ua.ObjectIds.Server_ServerRedundancy_RedundancySupport)
        assert await support.read_value() == ua.RedundancySupport.Warm
        level = server.get_node(ua.ObjectIds.Server_ServiceLevel)
        assert await level.read_value() == 250
        red = server.get_node(ua.ObjectIds.Server_ServerRedundancy)
        uris = await red.get_child("0:ServerUriArray")
        assert await uris.read_value() == [
            "urn:openprepay:t:box-a:opcua",
            "urn:openprepay:t:box-b:opcua",
        ]
        # box-a loses its links: it becomes the standby, and says so at once.
        leases.owned = False
        leases.peers = ["box-a", "box-b", "box-c"]
        await redundancy.update()
        assert await level.read_value() == 100
        assert len(await uris.read_value()) == 3
    finally:
        await redundancy.stop()
    assert application_uri("t", None) == "urn:openprepay:t:opcua"  # one process: as before
