"""The lean Modbus client of TCP links (plugins/modbus/connection.py, frames.py).

Against pymodbus' server (the simulators: an independent implementation) it must read and
write what the pymodbus client does, pipelined on Modbus TCP. Against a raw scripted
server it must survive what gateways and devices do on a bad day: answers split across
reads, extra bytes, bad CRCs, another unit's answer, exception answers, answers that come
after the timeout or after the request was cancelled, broken MBAP headers, a closed
socket. The answers the script sends are built here with a bitwise CRC (tests/faultproxy),
not with the client's table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import pytest

from openprepay.core.config.site import LinkConfig, LinkType
from openprepay.core.errors import DeviceRejected, DeviceTimeout, GarbledResponse, LinkDown
from openprepay.plugins.modbus import ModbusTransport
from tests.faultproxy import crc16

from .conftest import Meter, StartBench

TIMEOUT_S = 0.2

# -- a scripted server ------------------------------------------------------------------------


@dataclass
class Request:
    """A request as the server parsed it."""

    unit: int
    function: int
    address: int
    #: Registers asked for (3, 4, 16) or the value written (6).
    count: int
    tid: int
    words: list[int]
    at: float


#: What to send back: (seconds to wait, bytes) pairs; a None chunk closes the connection.
Script = Callable[[Request], Sequence[tuple[float, bytes | None]]]


def words_of(address: int, count: int) -> list[int]:
    """The registers the scripted device holds: different for every address."""
    return [(0x1000 + 7 * (address + i)) & 0xFFFF for i in range(count)]


def read_pdu(function: int, words: list[int]) -> bytes:
    return bytes((function, 2 * len(words))) + b"".join(w.to_bytes(2, "big") for w in words)


def rtu(unit: int, pdu: bytes) -> bytes:
    frame = bytes((unit,)) + pdu
    return frame + crc16(frame)


def mbap(tid: int, unit: int, pdu: bytes, protocol: int = 0) -> bytes:
    return struct.pack(">HHHB", tid, protocol, len(pdu) + 1, unit) + pdu


@dataclass
class ScriptedServer:
    """A raw TCP server that parses Modbus requests (RTU or MBAP framing) and answers each
    as `script` says, each answer on its own clock (so answers can overtake each other)."""

    rtu: bool
    script: Script
    requests: list[Request] = field(default_factory=list)
    _server: asyncio.AbstractServer | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await (self._read_rtu(reader) if self.rtu else self._read_mbap(reader))
                self.requests.append(request)
                task = asyncio.create_task(self._answer(writer, self.script(request)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def _read_rtu(self, reader: asyncio.StreamReader) -> Request:
        head = await reader.readexactly(2)
        if head[1] == 16:
            body = await reader.readexactly(5)
            body += await reader.readexactly(body[4] + 2)
        else:
            body = await reader.readexactly(6)
        frame = head + body
        assert crc16(frame[:-2]) == frame[-2:], f"request with a bad CRC: {frame.hex(' ')}"
        return self._request(frame[0], frame[1:-2], tid=0)

    async def _read_mbap(self, reader: asyncio.StreamReader) -> Request:
        head = await reader.readexactly(7)
        tid, protocol, length, unit = struct.unpack(">HHHB", head)
        assert protocol == 0
        return self._request(unit, await reader.readexactly(length - 1), tid)

    def _request(self, unit: int, pdu: bytes, tid: int) -> Request:
        function, address, count = struct.unpack(">BHH", pdu[:5])
        words = [int.from_bytes(pdu[6 + 2 * i : 8 + 2 * i], "big") for i in range(count)]
        words = words if function == 16 else []
        return Request(unit, function, address, count, tid, words, time.monotonic())

    async def _answer(
        self, writer: asyncio.StreamWriter, chunks: Sequence[tuple[float, bytes | None]]
    ) -> None:
        for delay, chunk in chunks:
            await asyncio.sleep(delay)
            if chunk is None:
                writer.close()
                return
            writer.write(chunk)


def honest(request: Request, rtu_framing: bool) -> bytes:
    """The correct answer to `request`."""
    if request.function in (3, 4):
        pdu = read_pdu(request.function, words_of(request.address, request.count))
    else:
        pdu = struct.pack(">BHH", request.function, request.address, request.count)
    return rtu(request.unit, pdu) if rtu_framing else mbap(request.tid, request.unit, pdu)


#: `await scripted(script, **link_options)` → a connected transport and its server.
Scripted = Callable[..., Awaitable[tuple[ModbusTransport, ScriptedServer]]]


@pytest.fixture
async def scripted(link_type: LinkType) -> AsyncIterator[Scripted]:
    """`await scripted(script, **link_options)` → a connected transport and its server."""
    started: list[tuple[ModbusTransport, ScriptedServer]] = []

    async def start(script: Script, **options: object) -> tuple[ModbusTransport, ScriptedServer]:
        server = ScriptedServer(link_type is not LinkType.MODBUS_TCP, script)
        port = await server.start()
        link = LinkConfig(id="gw", type=link_type, host="127.0.0.1", port=port, timeout_s=TIMEOUT_S)
        transport = ModbusTransport(dataclasses.replace(link, **options))  # type: ignore[arg-type]
        assert transport.lean
        await transport.connect()
        started.append((transport, server))
        return transport, server

    yield start
    for transport, server in started:
        await transport.close()
        await server.stop()


def answer_with(*chunks: tuple[float, bytes | None]) -> Script:
    return lambda request: chunks


def is_rtu(link_type: LinkType) -> bool:
    return link_type is not LinkType.MODBUS_TCP


# -- hostile frames -------------------------------------------------------------------------


async def test_an_answer_split_across_reads_is_put_together(
    scripted: Scripted, link_type: LinkType
) -> None:
    def in_pieces(request: Request) -> list[tuple[float, bytes | None]]:
        frame = honest(request, is_rtu(link_type))
        cuts = [0, 1, 2, 3, 7, 8, len(frame) - 1, len(frame)]
        return [(0.005, frame[a:b]) for a, b in pairwise(cuts)]

    transport, _ = await scripted(in_pieces)
    assert await transport.read(1, 3, 0x0046, 28) == words_of(0x0046, 28)
    assert await transport.read(1, 4, 0x0000, 1) == words_of(0x0000, 1)
    assert transport.garbled_frames == 0


async def test_extra_bytes_after_an_answer_do_not_spoil_the_next(
    scripted: Scripted, link_type: LinkType
) -> None:
    def with_tail(request: Request) -> list[tuple[float, bytes | None]]:
        return [(0, honest(request, is_rtu(link_type)) + b"\x00\xff\x13")]

    transport, _ = await scripted(with_tail)
    for start in (0x0000, 0x0010, 0x0020):
        assert await transport.read(1, 3, start, 4) == words_of(start, 4)


async def test_a_bad_crc_is_garbled_and_keeps_the_link(
    scripted: Scripted, link_type: LinkType
) -> None:
    if not is_rtu(link_type):
        pytest.skip("Modbus TCP has no CRC")
    answers = iter(["bad", "good"])

    def corrupt_once(request: Request) -> list[tuple[float, bytes | None]]:
        frame = honest(request, True)
        if next(answers) == "bad":
            frame = frame[:-1] + bytes([frame[-1] ^ 0xA5])
        return [(0, frame)]

    transport, _ = await scripted(corrupt_once)
    with pytest.raises(GarbledResponse, match="CRC"):
        await transport.read(1, 3, 0x0000, 17)
    assert transport.garbled_frames == 1
    assert transport.connected
    assert await transport.read(1, 3, 0x0000, 17) == words_of(0x0000, 17)


async def test_an_answer_from_another_unit_is_never_taken(
    scripted: Scripted, link_type: LinkType
) -> None:
    foreign = {"then": "nothing"}

    def other_unit(request: Request) -> list[tuple[float, bytes | None]]:
        wrong = dataclasses.replace(request, unit=9)
        chunks: list[tuple[float, bytes | None]] = [(0, honest(wrong, is_rtu(link_type)))]
        if foreign["then"] == "the answer":
            chunks.append((0.01, honest(request, is_rtu(link_type))))
        return chunks

    transport, _ = await scripted(other_unit)
    with pytest.raises(GarbledResponse):
        await transport.read(1, 3, 0x0000, 2)
    assert transport.connected
    if is_rtu(link_type):
        # On RTU the frame may be a late answer of another device: the right one may follow.
        foreign["then"] = "the answer"
        assert await transport.read(1, 3, 0x0000, 2) == words_of(0x0000, 2)


async def test_an_exception_answer_is_rejected_with_its_code(
    scripted: Scripted, link_type: LinkType
) -> None:
    def refuse(request: Request) -> list[tuple[float, bytes | None]]:
        pdu = bytes((request.function | 0x80, 2))
        return [(0, rtu(request.unit, pdu) if is_rtu(link_type) else mbap(request.tid, 1, pdu))]

    transport, _ = await scripted(refuse)
    with pytest.raises(DeviceRejected, match="illegal data address") as raised:
        await transport.read(1, 3, 0x5030, 2)
    assert raised.value.code == 2
    with pytest.raises(DeviceRejected, match="exception 2"):
        await transport.write(1, 16, 0x0008, [1, 2])
    assert transport.garbled_frames == 0


@pytest.mark.parametrize("arrives", ["during the next request", "between requests"])
async def test_a_late_answer_is_never_taken_for_the_next_request(
    scripted: Scripted, link_type: LinkType, arrives: str
) -> None:
    timeout_s = 0.5
    late_s = timeout_s * 1.25

    def first_one_late(request: Request) -> list[tuple[float, bytes | None]]:
        # The first answer comes after its timeout; the next one's after the late one.
        delay = late_s if request.address == 0x0000 else timeout_s / 2
        return [(delay, honest(request, is_rtu(link_type)))]

    transport, _ = await scripted(first_one_late, timeout_s=timeout_s)
    with pytest.raises(DeviceTimeout, match=f"unit 1: no answer within {timeout_s:g} s"):
        await transport.read(1, 3, 0x0000, 17)
    if arrives == "between requests":
        await asyncio.sleep(late_s)
    assert await transport.read(1, 3, 0x0046, 28) == words_of(0x0046, 28)
    assert transport.connected


async def test_a_cancelled_read_leaves_no_answer_behind(
    scripted: Scripted, link_type: LinkType
) -> None:
    def slow_first(request: Request) -> list[tuple[float, bytes | None]]:
        delay = 0.08 if request.address == 0x0000 else 0.0
        return [(delay, honest(request, is_rtu(link_type)))]

    transport, _ = await scripted(slow_first)
    task = asyncio.create_task(transport.read(1, 3, 0x0000, 17))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The cancelled read's answer arrives while these wait or between them: never taken.
    for _ in range(3):
        assert await transport.read(1, 3, 0x0046, 28) == words_of(0x0046, 28)
        await asyncio.sleep(0.04)
    assert transport.garbled_frames == 0


async def test_a_silent_device_never_closes_the_link(
    scripted: Scripted, link_type: LinkType
) -> None:
    def unit_2_silent(request: Request) -> list[tuple[float, bytes | None]]:
        return [] if request.unit == 2 else [(0, honest(request, is_rtu(link_type)))]

    transport, _ = await scripted(unit_2_silent)
    for _ in range(5):
        with pytest.raises(DeviceTimeout):
            await transport.read(2, 3, 0x0000, 2)
    assert transport.connected
    assert await transport.read(1, 3, 0x0000, 2) == words_of(0x0000, 2)
    assert transport.transactions == 6


async def test_a_function_code_without_a_length_is_garbled(
    scripted: Scripted, link_type: LinkType
) -> None:
    def undecodable(request: Request) -> list[tuple[float, bytes | None]]:
        pdu = bytes([0x42, 0x01, 0x02])
        return [(0, rtu(request.unit, pdu) if is_rtu(link_type) else mbap(request.tid, 1, pdu))]

    transport, _ = await scripted(undecodable)
    expected = (
        "RTU frame with a CRC or length error"
        if is_rtu(link_type)
        else "MBAP frame with function code 0x42 that cannot be decoded"
    )
    with pytest.raises(GarbledResponse, match=expected):
        await transport.read(1, 3, 0x0000, 2)
    assert transport.garbled_frames == 1
    assert transport.connected


async def test_a_wrong_register_count_is_garbled(scripted: Scripted, link_type: LinkType) -> None:
    def short(request: Request) -> list[tuple[float, bytes | None]]:
        fewer = dataclasses.replace(request, count=request.count - 1)
        return [(0, honest(fewer, is_rtu(link_type)))]

    transport, _ = await scripted(short)
    with pytest.raises(GarbledResponse):
        await transport.read(1, 3, 0x0000, 17)
    assert transport.garbled_frames == 1


async def test_a_write_answer_must_echo_the_write(scripted: Scripted, link_type: LinkType) -> None:
    def wrong_address(request: Request) -> list[tuple[float, bytes | None]]:
        moved = dataclasses.replace(request, address=request.address + 1)
        return [(0, honest(moved if request.address == 0x001C else request, is_rtu(link_type)))]

    transport, server = await scripted(wrong_address)
    await transport.write(1, 16, 0x0008, [0x1234, 0x5678])
    assert server.requests[-1].words == [0x1234, 0x5678]
    await transport.write(1, 6, 0x0007, [3])
    assert (server.requests[-1].function, server.requests[-1].count) == (6, 3)
    with pytest.raises(GarbledResponse):
        await transport.write(1, 6, 0x001C, [2])


async def test_a_connection_closed_under_a_request_is_link_down(
    scripted: Scripted, link_type: LinkType
) -> None:
    transport, _ = await scripted(answer_with((0.01, None)))
    with pytest.raises(LinkDown):
        await transport.read(1, 3, 0x0000, 2)
    assert not transport.connected
    with pytest.raises(LinkDown, match="not connected"):
        await transport.read(1, 3, 0x0000, 2)
    await transport.connect()  # the arbiter reconnects the same transport
    assert transport.connected


async def test_the_inter_frame_gap_is_kept(scripted: Scripted, link_type: LinkType) -> None:
    gap_s = 0.03

    def prompt(request: Request) -> list[tuple[float, bytes | None]]:
        return [(0, honest(request, is_rtu(link_type)))]

    transport, server = await scripted(prompt, frame_gap_s=gap_s)
    for _ in range(4):
        await transport.read(1, 3, 0x0000, 2)
    times = [r.at for r in server.requests]
    # A lower bound only: the gap is a minimum silence, never a timing promise.
    assert all(b - a >= gap_s * 0.9 for a, b in pairwise(times))


# -- Modbus TCP framing ---------------------------------------------------------------------


@pytest.fixture
def mbap_only(link_type: LinkType) -> None:
    if is_rtu(link_type):
        pytest.skip("Modbus TCP framing")


@pytest.mark.usefixtures("mbap_only")
async def test_answers_out_of_order_reach_their_requests(scripted: Scripted) -> None:
    def later_first(request: Request) -> list[tuple[float, bytes | None]]:
        return [(0.1 - request.address / 1000, honest(request, False))]

    transport, server = await scripted(later_first, in_flight=4)
    starts = [0x0000, 0x0010, 0x0020, 0x0030]
    results = await asyncio.gather(*(transport.read(1, 3, s, 5) for s in starts))
    assert results == [words_of(s, 5) for s in starts]
    assert len({r.tid for r in server.requests}) == 4


@pytest.mark.usefixtures("mbap_only")
async def test_a_broken_mbap_header_is_garbled(scripted: Scripted) -> None:
    def bad_protocol(request: Request) -> list[tuple[float, bytes | None]]:
        pdu = read_pdu(3, words_of(request.address, request.count))
        return [(0, mbap(request.tid, request.unit, pdu, protocol=7))]

    transport, _ = await scripted(bad_protocol)
    with pytest.raises(GarbledResponse, match="MBAP protocol id 7"):
        await transport.read(1, 3, 0x0000, 2)
    assert transport.connected


@pytest.mark.usefixtures("mbap_only")
async def test_an_mbap_frame_cut_short_is_garbled_and_the_next_starts_clean(
    scripted: Scripted,
) -> None:
    answers = iter(["short", "good"])

    def short_once(request: Request) -> list[tuple[float, bytes | None]]:
        frame = honest(request, False)
        return [(0, frame[:-1] if next(answers) == "short" else frame)]

    transport, _ = await scripted(short_once)
    with pytest.raises(GarbledResponse, match="MBAP length 7 but only 6 bytes followed"):
        await transport.read(1, 3, 0x0000, 2)
    assert await transport.read(1, 3, 0x0000, 2) == words_of(0x0000, 2)


# -- against pymodbus' server ---------------------------------------------------------------


async def test_lean_and_pymodbus_clients_read_and_write_alike(bench: StartBench) -> None:
    one = await bench(Meter("xintai.valve_meter", unit_id=3), Meter("acrel.DDSY1352", unit_id=5))
    assert one.transport.lean
    reference = ModbusTransport(one.transport.link, lean=False)
    await reference.connect()
    try:
        for unit, driver in one.drivers.items():
            for block in driver.profile.blocks:
                lean = await one.transport.read(unit, block.function, block.start, block.count)
                ours = await reference.read(unit, block.function, block.start, block.count)
                assert lean == ours
        words = one.drivers[3].profile.codecs["remaining_volume"].encode(7.25)
        await one.transport.write(3, 16, 0x0008, words)
        assert await reference.read(3, 3, 0x0008, 2) == words
        await reference.write(3, 16, 0x0008, [0, 0])
        assert await one.transport.read(3, 3, 0x0008, 2) == [0, 0]
    finally:
        await reference.close()


async def test_a_silent_simulated_device_times_out_alone(bench: StartBench) -> None:
    one = await bench(Meter("acrel.DDSY1352", unit_id=1), Meter("acrel.DDSY1352", unit_id=2))
    one.sims[1].silent = True
    with pytest.raises(DeviceTimeout, match="unit 1: no answer within 1 s"):
        await one.transport.read(1, 3, 0x0000, 17)
    assert len(await one.transport.read(2, 3, 0x0000, 17)) == 17
    assert one.transport.connected


def test_serial_links_keep_pymodbus() -> None:
    serial = LinkConfig(id="bus", type=LinkType.SERIAL, device="/dev/ttyUSB0")
    tcp = LinkConfig(id="gw", type=LinkType.RTU_OVER_TCP, host="127.0.0.1", port=502)
    assert not ModbusTransport(serial).lean
    assert ModbusTransport(tcp).lean
    assert not ModbusTransport(tcp, lean=False).lean
