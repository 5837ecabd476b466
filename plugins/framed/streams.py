"""Byte streams under a framed link: a serial port (pyserial) or a TCP socket.

Both keep what arrives in one buffer that the transport reads with a deadline and empties
before each request, so a late answer to an earlier request is never taken for the next
one. `socket://host:port` (pyserial's URL for a serial port on a network server, and what
`openprepay simulate` hands out) is opened as a plain TCP socket; other pyserial URLs
(`rfc2217://`, `loop://`) and device paths go through pyserial.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol
from urllib.parse import urlsplit

from openprepay.core.config.site import LinkConfig, LinkType
from openprepay.core.errors import LinkDown


class ByteStream(Protocol):
    @property
    def connected(self) -> bool: ...

    async def open(self) -> None: ...

    async def write(self, data: bytes) -> None: ...

    async def read(self, wait_s: float) -> bytes:
        """What has arrived, waiting up to `wait_s` for the first byte; b"" on silence."""
        ...

    def discard_input(self) -> int:
        """Drop whatever arrived unasked; return how many bytes were dropped."""
        ...

    async def close(self) -> None: ...


class _Inbox:
    """Received bytes and a signal that more arrived."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.arrived = asyncio.Event()
        self.lost: str | None = None

    def put(self, data: bytes) -> None:
        self.data += data
        self.arrived.set()

    async def take(self, wait_s: float) -> bytes:
        if not self.data and self.lost is None:
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), max(wait_s, 0.0))
        if self.lost is not None and not self.data:
            raise LinkDown(self.lost)
        out = bytes(self.data)
        self.data.clear()
        return out

    def discard(self) -> int:
        n = len(self.data)
        self.data.clear()
        return n


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, inbox: _Inbox, where: str) -> None:
        self.inbox = inbox
        self.where = where

    def data_received(self, data: bytes) -> None:
        self.inbox.put(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.inbox.lost = f"{self.where} closed the connection" + (f": {exc}" if exc else "")
        self.inbox.arrived.set()


class TcpStream:
    """A TCP socket to a transparent RS-485 gateway (or a simulated bus)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._transport: asyncio.Transport | None = None
        self._inbox = _Inbox()

    @property
    def connected(self) -> bool:
        return (
            self._transport is not None
            and not self._transport.is_closing()
            and self._inbox.lost is None
        )

    async def open(self) -> None:
        await self.close()  # a socket the peer closed is replaced, not leaked
        self._inbox = _Inbox()
        where = f"{self.host}:{self.port}"
        try:
            transport, _ = await asyncio.get_running_loop().create_connection(
                lambda: _TcpProtocol(self._inbox, where), self.host, self.port
            )
        except OSError as exc:
            raise LinkDown(f"cannot open {where}: {exc}") from exc
        self._transport = transport  # type: ignore[assignment]

    async def write(self, data: bytes) -> None:
        if not self.connected:
            raise LinkDown(self._inbox.lost or f"{self.host}:{self.port} is not connected")
        assert self._transport is not None
        self._transport.write(data)

    async def read(self, wait_s: float) -> bytes:
        return await self._inbox.take(wait_s)

    def discard_input(self) -> int:
        return self._inbox.discard()

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class SerialStream:
    """A local serial port (or a pyserial URL), read without blocking the event loop."""

    def __init__(self, link: LinkConfig) -> None:
        self.link = link
        self._port: Any = None
        self._inbox = _Inbox()
        self._reader_fd: int | None = None

    @property
    def connected(self) -> bool:
        return self._port is not None and self._port.is_open and self._inbox.lost is None

    async def open(self) -> None:
        import serial  # pyserial: imported here so that TCP-only sites do not need it

        link = self.link
        await self.close()
        self._inbox = _Inbox()
        try:
            self._port = serial.serial_for_url(
                str(link.device),
                baudrate=link.baudrate,
                bytesize=link.bytesize,
                parity=link.parity,
                stopbits=link.stopbits,
                timeout=0,
            )
        except (serial.SerialException, ValueError, OSError) as exc:
            raise LinkDown(f"cannot open {link.device}: {exc}") from exc
        try:
            fd = self._port.fileno()
        except Exception:  # URL handlers without a file descriptor: polled in read()
            fd = None
        if fd is not None:
            asyncio.get_running_loop().add_reader(fd, self._readable)
            self._reader_fd = fd

    def _readable(self) -> None:
        try:
            data = self._port.read(self._port.in_waiting or 1)
        except Exception as exc:
            self._inbox.lost = f"{self.link.device}: {exc}"
            self._inbox.arrived.set()
            return
        if data:
            self._inbox.put(data)

    async def write(self, data: bytes) -> None:
        if not self.connected:
            raise LinkDown(f"{self.link.device} is not open")
        try:
            self._port.write(data)
        except Exception as exc:
            raise LinkDown(f"{self.link.device}: {exc}") from exc

    async def read(self, wait_s: float) -> bytes:
        if self._reader_fd is None and self._port is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            while True:
                data = self._port.read(self._port.in_waiting or 0)
                if data or loop.time() >= deadline:
                    return bytes(data)
                await asyncio.sleep(min(0.005, max(deadline - loop.time(), 0)))
        return await self._inbox.take(wait_s)

    def discard_input(self) -> int:
        return self._inbox.discard()

    async def close(self) -> None:
        if self._port is not None:
            if self._reader_fd is not None:
                asyncio.get_running_loop().remove_reader(self._reader_fd)
                self._reader_fd = None
            with contextlib.suppress(Exception):
                self._port.close()
            self._port = None


def open_stream(link: LinkConfig) -> ByteStream:
    """The stream a link needs (not opened yet)."""
    if link.type is LinkType.SERIAL:
        url = str(link.device)
        if url.startswith("socket://"):
            parts = urlsplit(url)
            return TcpStream(parts.hostname or "127.0.0.1", int(parts.port or 0))
        return SerialStream(link)
    if link.type is LinkType.RTU_OVER_TCP:
        return TcpStream(str(link.host), int(link.port or 0))
    raise ValueError(f"link {link.id}: {link.type} links carry Modbus TCP only")
