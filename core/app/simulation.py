"""A whole site of simulated devices, served on loopback sockets.

`SimulatedSite(site, plugins, options)` asks each device's plugin for an emulated device
and each link's plugin for a server that hosts them; `start()` serves them all and
`service_site()` returns the site rewritten to point at those servers (serial buses become
`socket://` URLs), ready for a `Runtime`. Used by `openprepay simulate`, the demo, the
tests and the benchmarks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from ..config.site import LinkType, Site
from ..contracts import LinkSimulator, SimulatedDevice, SimulatorOptions
from .plugins import Plugins

log = logging.getLogger("openprepay.simulation")


class SimulatedSite:
    def __init__(
        self, site: Site, plugins: Plugins, options: SimulatorOptions | None = None
    ) -> None:
        self.site = site
        self.plugins = plugins
        self.options = options or SimulatorOptions()
        self.devices: dict[str, SimulatedDevice] = {}
        self.links: dict[str, LinkSimulator] = {}
        self.addresses: dict[str, tuple[str, int]] = {}

    async def start(self) -> dict[str, tuple[str, int]]:
        for link in self.site.links.values():
            sims = []
            for device in self.site.devices_on(link.id):
                model = self.plugins.model(device.model, f"devices.{device.id}.model")
                sim = self.plugins.make_simulator(model, device, self.options)
                self.devices[device.id] = sim
                sims.append(sim)
            link_sim = self.plugins.make_link_simulator(link, sims, self.options)
            self.links[link.id] = link_sim
            self.addresses[link.id] = await link_sim.start()
        return self.addresses

    async def stop(self) -> None:
        """Stop every link's server at once (one after another took seconds at 10k meters)."""
        results = await asyncio.gather(
            *(link_sim.stop() for link_sim in self.links.values()), return_exceptions=True
        )
        for link_id, result in zip(self.links, results, strict=True):
            if isinstance(result, Exception):
                log.warning("stopping the simulator of link %s failed: %r", link_id, result)

    def service_site(self) -> Site:
        """The site with every link pointing at its simulator."""
        links = {}
        for link_id, link in self.site.links.items():
            host, port = self.addresses[link_id]
            if link.type is LinkType.SERIAL:
                links[link_id] = dataclasses.replace(link, device=f"socket://{host}:{port}")
            else:
                links[link_id] = dataclasses.replace(link, host=host, port=port)
        return dataclasses.replace(self.site, links=links)

    async def __aenter__(self) -> SimulatedSite:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
