"""`DirectWriter` against asyncua's own address space: a shown value reads back as
asyncua's `write_attribute_value` would have left it, a monitored variable still notifies
its subscription, and an asyncua whose internals moved fails here first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest_asyncio
from asyncua import Server, ua
from asyncua.server.address_space import AttributeValue
from asyncua.server.monitored_item_service import MonitoredItemValues

from openprepay.opcua_server.bindings import PointBinding, SharedDataValue
from openprepay.opcua_server.direct_write import DirectWriter


class Changes:
    def __init__(self) -> None:
        self.values: list[object] = []

    def datachange_notification(self, node: object, val: object, data: object) -> None:
        self.values.append(val)

    async def heard(self, count: int) -> list[object]:
        """The values notified, once there are `count` of them (or after 2 s)."""
        for _ in range(100):
            if len(self.values) >= count:
                break
            await asyncio.sleep(0.02)
        return self.values


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


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    """asyncua's own server, initialised (its address space), not listening."""
    server = Server()
    await server.init()
    try:
        yield server
    finally:
        await server.stop()


def show(point: PointBinding, value: object, status: int, at: datetime) -> PointBinding:
    point.value, point.status, point.at, point.stored_at = value, status, at, at
    return point


async def tell(writer: DirectWriter, point: PointBinding) -> None:
    """Store what a monitored variable's `point` shows and tell its subscribers."""
    told = writer.store(point)
    assert told is not None  # monitored: subscribers are told
    await told


async def test_values_read_back_and_subscribers_still_hear_of_them(server: Server) -> None:
    idx = await server.register_namespace("urn:test")
    quiet = await server.nodes.objects.add_variable(idx, "Quiet", 0.0)
    watched = await server.nodes.objects.add_variable(idx, "Watched", 0.0)
    writer = DirectWriter(server.iserver.aspace)
    at = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
    good, bad = ua.StatusCodes.Good, ua.StatusCodes.BadTimeout
    # Nobody monitors it: shown at once, built only when read.
    point = PointBinding(quiet.nodeid, ua.VariantType.Double, float)
    assert writer.store(show(point, 12.5, good, at)) is None
    read = await quiet.read_data_value()
    assert (read.Value.Value, read.Value.VariantType, read.SourceTimestamp) == (
        12.5,
        ua.VariantType.Double,
        at,
    )
    assert read.StatusCode.is_good()
    assert writer.store(show(point, None, bad, at)) is None
    read = await quiet.read_data_value(raise_on_bad_status=False)
    assert read.StatusCode.value == bad and read.Value.Value is None
    # The binding answers reads itself: no bound method (an object per variable) is kept.
    attval = server.iserver.aspace._nodes[quiet.nodeid].attributes[ua.AttributeIds.Value]
    assert attval.value_callback is point and attval.value is None

    changes = Changes()
    subscription = await server.create_subscription(10, changes)
    await subscription.subscribe_data_change(watched)
    watched_point = PointBinding(watched.nodeid, ua.VariantType.Double, float)
    for value, status in ((7.0, good), (None, bad)):
        await tell(writer, show(watched_point, value, status, at))
    # the initial value, 7.0, then the Bad null
    assert (await changes.heard(3))[-2:] == [7.0, None]
    assert (await watched.read_data_value(raise_on_bad_status=False)).StatusCode.is_bad()
    assert (writer.direct, writer.awaited) == (2, 2)

    # A client that starts monitoring a quiet variable gets what it shows, then changes;
    # once it leaves, values are shown without a DataValue again.
    assert writer.store(show(point, 3.25, good, at)) is None
    late = Changes()
    second = await server.create_subscription(10, late)
    handle = await second.subscribe_data_change(quiet)
    assert await late.heard(1) == [3.25]
    await tell(writer, show(point, 4.5, good, at))
    assert await late.heard(2) == [3.25, 4.5]
    await second.unsubscribe(handle)
    assert writer.store(show(point, 5.75, good, at)) is None
    assert (await quiet.read_value()) == 5.75
    await subscription.delete()
    await second.delete()


async def test_a_monitored_variable_keeps_one_value_and_hears_only_of_changes(
    server: Server,
) -> None:
    idx = await server.register_namespace("urn:test")
    watched = await server.nodes.objects.add_variable(idx, "Watched", 0.0)
    writer = DirectWriter(server.iserver.aspace)
    changes = Changes()
    subscription = await server.create_subscription(10, changes)
    await subscription.subscribe_data_change(watched)
    point = PointBinding(watched.nodeid, ua.VariantType.Double, float)
    at = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
    for value in (7.0, 7.0, 8.0):  # the repeat is compared with what came before it
        await tell(writer, show(point, value, ua.StatusCodes.Good, at))
    await changes.heard(3)
    await asyncio.sleep(0.1)  # time for a wrongly notified repeat to arrive
    assert changes.values == [0.0, 7.0, 8.0]

    # The monitored item holds the current value, the very one the address space
    # shows, and has let go of the one before it.
    attval = server.iserver.aspace._nodes[watched.nodeid].attributes[ua.AttributeIds.Value]
    [(handle, callback)] = attval.datachange_callbacks.items()
    service = callback.__self__
    item = service._monitored_items[service._monitored_datachange[handle]]
    assert item.mvalue.old_dvalue is None
    assert item.mvalue.current_dvalue is attval.value
    assert attval.value.Value.Value == 8.0
    await subscription.delete()
