"""A fault-injecting Modbus proxy: a loopback TCP proxy between the service and a simulated
gateway that rewrites answers as a faulty meter or gateway would, with a VALID checksum.

Requests go through unchanged. Each answer is cut out of the stream by its framing (RTU:
function code and byte count, then the CRC; Modbus TCP: the MBAP length) and, when a
queued `Fault` matches it (unit, function, first register), rewritten and sealed again
with a correct CRC or MBAP length: what the service sees is a well-formed frame carrying
wrong data. That is what a CRC cannot catch and plausibility must.

    proxy = FaultProxy(("127.0.0.1", sim_port), rtu=True)
    host, port = await proxy.start()          # point the link at it
    proxy.inject(Fault(unit=1, start=0x0000, rewrite=add_u32(0, 200_000)))   # +2000 kWh once
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

Rewrite = Callable[[list[int]], list[int]]


def crc16(frame: bytes) -> bytes:
    """Modbus RTU CRC-16 (polynomial 0xA001), low byte first."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc.to_bytes(2, "little")


@dataclass
class Fault:
    """Rewrite the registers of matching read answers.

    `rewrite(words) -> words` changes the registers of the answer (same count); `pdu`
    replaces the whole PDU instead (function code and data), e.g. with one no Modbus
    decoder understands. `times` answers are rewritten (None: until removed).
    """

    unit: int
    start: int
    rewrite: Rewrite | None = None
    pdu: bytes | None = None
    function: int = 3
    times: int | None = 1
    applied: int = 0

    @property
    def spent(self) -> bool:
        return self.times is not None and self.applied >= self.times


# -- register rewrites -----------------------------------------------------------------------


def add_u32(offset: int, delta: int, *more: int) -> Rewrite:
    """Add `delta` to the big-endian u32 at `offset` (and at each of `more` offsets)."""

    def rewrite(words: list[int]) -> list[int]:
        out = list(words)
        for at in (offset, *more):
            value = ((out[at] << 16) | out[at + 1]) + delta
            value %= 1 << 32
            out[at], out[at + 1] = value >> 16, value & 0xFFFF
        return out

    return rewrite


def set_word(offset: int, value: int) -> Rewrite:
    def rewrite(words: list[int]) -> list[int]:
        out = list(words)
        out[offset] = value & 0xFFFF
        return out

    return rewrite


def zeros(words: list[int]) -> list[int]:
    return [0] * len(words)


def random_words(seed: int) -> Rewrite:
    rng = random.Random(seed)
    return lambda words: [rng.randrange(0x10000) for _ in words]


# -- the proxy -------------------------------------------------------------------------------


@dataclass
class _Request:
    unit: int
    function: int
    start: int


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    #: RTU framing (serial links, RTU-over-TCP gateways); False: Modbus TCP (MBAP).
    rtu: bool = True
    faults: list[Fault] = field(default_factory=list)
    #: Answers rewritten so far.
    rewritten: int = 0
    _server: asyncio.AbstractServer | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return "127.0.0.1", self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def inject(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        self.faults.clear()

    # -- relaying -------------------------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        pending: deque[_Request] = deque()
        by_tid: dict[int, _Request] = {}
        tasks = [
            asyncio.create_task(self._requests(reader, up_writer, pending, by_tid)),
            asyncio.create_task(self._answers(up_reader, writer, pending, by_tid)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
                self._tasks.discard(task)
            writer.close()
            up_writer.close()

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        up: asyncio.StreamWriter,
        pending: deque[_Request],
        by_tid: dict[int, _Request],
    ) -> None:
        while True:
            if self.rtu:
                head = await reader.readexactly(2)
                function = head[1]
                if function in (3, 4, 6):
                    rest = await reader.readexactly(6)
                else:  # 16: address, count, byte count, data, CRC
                    body = await reader.readexactly(5)
                    rest = body + await reader.readexactly(body[4] + 2)
                frame = head + rest
                pending.append(_Request(frame[0], function, int.from_bytes(frame[2:4], "big")))
            else:
                head = await reader.readexactly(7)
                body = await reader.readexactly(int.from_bytes(head[4:6], "big") - 1)
                frame = head + body
                tid = int.from_bytes(head[0:2], "big")
                by_tid[tid] = _Request(head[6], body[0], int.from_bytes(body[1:3], "big"))
            up.write(frame)
            await up.drain()

    async def _answers(
        self,
        up: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pending: deque[_Request],
        by_tid: dict[int, _Request],
    ) -> None:
        while True:
            if self.rtu:
                head = await up.readexactly(2)
                function = head[1]
                if function & 0x80:
                    rest = await up.readexactly(3)
                elif function in (3, 4):
                    count = await up.readexactly(1)
                    rest = count + await up.readexactly(count[0] + 2)
                else:
                    rest = await up.readexactly(6)
                frame = head + rest
                request = pending.popleft() if pending else None
                frame = self._maybe_rewrite(request, frame[0], frame[1:-2], None)
            else:
                head = await up.readexactly(6)
                body = await up.readexactly(int.from_bytes(head[4:6], "big"))
                tid = int.from_bytes(head[0:2], "big")
                request = by_tid.pop(tid, None)
                frame = self._maybe_rewrite(request, body[0], body[1:], head[:4])
            writer.write(frame)
            await writer.drain()

    def _maybe_rewrite(
        self, request: _Request | None, unit: int, pdu: bytes, mbap: bytes | None
    ) -> bytes:
        fault = self._match(request, pdu)
        if fault is not None:
            fault.applied += 1
            self.rewritten += 1
            if fault.pdu is not None:
                pdu = fault.pdu
            else:
                assert fault.rewrite is not None
                words = [
                    int.from_bytes(pdu[2 + 2 * i : 4 + 2 * i], "big") for i in range(pdu[1] // 2)
                ]
                new = fault.rewrite(words)
                assert len(new) == len(words), "a rewrite keeps the register count"
                pdu = pdu[:2] + b"".join(w.to_bytes(2, "big") for w in new)
            self.faults = [f for f in self.faults if not f.spent]
        if mbap is None:
            frame = bytes([unit]) + pdu
            return frame + crc16(frame)
        return mbap + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu

    def _match(self, request: _Request | None, pdu: bytes) -> Fault | None:
        if request is None or pdu[0] & 0x80 or pdu[0] not in (3, 4):
            return None
        for fault in self.faults:
            if (fault.unit, fault.function, fault.start) == (
                request.unit,
                request.function,
                request.start,
            ) and not fault.spent:
                return fault
        return None
