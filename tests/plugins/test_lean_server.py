"""The lean Modbus server answers byte for byte as pymodbus' server does.

Two gateways host identical simulated meters (same seeds, frozen clock): one served by
pymodbus, the reference the other tests use, one by `LeanModbusServer`. Every case sends the
same raw bytes to both on fresh connections and compares what comes back, frame by frame —
reads, writes, exception answers, unknown units, silent and garbling devices, corrupt and
odd frames — for RTU over TCP and for Modbus TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import struct
from collections.abc import AsyncIterator, Sequence

import pytest

from openprepay.core.app.plugins import Plugins
from openprepay.core.config.site import LinkConfig, LinkType
from openprepay.core.contracts import SimulatorOptions
from openprepay.plugins.modbus import GatewaySimulator
from openprepay.plugins.modbus.lean_server import crc16

from .conftest import FROZEN, Meter

#: How long a server may stay quiet before a case counts it as "no (more) answer".
QUIET_S = 0.08

METERS = (
    Meter("acrel.DDSY1352", unit_id=1),
    Meter("acrel.DTSD1352", unit_id=3),
    # A slow valve: it stays "closing" for the whole test on both sides.
    Meter("xintai.valve_meter", unit_id=2, options={"sim_valve_travel_s": 600}),
)


def rtu(unit: int, pdu: bytes) -> bytes:
    frame = bytes([unit]) + pdu
    return frame + crc16(frame)


def mbap(unit: int, pdu: bytes, tid: int = 7, protocol: int = 0) -> bytes:
    return struct.pack(">HHHB", tid, protocol, len(pdu) + 1, unit) + pdu


def read(function: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", function, address, count)


def write_one(address: int, value: int) -> bytes:
    return struct.pack(">BHH", 6, address, value)


def write_many(address: int, words: Sequence[int], byte_count: int | None = None) -> bytes:
    count = len(words)
    head = struct.pack(">BHHB", 16, address, count, 2 * count if byte_count is None else byte_count)
    return head + struct.pack(f">{count}H", *words)


#: (name, PDUs sent one after another as (unit, pdu)) — framed per link type by the test.
PDU_CASES: list[tuple[str, list[tuple[int, bytes]]]] = [
    ("read holding", [(1, read(3, 0x0000, 17)), (1, read(3, 0x0046, 28))]),
    ("read input", [(1, read(4, 0x0000, 17))]),
    ("read main meter", [(3, read(3, 0x0000, 0x20))]),
    ("read water meter", [(2, read(3, 0x0001, 28)), (2, read(3, 0x001D, 1))]),
    ("read, illegal address", [(1, read(3, 0x1000, 2)), (1, read(3, 0x0010, 4))]),
    ("read, count 0 and 126", [(1, read(3, 0x0000, 0)), (1, read(3, 0x0000, 126))]),
    ("unknown unit", [(9, read(3, 0x0000, 17)), (9, write_one(0x0057, 1))]),
    ("relay trip and read back", [(1, write_many(0x0057, [1, 1])), (1, read(3, 0x0000, 17))]),
    ("relay, FC06 echo is the read-back", [(1, write_one(0x0057, 1)), (1, write_one(0x0058, 0))]),
    ("write refused: value", [(1, write_many(0x0057, [2, 1]))]),
    ("write refused: address", [(1, write_many(0x0000, [1])), (1, write_one(0x7000, 1))]),
    ("top-up in sequence, then repeated", [(1, write_many(0x004E, [2, 0, 5000]))] * 2),
    ("valve close, FC06 echo", [(2, write_one(0x001C, 2)), (2, read(3, 0x0001, 28))]),
    ("FC16 byte count wrong", [(1, write_many(0x0057, [1, 1], byte_count=3))]),
    ("FC16 count 124", [(1, write_many(0x0057, [0] * 124))]),
    ("read coils (not a register function)", [(1, read(1, 0x0000, 8))]),
    ("unknown function", [(1, bytes([0x41, 0, 0, 0, 1]))]),
]


def rtu_cases() -> list[tuple[str, list[bytes]]]:
    cases = [(name, [rtu(u, p) for u, p in pdus]) for name, pdus in PDU_CASES]
    good = rtu(1, read(3, 0x0000, 17))
    cases += [
        ("bad CRC, then a good frame", [good[:-1] + bytes([good[-1] ^ 1]), good]),
        ("a frame in two pieces", [good[:3], good[3:]]),
        ("junk before a frame", [b"\x00\xff\x13" + good]),
        ("junk after a frame", [good + b"\x01\x02"]),
        ("two frames at once", [good + rtu(1, read(3, 0x0046, 28))]),
        ("short junk", [b"\x01\x03"]),
        ("oversized buffer", [bytes(600), good]),
    ]
    return cases


def tcp_cases() -> list[tuple[str, list[bytes]]]:
    cases = [(name, [mbap(u, p) for u, p in pdus]) for name, pdus in PDU_CASES]
    good = mbap(1, read(3, 0x0000, 17), tid=0x1234)
    cases += [
        ("transaction ids echoed", [mbap(1, read(3, 0, 17), tid=t) for t in (0, 1, 0xFFFF)]),
        ("protocol id not 0", [mbap(1, read(3, 0, 17), protocol=1), good]),
        ("a frame in two pieces", [good[:5], good[5:]]),
        ("two frames at once", [good + mbap(1, read(3, 0x0046, 28), tid=5)]),
        ("length too short", [good[:4] + b"\x00\x01" + good[6:]]),
        ("length 2, 9 bytes", [good[:4] + b"\x00\x02" + good[6:9]]),
        ("read PDU too long", [mbap(1, read(3, 0, 17) + b"\x00")]),
        ("oversized buffer", [mbap(1, bytes(520)), good]),
    ]
    return cases


@dataclasses.dataclass
class Pair:
    reference: GatewaySimulator
    lean: GatewaySimulator

    @property
    def both(self) -> tuple[GatewaySimulator, GatewaySimulator]:
        return self.reference, self.lean


async def start_pair(plugins: Plugins, link_type: LinkType, options: SimulatorOptions) -> Pair:
    gateways = []
    for lean in (False, True):
        served = dataclasses.replace(options, lean_server=lean)
        link = LinkConfig(id="gw", type=link_type, host="127.0.0.1", port=1, timeout_s=1.0)
        sims = [
            plugins.make_simulator(plugins.model(m.model), m.config(link.id), served)
            for m in METERS
        ]
        gateway = GatewaySimulator(link, sims, served)  # type: ignore[arg-type]
        await gateway.start()
        gateways.append(gateway)
    return Pair(*gateways)


@pytest.fixture
async def pair(plugins: Plugins, link_type: LinkType) -> AsyncIterator[Pair]:
    started = await start_pair(plugins, link_type, FROZEN)
    yield started
    for gateway in started.both:
        await gateway.stop()


async def exchange(gateway: GatewaySimulator, frames: Sequence[bytes]) -> list[bytes]:
    """Send each frame on one fresh connection; what came back after each."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    answers = []
    try:
        for frame in frames:
            writer.write(frame)
            await writer.drain()
            answers.append(await _until_quiet(reader))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return answers


async def _until_quiet(reader: asyncio.StreamReader) -> bytes:
    got = b""
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(1024), QUIET_S)
        except TimeoutError:
            return got
        if not chunk:
            return got
        got += chunk


async def compare(pair: Pair, frames: Sequence[bytes]) -> list[bytes]:
    reference, lean = await asyncio.gather(*(exchange(g, frames) for g in pair.both))
    assert lean == reference
    return reference


def cases_for(link_type: LinkType) -> list[tuple[str, list[bytes]]]:
    return tcp_cases() if link_type is LinkType.MODBUS_TCP else rtu_cases()


async def test_every_case_answers_as_pymodbus(pair: Pair, link_type: LinkType) -> None:
    answered = 0
    for name, frames in cases_for(link_type):
        answers = await compare(pair, frames)
        answered += sum(1 for a in answers if a)
        # The devices stayed alike: after every case both answer a full read alike.
        frame_of = mbap if link_type is LinkType.MODBUS_TCP else rtu
        probe = await compare(pair, [frame_of(1, read(3, 0x0046, 28))])
        assert probe[0], name
    # Not a comparison of silences: most cases have answers.
    assert answered > 20
    reference, lean = pair.both
    assert (lean.answered, lean.suppressed) == (reference.answered, reference.suppressed)


@pytest.mark.parametrize("fault", ["silent", "garbage"])
async def test_faulty_devices_answer_as_pymodbus(pair: Pair, link_type: LinkType, fault: str):
    for gateway in pair.both:
        setattr(gateway.devices[1], fault, True)
    frame_of = mbap if link_type is LinkType.MODBUS_TCP else rtu
    answers = await compare(pair, [frame_of(1, read(3, 0, 17)), frame_of(2, read(3, 1, 28))])
    assert (answers[0] == b"") is (fault == "silent") and answers[1]
    assert pair.lean.suppressed == pair.reference.suppressed == 1


async def test_serial_timing_answers_alike_and_holds_the_bus(
    plugins: Plugins, link_type: LinkType
) -> None:
    options = dataclasses.replace(FROZEN, serial_timing=True)
    started = await start_pair(plugins, link_type, options)
    try:
        frame_of = mbap if link_type is LinkType.MODBUS_TCP else rtu
        frames = [frame_of(1, read(3, 0, 17)), frame_of(1, write_many(0x0057, [1, 1]))]
        await compare(started, frames)
        # 9600 baud, 8 + 39 bytes of 11 bits, plus the 5 ms turnaround: about 59 ms.
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", started.lean.port)
        writer.write(frames[0])
        await reader.read(1024)
        writer.close()
        assert loop.time() - t0 >= 0.05
    finally:
        for gateway in started.both:
            await gateway.stop()
