"""The protocol-neutral framed transport against a simulated bus on a loopback socket,
with a toy protocol: AB <len> <payload> 0D, payload[0] = the device's address."""

from __future__ import annotations

import asyncio

import pytest

from openprepay.core.config.site import LinkConfig, LinkProtocol, LinkType
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.errors import DeviceTimeout, GarbledResponse, LinkDown
from openprepay.plugins.framed import FramedTransport, FrameScan, SimulatedBus
from openprepay.plugins.framed.framing import skip_preamble


class ToyFraming:
    name = "toy"
    preamble = b"\xfe\xfe"

    def scan(self, buffer: bytes) -> FrameScan:
        start = skip_preamble(buffer)
        rest = buffer[start:]
        if not rest:
            return FrameScan(start)
        if rest[0] != 0xAB:
            return FrameScan(start, problem=f"start byte 0x{rest[0]:02X}, expected 0xAB")
        if len(rest) < 2 or len(rest) < rest[1] + 3:
            return FrameScan(start)
        end = start + rest[1] + 3
        if buffer[end - 1] != 0x0D:
            return FrameScan(start, problem="no end byte")
        return FrameScan(start, end)


def frame(payload: bytes) -> bytes:
    return bytes([0xAB, len(payload)]) + payload + b"\x0d"


class ToyDevice:
    def __init__(self, address: int, cut_short: bool = False) -> None:
        self.address = address
        self.silent = False
        self.garbage = False
        self.cut_short = cut_short
        self.seen: list[bytes] = []

    def answer(self, request: bytes) -> bytes | None:
        self.seen.append(request)
        payload = request[2:-1]
        if payload[0] != self.address:
            return None
        out = frame(payload[:1] + payload[1:][::-1])
        return out[:3] if self.cut_short else out


def link(port: int) -> LinkConfig:
    return LinkConfig(
        "toy",
        LinkType.SERIAL,
        device=f"socket://127.0.0.1:{port}",
        baudrate=2400,
        parity="E",
        timeout_s=0.3,
        protocol=LinkProtocol.DLT645,
    )


@pytest.fixture
async def bus():
    devices = {"1": ToyDevice(1), "2": ToyDevice(2), "3": ToyDevice(3, cut_short=True)}
    sim = SimulatedBus(link(0), ToyFraming(), devices, SimulatorOptions())
    _, port = await sim.start()
    transport = FramedTransport(link(port), ToyFraming())
    await transport.connect()
    yield sim, transport
    await transport.close()
    await sim.stop()


async def test_request_goes_out_with_preamble_and_the_answer_comes_back(bus) -> None:
    sim, transport = bus
    answer = await transport.transact(frame(b"\x02abc"), "device 2")
    assert answer == frame(b"\x02cba")
    assert sim.devices["2"].seen[-1] == frame(b"\x02abc")
    assert transport.bytes_sent == len(frame(b"\x02abc")) + 2
    assert transport.transactions == 1


async def test_silent_device_is_a_timeout_and_the_link_stays_up(bus) -> None:
    sim, transport = bus
    sim.devices["1"].silent = True
    with pytest.raises(DeviceTimeout, match=r"device 1: no answer within 0\.3 s"):
        await transport.transact(frame(b"\x01x"), "device 1")
    assert transport.connected
    assert await transport.transact(frame(b"\x02yz"), "device 2") == frame(b"\x02zy")


async def test_garbling_device_and_short_answer_are_garbled(bus) -> None:
    sim, transport = bus
    sim.devices["1"].garbage = True
    # The toy framing has no checksum: the corrupted byte is the payload's last one.
    answer = await transport.transact(frame(b"\x01ab"), "device 1")
    assert answer != frame(b"\x01ba")
    with pytest.raises(GarbledResponse, match=r"cut short after 5 bytes \(FE FE AB 02 03\)"):
        await transport.transact(frame(b"\x03q"), "device 3")
    assert transport.garbled_frames == 1


async def test_nobody_answers_a_broadcast(bus) -> None:
    sim, transport = bus
    assert await transport.transact(frame(b"\x09t"), "everyone", reply=False) is None
    assert all(d.seen[-1] == frame(b"\x09t") for d in sim.devices.values())


async def test_noise_before_an_answer_is_garbled() -> None:
    async def noisy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"\x13\x37" + frame(b"\x01z"))
        await writer.drain()

    server = await asyncio.start_server(noisy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = FramedTransport(link(port), ToyFraming())
    await transport.connect()
    try:
        with pytest.raises(GarbledResponse, match="start byte 0x13"):
            await transport.transact(frame(b"\x01z"), "device 1")
    finally:
        await transport.close()
        server.close()


async def test_unreachable_gateway_is_link_down() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    transport = FramedTransport(link(port), ToyFraming())
    with pytest.raises(LinkDown, match="cannot open"):
        await transport.connect()


async def test_serial_timing_answers_the_same_and_wire_time_follows_the_baud_rate(bus) -> None:
    sim, transport = bus
    sim.options = SimulatorOptions(serial_timing=True, turnaround_s=0.0)
    assert await transport.transact(frame(b"\x02ab"), "device 2") == frame(b"\x02ba")
    # 8E1: 11 bits a character at 2400 baud.
    assert sim.wire_time_s(24) == transport.wire_time_s(24) == pytest.approx(24 * 11 / 2400)
