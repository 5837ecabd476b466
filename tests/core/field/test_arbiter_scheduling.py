"""Scheduling rules of the link worker, observed through in-memory drivers.

The drivers here are stand-ins for device plugins (no server is replaced: the worker's
own scheduling is what is under test); the live tests run the same worker on sockets.
"""

from __future__ import annotations

import asyncio

from openprepay.core.config.site import DeviceConfig, LinkConfig, LinkType, PollPolicy
from openprepay.core.errors import DeviceRejected, DeviceTimeout, LinkDown
from openprepay.core.events import CommandExecuted, utcnow
from openprepay.core.field.arbiter import LinkWorker
from openprepay.core.model import (
    CommandOutcome,
    DeviceCommand,
    DeviceModel,
    MeterKind,
    PointSpec,
    Sample,
)

MODEL = DeviceModel("test.meter", "T", "T", MeterKind.ELECTRIC, "test", (PointSpec("x", "", "x"),))
LINK = LinkConfig("bus", LinkType.SERIAL, device="/dev/null", reconnect_min_s=0.01)


class Transport:
    def __init__(self) -> None:
        self.link = LINK
        self.connected = False
        self.refuse = 0

    async def connect(self) -> None:
        if self.refuse:
            self.refuse -= 1
            raise LinkDown("refused")
        self.connected = True

    async def close(self) -> None:
        self.connected = False


class Driver:
    def __init__(self, meter: str, log: list[str], transport: Transport) -> None:
        self.device = DeviceConfig(meter, MODEL.name, "bus", 1)
        self.model = MODEL
        self.log = log
        self.transport = transport
        self.fail_reads = False
        self.reject_writes = False
        self.state = 0

    def confirm_delay_s(self, command: DeviceCommand) -> float:
        return 0.0

    async def read(self) -> Sample:
        self.log.append(f"read {self.device.id}")
        await asyncio.sleep(0.001)
        if not self.transport.connected:
            raise LinkDown("gone")
        if self.fail_reads:
            raise DeviceTimeout("silent")
        return Sample(self.device.id, MODEL, utcnow(), {"x": self.state})

    async def execute(self, command: DeviceCommand) -> None:
        self.log.append(f"execute {command.name} {command.meter_id}")
        await asyncio.sleep(0.001)
        if self.reject_writes:
            raise DeviceRejected("duplicate", 3)
        self.state = 1

    async def confirm(self, command: DeviceCommand) -> CommandOutcome:
        self.log.append(f"confirm {command.name} {command.meter_id}")
        return CommandOutcome(command, self.state == 1, f"state {self.state}")


def make_worker(n: int = 5, interval: float = 0.0) -> tuple[LinkWorker, list[str], dict, list]:
    log: list[str] = []
    published: list[object] = []
    transport = Transport()
    drivers = {f"m{i}": Driver(f"m{i}", log, transport) for i in range(n)}
    worker = LinkWorker(
        LINK,
        transport,
        drivers,
        PollPolicy(interval_s=interval, stats_interval_s=60),
        {m: interval for m in drivers},
        published.append,
    )
    return worker, log, drivers, published


async def run_briefly(worker: LinkWorker, body) -> None:
    task = asyncio.create_task(worker.run())
    try:
        await body()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_command_jumps_ahead_of_due_polls_and_its_confirmation_follows() -> None:
    worker, log, _, published = make_worker()

    async def body() -> None:
        await asyncio.sleep(0.02)  # polls are running back to back
        outcome = await worker.execute(DeviceCommand("m3", "TRIP", reason="test"))
        assert outcome.confirmed
        i = log.index("execute TRIP m3")
        # At most the transaction in flight finished in between; then the read-back.
        between = log[i + 1 : log.index("confirm TRIP m3")]
        assert len(between) <= 1
        assert [e.command for e in published if isinstance(e, CommandExecuted)] == ["TRIP"]

    await run_briefly(worker, body)


async def test_polls_rotate_over_every_device() -> None:
    worker, log, _, _ = make_worker(4)

    async def body() -> None:
        while len(log) < 40:
            await asyncio.sleep(0.005)

    await run_briefly(worker, body)
    reads = [entry.split()[1] for entry in log[:40]]
    for start in range(0, 36, 4):
        assert sorted(reads[start : start + 4]) == ["m0", "m1", "m2", "m3"]


async def test_refused_write_is_confirmed_by_read_back_when_the_device_is_in_the_wanted_state() -> (
    None
):
    worker, _log, drivers, _ = make_worker(2)
    drivers["m1"].state = 1  # e.g. the top-up already landed, the repeat is refused
    drivers["m1"].reject_writes = True

    async def body() -> None:
        outcome = await worker.execute(DeviceCommand("m1", "RECHARGE"))
        assert outcome.confirmed and "refused" in outcome.detail
        drivers["m0"].reject_writes = True
        try:
            await worker.execute(DeviceCommand("m0", "RECHARGE"))
        except DeviceRejected:
            pass
        else:
            raise AssertionError("a refused write that did not take effect must fail")

    await run_briefly(worker, body)


async def test_commands_fail_fast_while_the_link_is_down_and_polls_resume_after_reconnect() -> None:
    worker, log, _drivers, published = make_worker(2, interval=0.01)
    transport = worker.transport
    transport.refuse = 3

    async def body() -> None:
        try:
            await worker.execute(DeviceCommand("m0", "TRIP"))
        except LinkDown:
            pass
        else:
            raise AssertionError("expected LinkDown")
        while not any(isinstance(p, Sample) and p.quality.is_good for p in published):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(run_briefly(worker, body), 10)
    assert "execute TRIP m0" not in log
    assert worker.stats.reconnects == 0  # the first successful open is not a reconnect


async def test_a_driver_bug_in_a_read_back_does_not_stop_the_link() -> None:
    worker, log, drivers, _ = make_worker(2, interval=0.01)

    async def broken_confirm(command: DeviceCommand) -> CommandOutcome:
        raise RuntimeError("bug in a plugin")

    drivers["m0"].confirm = broken_confirm  # type: ignore[method-assign]

    async def body() -> None:
        outcome = await worker.execute(DeviceCommand("m0", "TRIP"))
        assert not outcome.confirmed and "bug in a plugin" in outcome.detail
        reads_before = sum(1 for entry in log if entry.startswith("read"))
        while sum(1 for entry in log if entry.startswith("read")) < reads_before + 4:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(run_briefly(worker, body), 10)
