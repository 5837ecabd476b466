"""One framed link: requests out with the protocol's wake-up preamble, one answer back.

`FramedTransport` is what the link arbiter connects, reconnects and closes; a protocol's
driver calls `transact(frame)`. It keeps the link's timing:

- the wake-up preamble (FE FE FE FE for DL/T 645) before every request;
- the inter-frame silence (`LinkConfig.gap_s`) between the end of one transaction and the
  start of the next;
- the reply timeout (`LinkConfig.timeout_s`), counted from the moment the request has left
  the wire at the link's baud rate, and again between two pieces of one answer.

It turns what happened into the core's error vocabulary: silence is `DeviceTimeout`,
bytes that cannot be a frame are `GarbledResponse`, a port or socket that fails is
`LinkDown`. What a frame means (checksum, address echo, data) is the protocol codec's job.
An unanswered device never closes the link: back-off belongs to the arbiter.
"""

from __future__ import annotations

import asyncio
import time

from openprepay.core.config.site import LinkConfig
from openprepay.core.errors import DeviceTimeout, GarbledResponse

from .framing import Framing
from .streams import ByteStream, open_stream

#: Bytes of a bad answer shown in the error.
SHOW_BYTES = 32


class FramedTransport:
    def __init__(self, link: LinkConfig, framing: Framing, stream: ByteStream | None = None):
        self.link = link
        self.framing = framing
        self._stream = stream or open_stream(link)
        self._lock = asyncio.Lock()
        self._last_end = 0.0
        #: Transactions, bytes on the wire and wire errors, for statistics and benchmarks.
        self.transactions = 0
        self.garbled_frames = 0
        self.timeouts = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.stale_bytes = 0

    # -- connection -----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._stream.connected

    async def connect(self) -> None:
        await self._stream.open()

    async def close(self) -> None:
        await self._stream.close()

    def wire_time_s(self, n_bytes: int) -> float:
        """How long `n_bytes` take on the bus at the link's baud rate."""
        return n_bytes * self.link.char_time_s

    # -- transactions ---------------------------------------------------------------------
    async def transact(self, request: bytes, who: str, reply: bool = True) -> bytes | None:
        """Send `request` (preamble added) and return the answer frame (its preamble
        stripped); with `reply=False` (broadcasts) return None once it has been sent.

        `who` names the device in errors ("meter 000012345678")."""
        async with self._lock:
            return await self._exchange(request, who, reply)

    async def _exchange(self, request: bytes, who: str, reply: bool) -> bytes | None:
        gap = self.link.gap_s
        wait = self._last_end + gap - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self.stale_bytes += self._stream.discard_input()
        out = self.framing.preamble + request
        self.transactions += 1
        self.bytes_sent += len(out)
        await self._stream.write(out)
        on_wire = self.wire_time_s(len(out))
        try:
            if not reply:
                # Nobody answers a broadcast: the bus is busy until the frame has left.
                await asyncio.sleep(on_wire)
                return None
            return await self._receive(who, on_wire)
        finally:
            self._last_end = time.monotonic()

    async def _receive(self, who: str, on_wire: float) -> bytes:
        loop = asyncio.get_running_loop()
        timeout = self.link.timeout_s
        deadline = loop.time() + on_wire + timeout
        buffer = b""
        while True:
            remaining = deadline - loop.time()
            chunk = await self._stream.read(remaining) if remaining > 0 else b""
            if chunk:
                buffer += chunk
                self.bytes_received += len(chunk)
                scan = self.framing.scan(buffer)
                if scan.problem is not None:
                    self.garbled_frames += 1
                    raise GarbledResponse(f"{who}: {scan.problem} ({_hex(buffer)})")
                if scan.end is not None:
                    if scan.end < len(buffer):
                        self.stale_bytes += len(buffer) - scan.end
                    return buffer[scan.start : scan.end]
                # Part of an answer: allow the rest its wire time plus the timeout.
                deadline = max(deadline, loop.time() + timeout)
                continue
            if loop.time() >= deadline:
                break
        if buffer:
            self.garbled_frames += 1
            raise GarbledResponse(
                f"{who}: {self.framing.name} answer cut short after {len(buffer)} bytes "
                f"({_hex(buffer)})"
            )
        self.timeouts += 1
        raise DeviceTimeout(f"{who}: no answer within {timeout:g} s")


def _hex(data: bytes) -> str:
    shown = data[:SHOW_BYTES].hex(" ").upper()
    return shown + (" ..." if len(data) > SHOW_BYTES else "")
