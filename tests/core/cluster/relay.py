"""A loopback TCP relay the tests put between an instance and what it talks to.

In front of a simulated gateway it is the gateway's own log: every request frame an
instance sends is recorded with the instance's name, the Modbus unit and function code and
the time (`Frame`), so a test can check that two instances never interleave on one link
and that nothing is written by an owner that lost its lease. `hold_replies_s` delays the
answers to writes (the instance is caught with a command in flight). In front of PostgreSQL
`cut()` is a partition: bytes stop flowing both ways and the sockets stay open (a
black hole, as a dropped route looks), until `heal()`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

WRITE_FUNCTIONS = frozenset({5, 6, 15, 16})


@dataclass(frozen=True, slots=True)
class Frame:
    at: float
    instance: str
    unit: int
    function: int

    @property
    def write(self) -> bool:
        return self.function in WRITE_FUNCTIONS


class Relay:
    def __init__(self, target: tuple[str, int], name: str, *, modbus: bool = False) -> None:
        self.target = target
        self.name = name
        self.modbus = modbus
        self.frames: list[Frame] = []
        self.hold_replies_s = 0.0
        #: In front of PostgreSQL: once, let a COMMIT through and then drop the connection
        #: before its answer (the commit happens; the client cannot know).
        self.lose_next_commit = False
        self.commits_lost = 0
        self._hold_until = 0.0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.1") -> int:
        """Listen on an ephemeral port of `host` (another address than loopback: reached
        from a network namespace over a veth pair); returns the port."""
        self._server = await asyncio.start_server(self._serve, host, 0)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        self._open.set()

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        self._open.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._open.wait()
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        state = {"mute": False}
        await asyncio.gather(
            self._pump(reader, up_writer, requests=True, state=state),
            self._pump(up_reader, writer, requests=False, state=state),
            return_exceptions=True,
        )
        for w in (writer, up_writer):
            w.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        requests: bool,
        state: dict[str, bool],
    ) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                writer.close()
                return
            await self._open.wait()
            if requests and self.lose_next_commit and b"COMMIT" in data:
                self.lose_next_commit = False
                state["mute"] = True  # the answer never reaches the client
                writer.write(data)
                await writer.drain()
                await asyncio.sleep(0.5)  # the server commits and answers into the void
                self.commits_lost += 1
                writer.close()
                raise ConnectionResetError("relay: connection lost after COMMIT")
            if requests and self.modbus and len(data) >= 2:
                frame = Frame(time.monotonic(), self.name, data[0], data[1])
                self.frames.append(frame)
                if frame.write and self.hold_replies_s:
                    self._hold_until = time.monotonic() + self.hold_replies_s
            if not requests and state["mute"]:
                continue
            if not requests:
                delay = self._hold_until - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            writer.write(data)
            await writer.drain()
