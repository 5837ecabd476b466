"""The lean Modbus client of TCP links: one asyncio protocol on the socket, no pymodbus.

`open_connection(link)` connects to an RTU-over-TCP gateway (`RtuConnection`) or a Modbus
TCP device (`MbapConnection`). `transact(unit, pdu)` frames the request, sends
it and returns the whole answer frame (`head` bytes before the PDU, `tail` after it) once
a frame that answers it has arrived; what the PDU means is the transport's business.

Each waiting request is an `Exchange` with its own future and deadline, settled by exactly
one of: its answer, its deadline (`DeviceTimeout`, or `GarbledResponse` when bytes came that
made no usable frame), a broken frame (`GarbledResponse`), the connection's end (`LinkDown`).
One timer per connection watches the deadlines: it is re-armed about once a timeout, not
created and cancelled for every request (a poll is thousands of requests a second).
A request whose caller was cancelled or timed out is forgotten at once, so its late answer
is never taken for another request's:

- Modbus TCP matches answers to requests by transaction id; an answer with an id nobody
  waits for is dropped (`stale_frames`). Several requests may be in flight.
- RTU has no id. Bytes that arrive while nobody waits are dropped before the next request
  is sent. A CRC-valid frame that arrives during a request but does not begin as its answer
  (unit, function, and byte count for a read or address for a write) is dropped and
  remembered: if no answer follows, the request fails as garbled rather than silent. Only
  a late answer to the same unit, function and size cannot be told apart. One request at a
  time (the transport's lock).
"""

from __future__ import annotations

import asyncio

from openprepay.core.config.site import LinkConfig, LinkType
from openprepay.core.errors import DeviceTimeout, GarbledResponse, LinkDown

from .frames import (
    KEEP_BYTES,
    MAX_PDU,
    MBAP_HEAD,
    READS,
    answer_start,
    crc16,
    describe_frame,
    mbap_frame,
    rtu_answer_size,
    rtu_frame,
)
from .receive import StandingBufferProtocol

#: Framed read requests an RTU connection keeps (units x blocks of a busy gateway).
READ_FRAMES_KEPT = 4096


class Exchange:
    """One request waiting for its answer."""

    __slots__ = ("deadline", "future", "received", "unit", "unusable", "why")

    def __init__(self, unit: int, future: asyncio.Future[bytes], deadline: float) -> None:
        self.unit = unit
        self.future = future
        #: Loop time at which it has waited long enough.
        self.deadline = deadline
        #: Bytes that arrived while it waited, and the start of those that were no use.
        self.received = 0
        self.unusable = b""
        #: Why the unusable bytes were not its answer, when known.
        self.why: str | None = None

    def fail(self, error: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def keep_unusable(self, data: bytes, why: str | None = None) -> None:
        if len(self.unusable) < KEEP_BYTES:
            self.unusable += data[: KEEP_BYTES - len(self.unusable)]
        if why is not None:
            self.why = why

    def garbled(self, link_type: LinkType) -> GarbledResponse:
        why = self.why or describe_frame(self.unusable, link_type)
        return GarbledResponse(
            f"unit {self.unit}: {self.received} bytes received but no valid frame ({why})"
        )


class _Connection(StandingBufferProtocol):
    """What both framings share: the socket, its end, and the timers of waiting requests."""

    #: Bytes before the PDU and after it in an answer frame.
    head = 0
    tail = 0

    def __init__(self, link: LinkConfig) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.lost: str | None = None
        self._buffer = b""
        self._loop = asyncio.get_running_loop()
        #: The deadline timer and when it fires.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        #: Answers (and bytes) that arrived for nobody, for statistics and tests.
        self.stale_frames = 0
        self.stale_bytes = 0

    @property
    def connected(self) -> bool:
        return self.transport is not None and self.lost is None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = f"link {self.link.id}: {self.link.address} closed the connection" + (
            f" ({exc})" if exc else ""
        )
        self._disarm()
        for exchange in self._waiting_exchanges():
            exchange.fail(LinkDown(self.lost))

    def close(self) -> None:
        self._disarm()
        if self.transport is not None:
            self.transport.close()

    def _waiting_exchanges(self) -> list[Exchange]:
        raise NotImplementedError

    def _send(self, frame: bytes) -> None:
        if not self.connected:
            raise LinkDown(self.lost or f"link {self.link.id} is not connected")
        assert self.transport is not None
        self.transport.write(frame)

    def _start(self, unit: int) -> Exchange:
        """A request just sent: it waits `link.timeout_s` for its answer."""
        loop = self._loop
        exchange = Exchange(unit, loop.create_future(), loop.time() + self.link.timeout_s)
        if self._timer is None or exchange.deadline < self._timer_at:
            self._arm(exchange.deadline)
        return exchange

    def _arm(self, at: float) -> None:
        self._disarm()
        self._timer = self._loop.call_at(at, self._deadlines)
        self._timer_at = at

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadlines(self) -> None:
        """Expire the requests whose deadline passed; wait for the next one's."""
        self._timer = None
        now = self._loop.time()
        next_at: float | None = None
        for exchange in self._waiting_exchanges():
            if exchange.future.done():
                continue
            if exchange.deadline <= now:
                self._expire(exchange)
            elif next_at is None or exchange.deadline < next_at:
                next_at = exchange.deadline
        if next_at is not None:
            self._arm(next_at)

    def _expire(self, exchange: Exchange) -> None:
        raise NotImplementedError

    def _silence(self, exchange: Exchange) -> DeviceTimeout:
        return DeviceTimeout(f"unit {exchange.unit}: no answer within {self.link.timeout_s:g} s")


class RtuConnection(_Connection):
    """RTU frames through a transparent TCP-to-RS-485 gateway: one request at a time."""

    head = 1
    tail = 2

    def __init__(self, link: LinkConfig) -> None:
        super().__init__(link)
        self._waiting: Exchange | None = None
        #: How the answer to the waiting request begins (see `answer_start`), and how an
        #: exception answer to it begins.
        self._expect = b""
        self._refusal = b""
        #: Read requests framed once: a poll asks the same blocks of the same units.
        self._read_frames: dict[tuple[int, bytes], tuple[bytes, bytes]] = {}

    def _waiting_exchanges(self) -> list[Exchange]:
        return [self._waiting] if self._waiting is not None else []

    async def transact(self, unit: int, pdu: bytes) -> bytes:
        if self._waiting is not None:
            raise RuntimeError("an RTU link carries one transaction at a time")
        if self._buffer:
            # A late or unasked answer: it must not be read as this request's.
            self.stale_bytes += len(self._buffer)
            self._buffer = b""
        frame, self._expect = self._frame(unit, pdu)
        self._refusal = bytes((unit, pdu[0] | 0x80))
        self._send(frame)
        exchange = self._start(unit)
        self._waiting = exchange
        try:
            return await exchange.future
        finally:
            self._waiting = None

    def _frame(self, unit: int, pdu: bytes) -> tuple[bytes, bytes]:
        """The request frame, and how its answer begins."""
        if pdu[0] not in READS:
            return rtu_frame(unit, pdu), answer_start(unit, pdu)
        key = (unit, pdu)
        framed = self._read_frames.get(key)
        if framed is None:
            if len(self._read_frames) >= READ_FRAMES_KEPT:
                self._read_frames.clear()
            framed = self._read_frames[key] = (rtu_frame(unit, pdu), answer_start(unit, pdu))
        return framed

    def data_received(self, data: bytes) -> None:
        exchange = self._waiting
        if exchange is None or exchange.future.done():
            self._buffer += data  # nobody waits: dropped before the next request
            return
        exchange.received += len(data)
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while True:
            size = rtu_answer_size(buffer, start)
            if size is None:
                # No function code of ours: where this frame ends cannot be known.
                self._broken(exchange, buffer[start:])
                return
            end = start + size
            if size == 0 or end > len(buffer):
                break
            frame = buffer if start == 0 and end == len(buffer) else buffer[start:end]
            if crc16(frame):
                self._broken(exchange, buffer[start:])
                return
            start = end
            expect = self._expect
            if frame[: len(expect)] == expect or frame[:2] == self._refusal:
                exchange.future.set_result(frame)
                self._buffer = buffer[start:]  # extra bytes: dropped before the next request
                return
            # A CRC-valid frame that is not this request's answer (another unit's, another
            # block's: a late answer to a request given up): not taken, but if nothing
            # else comes it is why the request failed.
            self.stale_frames += 1
            exchange.keep_unusable(
                frame,
                f"a frame that does not answer the request: {frame[:8].hex(' ')}"
                f"{' ...' if len(frame) > 8 else ''}, where an answer begins {expect.hex(' ')}",
            )
        self._buffer = buffer[start:]

    def _broken(self, exchange: Exchange, rest: bytes) -> None:
        self._buffer = b""
        exchange.keep_unusable(rest)
        exchange.why = None  # the broken frame is the reason, not an earlier stray one
        exchange.fail(exchange.garbled(self.link.type))

    def _expire(self, exchange: Exchange) -> None:
        if exchange.future.done():
            return
        if self._buffer:
            # A frame cut short: the reason it failed; the next request starts clean.
            exchange.keep_unusable(self._buffer)
            exchange.why = None
            self._buffer = b""
        if exchange.unusable:
            exchange.fail(exchange.garbled(self.link.type))
        else:
            exchange.fail(self._silence(exchange))


class MbapConnection(_Connection):
    """Modbus TCP: answers matched to requests by transaction id, several in flight."""

    head = 7
    tail = 0

    def __init__(self, link: LinkConfig) -> None:
        super().__init__(link)
        self._waiting: dict[int, Exchange] = {}
        self._last_tid = 0

    def _waiting_exchanges(self) -> list[Exchange]:
        return list(self._waiting.values())

    def _next_tid(self) -> int:
        tid = self._last_tid
        while True:
            tid = tid % 0xFFFF + 1
            if tid not in self._waiting:
                self._last_tid = tid
                return tid

    async def transact(self, unit: int, pdu: bytes) -> bytes:
        if self._buffer and not self._waiting:
            self.stale_bytes += len(self._buffer)
            self._buffer = b""
        tid = self._next_tid()
        self._send(mbap_frame(tid, unit, pdu))
        exchange = self._start(unit)
        self._waiting[tid] = exchange
        try:
            return await exchange.future
        finally:
            del self._waiting[tid]

    def data_received(self, data: bytes) -> None:
        for exchange in self._waiting.values():
            exchange.received += len(data)
        buffer = self._buffer + data if self._buffer else data
        start = 0
        size = len(buffer)
        while size - start >= 6:
            tid, protocol, length = MBAP_HEAD.unpack_from(buffer, start)
            if protocol or length < 2 or length > MAX_PDU + 1:
                self._lost_framing(tid, buffer[start:])
                return
            end = start + 6 + length
            if end > size:
                break
            frame = buffer if start == 0 and end == size else buffer[start:end]
            start = end
            exchange = self._waiting.get(tid)
            if exchange is None or exchange.future.done():
                self.stale_frames += 1  # the answer to a request given up: dropped
            elif frame[6] != exchange.unit:
                exchange.keep_unusable(frame, f"an answer from unit {frame[6]}")
                exchange.fail(exchange.garbled(self.link.type))
            else:
                exchange.future.set_result(frame)
        self._buffer = buffer[start:]

    def _lost_framing(self, tid: int, rest: bytes) -> None:
        """Bytes that are no MBAP header: where the next frame starts cannot be known, so
        everything received is dropped; the request they answer (when the id is one that
        waits, or when only one waits) fails as garbled, the others time out."""
        self._buffer = b""
        exchange = self._waiting.get(tid)
        if exchange is None and len(self._waiting) == 1:
            exchange = next(iter(self._waiting.values()))
        if exchange is not None:
            exchange.keep_unusable(rest)
            exchange.fail(exchange.garbled(self.link.type))
        else:
            self.stale_bytes += len(rest)

    def _expire(self, exchange: Exchange) -> None:
        if exchange.future.done():
            return
        buffer = self._buffer
        if buffer:
            tid = int.from_bytes(buffer[:2], "big") if len(buffer) >= 2 else None
            owner = self._waiting.get(tid) if tid is not None else None
            if owner is None or owner is exchange:
                # Its answer cut short (or bytes nobody can own): the stream restarts clean.
                exchange.keep_unusable(buffer)
                self._buffer = b""
                exchange.fail(exchange.garbled(self.link.type))
                return
        exchange.fail(self._silence(exchange))


async def open_connection(link: LinkConfig) -> RtuConnection | MbapConnection:
    """Connect to the link's gateway or device; `LinkDown` if it cannot be reached."""
    kind = MbapConnection if link.type is LinkType.MODBUS_TCP else RtuConnection
    loop = asyncio.get_running_loop()
    where = f"{link.host}:{link.port or 502}"
    try:
        async with asyncio.timeout(link.timeout_s):
            _, connection = await loop.create_connection(
                lambda: kind(link), str(link.host), int(link.port or 502)
            )
    except TimeoutError as exc:
        raise LinkDown(f"cannot open {where}: no connection within {link.timeout_s:g} s") from exc
    except OSError as exc:
        raise LinkDown(f"cannot open {where}: {exc}") from exc
    return connection
