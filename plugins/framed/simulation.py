"""A simulated RS-485 bus of framed meters, served on a loopback TCP socket.

`SimulatedBus` accepts the link's frames (what a transparent gateway or `socket://` serial
URL carries), hands each complete request to every simulated device on the bus, and sends
back the one answer, preceded by the protocol's preamble. With
`SimulatorOptions.serial_timing` it holds the half-duplex bus for the time the request and
the answer take at the link's baud rate plus the device's turnaround, one transaction at a
time, so a benchmark measures the bus rather than the loopback socket.

A device that is `silent` never answers; a `garbage` device answers with its checksum
byte corrupted. Bytes that cannot start a frame are dropped, as a meter's receiver would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Protocol

from openprepay.core.config.site import LinkConfig
from openprepay.core.contracts import SimulatorOptions

from .framing import Framing

log = logging.getLogger("openprepay.simulator")


class BusDevice(Protocol):
    """A simulated framed device: it answers the requests addressed to it."""

    silent: bool
    garbage: bool

    def answer(self, frame: bytes) -> bytes | None:
        """The answer frame (without preamble) to `frame`, or None when the frame is not
        for this device or asks for no answer (a broadcast)."""
        ...


class SimulatedBus:
    def __init__(
        self,
        link: LinkConfig,
        framing: Framing,
        devices: Mapping[str, BusDevice],
        options: SimulatorOptions,
        port: int = 0,
    ) -> None:
        self.link = link
        self.framing = framing
        #: Devices by their bus address (what `LinkSimulator.devices` exposes).
        self.devices = dict(devices)
        self.options = options
        self.port = port
        self._server: asyncio.Server | None = None
        self._bus = asyncio.Lock()
        self._clients: set[asyncio.Task[None]] = set()
        #: Requests seen, answers sent, answers swallowed or corrupted (for tests).
        self.requests = 0
        self.answered = 0
        self.suppressed = 0

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return "127.0.0.1", self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def wire_time_s(self, n_bytes: int) -> float:
        return n_bytes * self.link.char_time_s

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        buffer = b""
        try:
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    return
                buffer += chunk
                while buffer:
                    scan = self.framing.scan(buffer)
                    if scan.problem is not None:
                        buffer = b""  # noise: a receiver waits for the next start byte
                        break
                    if scan.end is None:
                        break
                    frame, buffer = buffer[scan.start : scan.end], buffer[scan.end :]
                    answer = await self._transaction(frame, scan.end)
                    if answer:
                        writer.write(answer)
                        await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._clients.discard(task)
            writer.close()

    async def _transaction(self, frame: bytes, request_bytes: int) -> bytes | None:
        self.requests += 1
        async with self._bus:
            answer = None
            replier: BusDevice | None = None
            for device in self.devices.values():
                out = device.answer(frame)
                if out is not None and replier is None:
                    answer, replier = out, device
            if self.options.serial_timing:
                await asyncio.sleep(self.wire_time_s(request_bytes) + self.options.turnaround_s)
            if answer is None or replier is None:
                return None
            if replier.silent:
                self.suppressed += 1
                return None
            if replier.garbage:
                self.suppressed += 1
                answer = answer[:-2] + bytes([answer[-2] ^ 0x5A]) + answer[-1:]
            else:
                self.answered += 1
            out = self.framing.preamble + answer
            if self.options.serial_timing:
                await asyncio.sleep(self.wire_time_s(len(out)))
            return out
