"""A DL/T 645 meter in the address space: an Address property (its nameplate address, a
string), no UnitId unless the site gives one; a Modbus meter keeps its UnitId."""

from __future__ import annotations

from asyncua import Server

from openprepay.core.app.plugins import Plugins
from openprepay.core.config.site import parse_site
from openprepay.opcua_server.site_tree import build_site_tree
from openprepay.opcua_server.space import Space

SITE = {
    "site": {"id": "t"},
    "links": {
        "gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 1},
        "bus": {"type": "serial", "device": "/dev/ttyS9", "protocol": "dlt645"},
    },
    "buildings": {"A": {"floors": ["1"]}},
    "rooms": {"A-1": {"building": "A", "floor": "1"}},
    "devices": {
        "E1": {"model": "acrel.DDSY1352", "link": "gw", "unit_id": 3, "room": "A-1"},
        "D1": {
            "model": "dlt645.single_phase",
            "link": "bus",
            "address": "000012345678",
            "room": "A-1",
        },
    },
}


async def test_meter_properties_follow_the_link_protocol() -> None:
    plugins = Plugins.load()
    server = Server()
    space = Space(server, parse_site(SITE), plugins.models, history=False)
    await server.init()
    try:
        await space.register_namespaces()
        await space.build_types()
        build_site_tree(space)

        async def props(meter: str) -> dict[str, object]:
            node = server.get_node(space.meter_nodes[meter])
            return {
                (await p.read_browse_name()).Name: await p.read_value()
                for p in await node.get_properties()
            }

        dlt = await props("D1")
        assert dlt["Address"] == "000012345678" and "UnitId" not in dlt
        assert dlt["Model"] == "dlt645.single_phase"
        modbus = await props("E1")
        assert modbus["UnitId"] == 3 and "Address" not in modbus
        link = server.get_node(space.link_nodes["bus"])
        names = {
            (await p.read_browse_name()).Name: await p.read_value()
            for p in await link.get_properties()
        }
        assert names["Protocol"] == "dlt645"
    finally:
        await server.stop()
