"""HistoryRead served from the historian (the embedded store next to the site file)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from asyncua import Client, ua

from tests.conftest import until_async

from .conftest import OpcUaSite

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def history_page(
    client: Client,
    node: ua.NodeId,
    start: datetime,
    end: datetime,
    per_page: int,
    continuation: bytes | None = None,
) -> ua.HistoryReadResult:
    details = ua.ReadRawModifiedDetails(
        IsReadModified=False,
        StartTime=start,
        EndTime=end,
        NumValuesPerNode=per_page,
        ReturnBounds=False,
    )
    params = ua.HistoryReadParameters(
        HistoryReadDetails=details,
        TimestampsToReturn=ua.TimestampsToReturn.Both,
        ReleaseContinuationPoints=False,
        NodesToRead=[ua.HistoryReadValueId(NodeId=node, ContinuationPoint=continuation)],
    )
    (result,) = await client.uaclient.history_read(params)
    return result


async def test_raw_history_with_continuation_points(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("viewer1") as client:
        _, s = await opcua_site.ns(client)
        energy = ua.NodeId("Meter:E-A-101/energy_total", s)
        start = datetime.now(UTC) - timedelta(hours=1)
        end = datetime.now(UTC) + timedelta(minutes=1)

        async def enough() -> bool:
            values = await client.get_node(energy).read_raw_history(start, end)
            return len(values) >= 5

        await until_async(enough, timeout=30)

        # Pages of 2 with continuation points, oldest first, gap-free.
        seen = []
        continuation = None
        pages = 0
        while True:
            result = await history_page(client, energy, start, end, 2, continuation)
            assert result.StatusCode.is_good()
            values = result.HistoryData.DataValues
            assert len(values) <= 2
            seen.extend(values)
            pages += 1
            continuation = result.ContinuationPoint
            if not continuation or pages >= 5:
                break
        assert pages >= 3  # several pages, each handing on a continuation point
        times = [v.SourceTimestamp for v in seen]
        assert times == sorted(times) and len(set(times)) == len(times)
        good = [v for v in seen if v.StatusCode.is_good()]
        assert good and all(isinstance(v.Value.Value, float) for v in good)
        numbers = [v.Value.Value for v in good]
        assert numbers == sorted(numbers)  # a cumulative register

        # The client library's own loop over continuation points sees the same history.
        everything = await client.get_node(energy).read_raw_history(start, end, numvalues=0)
        assert [v.SourceTimestamp for v in everything[: len(seen)]] == times

        # Backwards (start after end): newest first.
        backwards = await history_page(client, energy, end, start, 3)
        back_times = [v.SourceTimestamp for v in backwards.HistoryData.DataValues]
        assert back_times == sorted(back_times, reverse=True) and len(back_times) == 3
        assert backwards.ContinuationPoint


async def test_history_access_and_account_balance_history(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("viewer1") as client:
        _, s = await opcua_site.ns(client)
        energy = client.get_node(ua.NodeId("Meter:E-A-101/energy_total", s))
        voltage = client.get_node(ua.NodeId("Meter:E-A-101/voltage", s))
        relay = client.get_node(ua.NodeId("Meter:E-A-101/supply_on", s))
        history_bit = ua.AccessLevel.HistoryRead.mask
        for node in (energy, relay):
            level = (await node.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value
            assert level & history_bit
            assert (await node.read_attribute(ua.AttributeIds.Historizing)).Value.Value is True
        level = (await voltage.read_attribute(ua.AttributeIds.AccessLevel)).Value.Value
        assert not level & history_bit

        balance = client.get_node(ua.NodeId("Account:A-101/BalanceFen", s))
        start = datetime.now(UTC) - timedelta(hours=1)
        end = datetime.now(UTC) + timedelta(minutes=1)

        async def balances() -> bool:
            return len(await balance.read_raw_history(start, end)) >= 1

        # Account samples follow every top-up and usage posting.
        await until_async(balances, timeout=30)
        values = await balance.read_raw_history(start, end)
        assert all(isinstance(v.Value.Value, int) for v in values if v.StatusCode.is_good())
