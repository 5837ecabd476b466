"""A change made by another process — the CLI while the service runs — reaches OPC UA
subscribers through the event outbox: its audit event within a second, and the account's
variables."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import pytest
from asyncua import ua

from tests.conftest import until, until_async

from .conftest import OpcUaSite
from .test_prepayment import Events, value

pytestmark = pytest.mark.asyncio(loop_scope="session")


class TimedEvents(Events):
    """Events with the monotonic time each arrived at the client."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[int, float] = {}

    def event_notification(self, event: Any) -> None:
        self.arrived[id(event)] = time.monotonic()
        super().event_notification(event)


async def cli(site_file: str, *args: str, user: str) -> tuple[int, str]:
    """`openprepay ARGS` in a process of its own, as an operator at a shell would run it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "openprepay.core.cli",
        *args[:1],
        site_file,
        *args[1:],
        env={**os.environ, "USER": user, "LOGNAME": user},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_a_cli_topup_reaches_opcua_subscribers_within_a_second(
    opcua_site: OpcUaSite,
) -> None:
    async with opcua_site.connect("viewer1") as client:
        t = await client.get_namespace_index("urn:openprepay:types")
        events = TimedEvents()
        sub = await client.create_subscription(50, events)
        await sub.subscribe_events(
            client.nodes.server, [client.get_node(ua.NodeId("OpenPrepayAuditEventType", t))]
        )
        before = await value(client, "Account:A-102/BalanceFen")

        code, out = await cli(
            str(opcua_site.site_file),
            "topup",
            "A-102",
            "12.34",
            "--ref",
            "outbox-cli-1",
            "--channel",
            "cash",
            user="outbox",
        )
        committed = time.monotonic()  # the CLI exits after its transaction committed
        assert code == 0, out

        def arrived() -> list[Any]:
            return events.of(ClientUserId="cli:outbox", Operation="topup", Target="A-102")

        # The promise of the event outbox (poll 0.2 s, publishing interval 50 ms): the
        # audit event of a change made elsewhere is on the subscription within a second.
        await until(arrived, timeout=1.0)
        (event,) = arrived()
        assert event.Status is True
        assert "12.34" in event.Result
        assert events.arrived[id(event)] - committed < 1.0

        # The account's variables follow (an account sample published by the service).
        async def credited() -> bool:
            fen = await value(client, "Account:A-102/BalanceFen")
            return fen is not None and before is not None and fen >= before + 1234 - 100

        await until_async(credited)
        await sub.delete()
