"""`DirectWriter` against asyncua's own address space: a stored value reads back exactly as
asyncua's `write_attribute_value` would have left it, a monitored variable still notifies
its subscription, and an asyncua whose internals moved fails here first."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from asyncua import Server, ua
from asyncua.server.address_space import AttributeValue
from asyncua.server.monitored_item_service import MonitoredItemValues

from openprepay.opcua_server.bindings import PointBinding
from openprepay.opcua_server.direct_write import DirectWriter, SharedDataValue


class Changes:
    def __init__(self) -> None:
        self.values: list[object] = []

    def datachange_notification(self, node: object, val: object, data: object) -> None:
        self.values.append(val)


def test_the_asyncua_internals_it_relies_on_are_there() -> None:
    attval = AttributeValue(ua.DataValue())
    assert {"value", "value_callback", "value_setter", "datachange_callbacks"} <= set(vars(attval))
    # a monitored item keeps a deep copy of each value: a shared one is not copied
    shared = SharedDataValue(ua.Variant(1.5, ua.VariantType.Double), ua.StatusCode())
    kept = MonitoredItemValues()
    kept.set_current_datavalue(shared)
    assert kept.get_current_datavalue() is shared
    plain = ua.DataValue(ua.Variant(1.5, ua.VariantType.Double))
    kept.set_current_datavalue(plain)
    assert kept.get_current_datavalue() is not plain
    assert kept.get_current_datavalue() == plain


async def test_values_read_back_and_subscribers_still_hear_of_them() -> None:
    server = Server()
    await server.init()
    try:
        idx = await server.register_namespace("urn:test")
        quiet = await server.nodes.objects.add_variable(idx, "Quiet", 0.0)
        watched = await server.nodes.objects.add_variable(idx, "Watched", 0.0)
        writer = DirectWriter(server.iserver.aspace)
        at = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
        dv = ua.DataValue(ua.Variant(12.5, ua.VariantType.Double), ua.StatusCode(), at, at)
        # Nobody monitors it: stored at once.
        assert writer.write(PointBinding(quiet.nodeid, ua.VariantType.Double, float), dv) is None
        read = await quiet.read_data_value()
        assert (read.Value.Value, read.SourceTimestamp, read.StatusCode.is_good()) == (
            12.5,
            at,
            True,
        )

        changes = Changes()
        subscription = await server.create_subscription(10, changes)
        await subscription.subscribe_data_change(watched)
        bad = ua.DataValue(
            ua.Variant(None, ua.VariantType.Null), ua.StatusCode(ua.StatusCodes.BadTimeout), at
        )
        point = PointBinding(watched.nodeid, ua.VariantType.Double, float)
        for value in (SharedDataValue(ua.Variant(7.0, ua.VariantType.Double)), bad):
            told = writer.write(point, value)
            assert told is not None
            await told
        for _ in range(100):
            if len(changes.values) >= 3:  # the initial value, 7.0, then the Bad null
                break
            await asyncio.sleep(0.02)
        assert changes.values[-2:] == [7.0, None]
        assert (await watched.read_data_value(raise_on_bad_status=False)).StatusCode.is_bad()
        assert (writer.direct, writer.awaited) == (1, 2)
        await subscription.delete()
    finally:
        await server.stop()
