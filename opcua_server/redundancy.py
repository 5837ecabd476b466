"""OPC UA non-transparent redundancy for instances of one site ([cluster], issue 13).

Each instance serves its own OPC UA server (its own ApplicationUri,
`urn:openprepay:<site>:<instance>:opcua`): the links it owns are live there, every account
is (accounts are in the shared database). A SCADA client that knows the redundant set reads
on the Server object:

- `ServerRedundancy/RedundancySupport` = Warm (the standby runs and answers, but has no live
  meter data until it owns the links, as OPC UA Part 4 6.6.2.4.5.3 describes for devices that
  allow one connection);
- `ServerRedundancy/ServerUriArray` = the ApplicationUris of the instances alive at the last
  heartbeat (this one included);
- `ServiceLevel` = 250 on an instance that owns links, 100 on a standby (200 for an instance
  configured to own none), updated on every change of owner: clients pick the highest.

What asyncua's standard address space cannot express here: its `ServerRedundancy` object is
of `ServerRedundancyType` and stays so (the type definition of a standard node is not
changed), so `ServerUriArray` is added as a property with the standard browse name rather
than inherited from `NonTransparentRedundancyType`; `ServerArray` is left as asyncua has it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asyncua import Server, ua

from openprepay.core.tasks import stop_task

log = logging.getLogger("openprepay.opcua")

REFRESH_S = 2.0


def application_uri(site_id: str, instance_id: str | None) -> str:
    if instance_id is None:
        return f"urn:openprepay:{site_id}:opcua"
    return f"urn:openprepay:{site_id}:{instance_id}:opcua"


class Redundancy:
    def __init__(self, server: Server, cluster: Any, site_id: str, ns: int) -> None:
        self.server = server
        self.cluster = cluster
        self.site_id = site_id
        self.ns = ns
        self.level = server.get_node(ua.NodeId(ua.ObjectIds.Server_ServiceLevel))
        self.uris: Any = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def start(self) -> None:
        support = self.server.get_node(
            ua.NodeId(ua.ObjectIds.Server_ServerRedundancy_RedundancySupport)
        )
        await support.write_value(ua.Variant(ua.RedundancySupport.Warm, ua.VariantType.Int32))
        redundancy = self.server.get_node(ua.NodeId(ua.ObjectIds.Server_ServerRedundancy))
        self.uris = await redundancy.add_property(
            ua.NodeId("ServerRedundancy/ServerUriArray", self.ns),
            ua.QualifiedName("ServerUriArray", 0),
            ua.Variant(self._uris(), ua.VariantType.String),
        )
        await self.update()
        self._task = asyncio.create_task(self._refresh(), name="opcua-redundancy")

    async def stop(self) -> None:
        if self._task is not None:
            await stop_task(self._task)
            self._task = None

    def changed(self) -> None:
        """A change of owner: update ServiceLevel now (call on the server's loop)."""
        self._wake.set()

    def _uris(self) -> list[str]:
        return [application_uri(self.site_id, i) for i in self.cluster.peers]

    async def update(self) -> None:
        await self.level.write_value(ua.Variant(self.cluster.service_level(), ua.VariantType.Byte))
        if self.uris is not None:
            await self.uris.write_value(ua.Variant(self._uris(), ua.VariantType.String))

    async def _refresh(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), REFRESH_S)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.update()
            except Exception:
                log.exception("updating the OPC UA redundancy state failed")
