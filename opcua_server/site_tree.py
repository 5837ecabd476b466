"""The site tree in the address space, built once at start from the site file::

    Objects/OpenPrepay/
      Sites/<site>/Buildings/<b>/Floors/<f>/Rooms/<r>/Meters/<m>
                  /Buildings/<b>/Meters/<m>           (common-area meters)
                  /Meters/<m>                         (meters of no room or building)
                  /Links/<link>
      Accounts/                                      (filled by the accounts extension)

Every meter, room and link is recorded in the space's lookups (`meter_nodes`,
`room_nodes`, `meter_bindings`...) for the publisher, the methods and the events.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from asyncua import ua

from openprepay.core.field.diagnostics import HEALTH_MODEL, LINK_MODEL
from openprepay.core.model import DeviceModel, MeterKind

from .bindings import NULL, WAITING, PointBinding, Target
from .nodes import FOLDER_TYPE, HAS_COMPONENT
from .space import SUBSCRIBE_TO_EVENTS, Space, datatype_of


def build_site_tree(space: Space) -> None:
    """The whole tree (after the types and the extensions' declarations)."""
    # Hundreds of thousands of long-lived objects: without the collector running over a
    # growing heap on every allocation burst, building is several times faster.
    enabled = gc.isenabled()
    gc.disable()
    try:
        site_node = _site(space)
        site_id = space.site.id
        buildings = space.folder(f"Site:{site_id}/Buildings", "Buildings", site_node)
        links = space.folder(f"Site:{site_id}/Links", "Links", site_node)
        building_meters, floor_rooms = _buildings(space, buildings)
        room_meters = _rooms(space, floor_rooms)
        _meters(space, site_node, building_meters, room_meters)
        _links(space, links)
    finally:
        if enabled:
            gc.enable()


def _site(space: Space) -> ua.NodeId:
    """OpenPrepay (with the Sites and Accounts folders) and the site's object."""
    w, site = space.writer, space.site
    root = w.object(
        space.iid("OpenPrepay"),
        space.iq("OpenPrepay"),
        ua.NodeId(ua.ObjectIds.ObjectsFolder),
        FOLDER_TYPE,
        event_notifier=SUBSCRIBE_TO_EVENTS,
    )
    sites = space.folder("OpenPrepay/Sites", "Sites", root.nodeid)
    space.folder("OpenPrepay/Accounts", "Accounts", root.nodeid)
    site_node = w.object(
        space.iid(f"Site:{site.id}"),
        space.iq(site.id),
        sites,
        space.types["SiteType"],
        display=site.info.name or site.id,
    )
    space.add_properties(
        site_node.nodeid,
        f"Site:{site.id}",
        {
            "Name": site.info.name,
            "TimeZone": site.info.timezone,
            "Currency": site.info.currency,
        },
    )
    return site_node.nodeid


def _buildings(
    space: Space, buildings: ua.NodeId
) -> tuple[dict[str, ua.NodeId], dict[tuple[str, str], ua.NodeId]]:
    """Buildings and their floors; the Meters folder of a building with common-area meters
    (by building) and the Rooms folder of each floor (by building and floor)."""
    w, site = space.writer, space.site
    building_meters: dict[str, ua.NodeId] = {}
    floor_rooms: dict[tuple[str, str], ua.NodeId] = {}
    for b in site.buildings.values():
        bnode = w.object(
            space.iid(f"Building:{b.id}"),
            space.iq(b.id),
            buildings,
            space.types["BuildingType"],
            display=b.name,
        )
        space.add_properties(bnode.nodeid, f"Building:{b.id}", {"Name": b.name})
        floors = space.folder(f"Building:{b.id}/Floors", "Floors", bnode.nodeid)
        for f in b.floors:
            fnode = w.object(
                space.iid(f"Floor:{b.id}/{f}"), space.iq(f), floors, space.types["FloorType"]
            )
            floor_rooms[(b.id, f)] = space.folder(f"Floor:{b.id}/{f}/Rooms", "Rooms", fnode.nodeid)
        if any(d.building == b.id and d.room is None for d in site.devices.values()):
            building_meters[b.id] = space.folder(f"Building:{b.id}/Meters", "Meters", bnode.nodeid)
    return building_meters, floor_rooms


def _rooms(space: Space, floor_rooms: Mapping[tuple[str, str], ua.NodeId]) -> dict[str, ua.NodeId]:
    """Every room on a known floor, with its Online variable; its Meters folder by room."""
    w = space.writer
    room_meters: dict[str, ua.NodeId] = {}
    for r in space.site.rooms.values():
        parent = floor_rooms.get((r.building, r.floor))
        if parent is None:
            continue
        rnode = w.object(
            space.iid(f"Room:{r.id}"),
            space.iq(r.id),
            parent,
            space.types["RoomType"],
            display=r.name,
            event_notifier=SUBSCRIBE_TO_EVENTS,
        )
        props: dict[str, Any] = {"Name": r.name}
        space.add_properties(rnode.nodeid, f"Room:{r.id}", props)
        if r.area_m2 is not None:
            space.add_property(
                rnode.nodeid, f"Room:{r.id}/AreaM2", "AreaM2", r.area_m2, ua.VariantType.Double
            )
        space.room_online[r.id] = space.iid(f"Room:{r.id}/Online")
        w.variable(
            space.room_online[r.id],
            space.tq("Online"),
            rnode.nodeid,
            NULL,
            datatype_of(ua.VariantType.Boolean),
            status=WAITING,
            description="True while every meter of the room answers",
        )
        space.room_nodes[r.id] = rnode.nodeid
        room_meters[r.id] = space.folder(f"Room:{r.id}/Meters", "Meters", rnode.nodeid)
    return room_meters


def _meters(
    space: Space,
    site_node: ua.NodeId,
    building_meters: Mapping[str, ua.NodeId],
    room_meters: Mapping[str, ua.NodeId],
) -> None:
    """Every device of a known model: under its room, else its building, else the site."""
    site = space.site
    other_meters: ua.NodeId | None = None
    for device in site.devices.values():
        model = space.models.get(device.model)
        if model is None:
            continue
        if device.room is not None and device.room in room_meters:
            parent = room_meters[device.room]
            location = f"room {device.room}"
            space.room_meters.setdefault(device.room, []).append(device.id)
            space.meter_room[device.id] = device.room
        elif device.building is not None and device.building in building_meters:
            parent = building_meters[device.building]
            location = f"building {device.building}"
        else:
            if other_meters is None:
                other_meters = space.folder(f"Site:{site.id}/Meters", "Meters", site_node)
            parent = other_meters
            location = f"site {site.id}"
        _meter(
            space,
            device.id,
            model,
            parent,
            {
                "MeterId": device.id,
                "Model": model.name,
                "Vendor": model.vendor,
                "Product": model.product,
                "ControlMode": device.control_mode.value,
                "LinkId": device.link,
                "Location": location,
            },
            device.unit_id,
            device.address,
        )
        refresh = space.timestamp_refresh_s
        space.meter_bindings[device.id].refresh = timedelta(
            seconds=site.poll_interval(device) if refresh is None else refresh
        )


def _meter(
    space: Space,
    meter_id: str,
    model: DeviceModel,
    parent: ua.NodeId,
    props: Mapping[str, str],
    unit_id: int | None,
    address: str | None = None,
) -> None:
    """One meter: its points, Online, its Communication health and its methods. A Modbus
    meter has a UnitId property; a DL/T 645 or CJ/T 188 meter an Address (its nameplate
    address, as a string: leading zeros count) and a UnitId only where the site gives one."""
    w = space.writer
    type_name = "WaterMeterType" if model.kind is MeterKind.WATER else "ElectricMeterType"
    base = f"Meter:{meter_id}"
    node = w.object(
        space.iid(base),
        space.iq(meter_id),
        parent,
        space.types[type_name],
        event_notifier=SUBSCRIBE_TO_EVENTS,
        description=model.description,
    )
    space.add_properties(node.nodeid, base, props)
    if unit_id is not None:
        space.add_property(node.nodeid, f"{base}/UnitId", "UnitId", unit_id, ua.VariantType.Int32)
    if address is not None:
        space.add_property(
            node.nodeid, f"{base}/Address", "Address", address, ua.VariantType.String
        )
    online = w.variable(
        space.iid(f"{base}/Online"),
        space.tq("Online"),
        node.nodeid,
        NULL,
        datatype_of(ua.VariantType.Boolean),
        status=WAITING,
        description="True while the meter answers its polls",
    )
    binding = space.bind_points(meter_id, model, node.nodeid, base)
    # Online follows the quality of every poll (the health statistics come later).
    binding.online = PointBinding(online.nodeid, ua.VariantType.Boolean, bool)
    space.meter_bindings[meter_id] = binding
    comm = w.object(
        space.iid(f"{base}/Communication"),
        space.tq("Communication"),
        node.nodeid,
        space.types["DeviceHealthType"],
        reference=HAS_COMPONENT,
    )
    space.bind_points(meter_id, HEALTH_MODEL, comm.nodeid, f"{base}/Communication")
    space.attach_methods(node.nodeid, "MeterType")
    space.meter_nodes[meter_id] = node.nodeid
    space.targets[node.nodeid] = Target("meter", meter_id)


def _links(space: Space, links: ua.NodeId) -> None:
    """Every link with its statistics."""
    w, site = space.writer, space.site
    for link in site.links.values():
        lnode = w.object(
            space.iid(f"Link:{link.id}"), space.iq(link.id), links, space.types["LinkType"]
        )
        space.add_properties(
            lnode.nodeid,
            f"Link:{link.id}",
            {"Address": link.address, "LinkKind": link.type.value, "Protocol": link.protocol.value},
        )
        space.bind_points(link.id, LINK_MODEL, lnode.nodeid, f"Link:{link.id}")
        space.link_nodes[link.id] = lnode.nodeid
