"""The address space over a real client: tree, types, units, values, subscriptions, links."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asyncua import Client, ua

from openprepay.opcua_server.units import unit_id
from tests.conftest import until, until_async

from .conftest import OpcUaSite

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def meter_node(site: OpcUaSite, client: Client, room: str, meter: str):  # type: ignore[no-untyped-def]
    t, s = await site.ns(client)
    return await client.nodes.objects.get_child(
        [
            f"{s}:OpenPrepay",
            f"{t}:Sites",
            f"{s}:t",
            f"{t}:Buildings",
            f"{s}:A",
            f"{t}:Floors",
            f"{s}:1",
            f"{t}:Rooms",
            f"{s}:{room}",
            f"{t}:Meters",
            f"{s}:{meter}",
        ]
    )


async def test_browse_paths_types_and_stable_node_ids(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("viewer1") as client:
        t, s = await opcua_site.ns(client)
        meter = await meter_node(opcua_site, client, "A-101", "E-A-101")
        # NodeIds are derived from the site file, not from creation order.
        assert meter.nodeid == ua.NodeId("Meter:E-A-101", s)
        energy = await meter.get_child(f"{t}:energy_total")
        assert energy.nodeid == ua.NodeId("Meter:E-A-101/energy_total", s)

        async def type_name(node) -> str:  # type: ignore[no-untyped-def]
            typedef = client.get_node(await node.read_type_definition())
            return (await typedef.read_browse_name()).Name

        assert await type_name(meter) == "ElectricMeterType"
        water = await meter_node(opcua_site, client, "A-101", "W-A-101")
        assert await type_name(water) == "WaterMeterType"
        room = client.get_node(ua.NodeId("Room:A-101", s))
        assert await type_name(room) == "RoomType"
        assert await type_name(client.get_node(ua.NodeId("Building:A", s))) == "BuildingType"
        assert await type_name(client.get_node(ua.NodeId("Floor:A/1", s))) == "FloorType"
        assert await type_name(client.get_node(ua.NodeId("Site:t", s))) == "SiteType"
        assert await type_name(client.get_node(ua.NodeId("Link:gw1", s))) == "LinkType"
        assert (await (await room.get_child(f"{t}:Name")).read_value()) == "101"
        assert (await (await room.get_child(f"{t}:AreaM2")).read_value()) == 52.5

        # The types declare what instances have: a SCADA templates on them.
        electric = client.get_node(ua.NodeId("ElectricMeterType", t))
        (supertype,) = await electric.get_referenced_nodes(
            ua.ObjectIds.HasSubtype, ua.BrowseDirection.Inverse
        )
        assert supertype.nodeid == ua.NodeId("MeterType", t)
        names = {(await c.read_browse_name()).Name for c in await electric.get_children()}
        assert {"energy_total", "voltage", "power_active", "supply_on"} <= names
        meter_type = client.get_node(ua.NodeId("MeterType", t))
        names = {(await c.read_browse_name()).Name for c in await meter_type.get_children()}
        assert {"Online", "Communication", "Model", "Disconnect", "Reconnect"} <= names

        props = {
            (await c.read_browse_name()).Name: await c.read_value()
            for c in await meter.get_properties()
        }
        assert props["Model"] == "acrel.DDSY1352"
        assert props["ControlMode"] == "REMOTE"
        assert props["LinkId"] == "gw1"
        assert props["UnitId"] == 1


async def test_variables_are_analog_items_with_unece_units_and_ranges(
    opcua_site: OpcUaSite,
) -> None:
    async with opcua_site.connect("viewer1") as client:
        t, _ = await opcua_site.ns(client)
        meter = await meter_node(opcua_site, client, "A-101", "E-A-101")
        water = await meter_node(opcua_site, client, "A-101", "W-A-101")
        expected = {
            (meter, "energy_total"): ("kWh", "KWH"),
            (meter, "voltage"): ("V", "VLT"),
            (meter, "current"): ("A", "AMP"),
            (meter, "power_active"): ("kW", "KWT"),
            (meter, "power_reactive"): ("kvar", "KVR"),
            (water, "volume_forward"): ("m³", "MTQ"),
            (water, "flow_rate"): ("m³/h", "MQH"),
        }
        for (parent, point), (unit, code) in expected.items():
            var = await parent.get_child(f"{t}:{point}")
            eu = await (await var.get_child("0:EngineeringUnits")).read_value()
            assert eu.DisplayName.Text == unit, point
            assert eu.UnitId == unit_id(code), point
            assert eu.NamespaceUri == "http://www.opcfoundation.org/UA/units/un/cefact"
        voltage = await meter.get_child(f"{t}:voltage")
        assert await voltage.read_type_definition() == ua.NodeId(ua.ObjectIds.AnalogItemType)
        rng = await (await voltage.get_child("0:EURange")).read_value()
        assert (rng.Low, rng.High) == (0.0, 300.0)
        assert await voltage.read_data_type() == ua.NodeId(ua.ObjectIds.Double)
        # A state point has no unit: a plain variable.
        relay = await meter.get_child(f"{t}:supply_on")
        assert await relay.read_type_definition() == ua.NodeId(ua.ObjectIds.BaseDataVariableType)


async def test_values_follow_samples_with_device_time_and_quality(opcua_site: OpcUaSite) -> None:
    runtime = opcua_site.runtime
    await until(
        lambda: (
            (s := runtime.readings.get("E-A-101", "acrel.DDSY1352")) is not None
            and s.quality.is_good
        )
    )
    async with opcua_site.connect("viewer1") as client:
        _t, s = await opcua_site.ns(client)
        node = client.get_node(ua.NodeId("Meter:E-A-101/energy_total", s))

        async def matches() -> bool:
            sample = runtime.readings.get("E-A-101", "acrel.DDSY1352")
            dv = await node.read_data_value(raise_on_bad_status=False)
            return (
                dv.StatusCode.is_good()
                and sample is not None
                and dv.SourceTimestamp is not None
                and abs(dv.Value.Value - sample.values["energy_total"]) < 0.011
            )

        await until_async(matches)
        dv = await node.read_data_value()
        # The source timestamp is the meter's own clock (DDSY1352 has one), not the read.
        sample = runtime.readings.get("E-A-101", "acrel.DDSY1352")
        assert sample is not None
        assert (
            sample.device_time is None
            or abs(
                (
                    dv.SourceTimestamp.replace(tzinfo=None) - sample.time.replace(tzinfo=None)
                ).total_seconds()
            )
            < 120
        )
        online = client.get_node(ua.NodeId("Meter:E-A-101/Online", s))
        assert await online.read_value() is True
        room_online = client.get_node(ua.NodeId("Room:A-101/Online", s))
        await until_async(room_online.read_value)


class Collector:
    def __init__(self) -> None:
        self.items: list = []

    def datachange_notification(self, node, val, data) -> None:  # type: ignore[no-untyped-def]
        self.items.append((node, val, data.monitored_item.Value))

    def event_notification(self, event) -> None:  # type: ignore[no-untyped-def]
        self.items.append(event)

    def status_change_notification(self, status) -> None:  # type: ignore[no-untyped-def]
        pass


async def test_subscription_sees_changes(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("viewer1") as client:
        _, s = await opcua_site.ns(client)
        collector = Collector()
        sub = await client.create_subscription(50, collector)
        nodes = [
            client.get_node(ua.NodeId("Meter:E-A-101/energy_total", s)),
            client.get_node(ua.NodeId("Meter:W-A-101/volume_forward", s)),
        ]
        await sub.subscribe_data_change(nodes)

        def distinct(point: str) -> int:
            return len({v for n, v, _ in collector.items if n.nodeid.Identifier.endswith(point)})

        # The simulated meters run 60x: energy and volume keep growing.
        await until(lambda: distinct("energy_total") >= 3 and distinct("volume_forward") >= 2)
        values = [v for n, v, _ in collector.items if n.nodeid.Identifier.endswith("energy_total")]
        assert values == sorted(values)
        assert all(dv.StatusCode.is_good() for *_, dv in collector.items)
        await sub.delete()


async def test_link_statistics(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("viewer1") as client:
        t, s = await opcua_site.ns(client)
        link = client.get_node(ua.NodeId("Link:gw1", s))
        tps = await link.get_child(f"{t}:transactions_per_s")
        online = await link.get_child(f"{t}:devices_online")

        async def good() -> bool:
            a = await tps.read_data_value(raise_on_bad_status=False)
            b = await online.read_data_value(raise_on_bad_status=False)
            return a.StatusCode.is_good() and b.StatusCode.is_good() and b.Value.Value == 2

        await until_async(good)
        address = await (await link.get_child(f"{t}:Address")).read_value()
        assert address.startswith("127.0.0.1:")
        health = client.get_node(ua.NodeId("Meter:E-A-101/Communication/polls_ok", s))
        await until_async(lambda: _positive(health))


async def _positive(node) -> bool:  # type: ignore[no-untyped-def]
    dv = await node.read_data_value(raise_on_bad_status=False)
    return dv.StatusCode.is_good() and dv.Value.Value > 0


async def test_offline_meter_is_bad_never_stale_and_raises_condition(
    opcua_site: OpcUaSite,
) -> None:
    async with opcua_site.connect("viewer1") as client:
        t, s = await opcua_site.ns(client)
        alarm_type = client.get_node(ua.NodeId("CommunicationAlarmType", t))
        collector = Collector()
        sub = await client.create_subscription(50, collector)
        await sub.subscribe_events(client.nodes.server, alarm_type)
        energy = client.get_node(ua.NodeId("Meter:E-A-102/energy_total", s))
        online = client.get_node(ua.NodeId("Meter:E-A-102/Online", s))
        room_online = client.get_node(ua.NodeId("Room:A-102/Online", s))
        await until_async(lambda: _good(energy))

        opcua_site.sims.devices["E-A-102"].silent = True
        try:

            def alarm(active: bool) -> list:
                return [
                    e
                    for e in collector.items
                    if getattr(e, "SourceName", None) == "E-A-102"
                    and getattr(e, "ActiveState/Id", None) is active
                ]

            await until(lambda: alarm(True))
            event = alarm(True)[0]
            assert event.Retain is True
            assert getattr(event, "AckedState/Id") is False
            assert event.SourceNode == ua.NodeId("Meter:E-A-102", s)
            assert event.MeterId == "E-A-102" and event.LinkId == "gw1"
            assert event.ConditionName == "CommunicationLoss"
            assert event.NodeId == ua.NodeId("Meter:E-A-102/CommunicationAlarm", s)

            async def bad() -> bool:
                dv = await energy.read_data_value(raise_on_bad_status=False)
                return dv.StatusCode.value == ua.StatusCodes.BadNoCommunication

            await until_async(bad)
            dv = await energy.read_data_value(raise_on_bad_status=False)
            assert dv.Value.Value is None  # never the last value under a Bad status
            assert await online.read_value() is False
            assert await room_online.read_value() is False

            # A client that connects now gets the active alarm back on ConditionRefresh.
            late = Collector()
            sub2 = await client.create_subscription(50, late)
            await sub2.subscribe_events(client.nodes.server, alarm_type)
            await client.get_node(ua.ObjectIds.ConditionType).call_method(
                ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
                ua.Variant(sub2.subscription_id, ua.VariantType.UInt32),
            )
            await until(
                lambda: any(getattr(e, "SourceName", None) == "E-A-102" for e in late.items)
            )
            await sub2.delete()
        finally:
            opcua_site.sims.devices["E-A-102"].silent = False
        await until(lambda: alarm(False), timeout=30)
        cleared = alarm(False)[0]
        assert cleared.OfflineSeconds > 0
        # Never acknowledged: retained while inactive, until an operator acknowledges it.
        assert cleared.Retain is True
        assert getattr(cleared, "AckedState/Id") is False
        async with opcua_site.connect("operator1") as operator:
            await operator.get_node(cleared.NodeId).call_method(
                ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge),
                ua.Variant(cleared.EventId, ua.VariantType.ByteString),
                ua.Variant(ua.LocalizedText("gateway rebooted"), ua.VariantType.LocalizedText),
            )
        await until(
            lambda: [
                e
                for e in alarm(False)
                if getattr(e, "AckedState/Id", None) is True and e.Retain is False
            ]
        )
        done = next(e for e in alarm(False) if getattr(e, "AckedState/Id", None) is True)
        assert done.Comment.Text == "gateway rebooted"
        assert done.ClientUserId == "opcua:operator1"
        assert done.NodeId == ua.NodeId("Meter:E-A-102/CommunicationAlarm", s)
        await until_async(lambda: _good(energy), timeout=30)
        assert await online.read_value() is True
        await sub.delete()


async def _good(node) -> bool:  # type: ignore[no-untyped-def]
    return (await node.read_data_value(raise_on_bad_status=False)).StatusCode.is_good()


async def test_unknown_nodes_and_writes_are_refused(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("admin1") as client:
        _, s = await opcua_site.ns(client)
        node = client.get_node(ua.NodeId("Meter:E-A-101/voltage", s))
        # Variables are read-only: even an admin cannot write a measurement.
        with pytest.raises(ua.UaStatusCodeError):
            await node.write_value(ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)))
        await asyncio.sleep(0)


async def test_a_steady_good_value_gets_the_time_of_the_newest_sample(
    opcua_site: OpcUaSite,
) -> None:
    """A SCADA tells a frozen value from a steady one by its SourceTimestamp: a value that
    does not change still shows the time of the latest Good sample (every poll interval,
    0.3 s here, by default)."""
    async with opcua_site.connect("viewer1") as client:
        _, s = await opcua_site.ns(client)
        for ident in ("Meter:E-A-102/buy_count", "Meter:E-A-102/Online"):
            await _time_moves_on(client.get_node(ua.NodeId(ident, s)))


async def _time_moves_on(node: Any) -> None:
    async def good() -> bool:
        dv = await node.read_data_value(raise_on_bad_status=False)
        return dv.StatusCode.is_good() and dv.Value.Value is not None

    await until_async(good)
    first = await node.read_data_value()

    async def moved_on() -> bool:
        dv = await node.read_data_value()
        return dv.Value.Value == first.Value.Value and dv.SourceTimestamp > first.SourceTimestamp

    await until_async(moved_on)


async def test_unverified_registers_say_so_on_their_variable(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("viewer1") as client:
        t, s = await opcua_site.ns(client)

        async def properties(ident: str) -> dict[str, object]:
            node = client.get_node(ua.NodeId(ident, s))
            return {
                (await p.read_browse_name()).Name: await p.read_value()
                for p in await node.get_properties()
            }

        # DDSY1352: voltage rests on a single source, energy_total was checked on hardware.
        voltage = await properties("Meter:E-A-101/voltage")
        assert voltage["Verified"] is False
        assert "EngineeringUnits" in voltage
        assert "Verified" not in await properties("Meter:E-A-101/energy_total")
        verified = client.get_node(ua.NodeId("Meter:E-A-101/voltage/Verified", s))
        assert await verified.read_browse_name() == ua.QualifiedName("Verified", t)
        assert await verified.read_data_type() == ua.NodeId(ua.ObjectIds.Boolean)
