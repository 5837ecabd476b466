"""Simulated Modbus devices and the gateway that hosts them on a loopback socket.

`RegisterDeviceSimulator` is the base of every emulated device: a sparse register image
laid out by the device's profile, filled from engineering values by the same codecs the
driver decodes with, plus three hooks for behaviour — `setup()` (the device's own state,
once), `advance(now)` (energy accrues, valves move) and `on_write(function, address, words)`
(relay, top-up, valve commands).

`GatewaySimulator` serves the devices of one link with pymodbus' server: RTU framing over
TCP for serial links and RTU gateways, Modbus TCP framing for native TCP links. It can make
any device silent or make it answer with corrupt frames, and it can delay answers by the
time the frames would take on an RS-485 bus at the link's baud rate, one transaction at a
time, like the real half-duplex bus.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from openprepay.core.config.site import DeviceConfig, LinkConfig, LinkType
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.events import utcnow
from openprepay.core.field.loadshape import seed_for
from openprepay.core.model import Value

from .codec import PointCodec
from .lean_server import LeanModbusServer
from .profile import RegisterProfile

log = logging.getLogger("openprepay.simulator")


class SimClock:
    """Simulated time: `speedup` simulated seconds pass per real second."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.speedup = options.speedup
        self._sim_start = options.start or utcnow()
        self._real_start = time.monotonic()

    def now(self) -> datetime:
        return self.at(self.elapsed_s())

    def elapsed_s(self) -> float:
        """Simulated seconds since the start (cheaper than `now()`: no datetime)."""
        return (time.monotonic() - self._real_start) * self.speedup

    def at(self, elapsed_s: float) -> datetime:
        """The simulated moment `elapsed_s` simulated seconds after the start."""
        return self._sim_start + timedelta(seconds=elapsed_s)


class RegisterDeviceSimulator:
    """An emulated Modbus device built from its register profile."""

    def __init__(
        self,
        profile: RegisterProfile,
        device: DeviceConfig,
        options: SimulatorOptions,
        clock: SimClock | None = None,
    ) -> None:
        self.profile = profile
        self.model = profile.model
        self.device = device
        self.options = options
        self.clock = clock or SimClock(options)
        self.silent = False
        self.garbage = False
        self.values: dict[str, Value] = {}
        self._image: dict[int, int] = {}
        for block in profile.blocks:
            for address in range(block.start, block.start + block.count):
                self._image[address] = 0
        for command in profile.commands.values():
            words = sum(f.codec.registers for f in command.fields)
            for address in range(command.address, command.address + words):
                self._image.setdefault(address, 0)
        self._encoded: dict[str, Value] = {}
        self._last_advance: datetime | None = None
        self._last_advance_s = 0.0
        #: The points this simulated firmware has: all of the profile's, or — with the
        #: device option `sim_optional_blocks = false` — none of its optional blocks', whose
        #: registers then answer "illegal data address" like a firmware variant without them.
        self.points = self._served_points(bool(device.options.get("sim_optional_blocks", True)))
        #: Seeded per device: every simulated device differs, every run is the same.
        self.seed = seed_for(device.id, options.seed)
        self.rng = random.Random(self.seed)
        #: The site's time zone (load curves, TOU tables and meter clocks follow it).
        self.tz = ZoneInfo(options.timezone)
        self.setup()

    def _served_points(self, with_optional: bool) -> set[str]:
        names = set(self.profile.codecs)
        if with_optional:
            return names
        for block in self.profile.blocks:
            if not block.optional:
                continue
            for name, codec in self.profile.codecs.items():
                if block.start <= codec.address < block.start + block.count:
                    names.discard(name)
            for address in range(block.start, block.start + block.count):
                self._image.pop(address, None)
        return names

    # -- behaviour hooks (override) -------------------------------------------------------
    def setup(self) -> None:
        """Set up the device's own state from `self.device.options`. Called once, at the end
        of the constructor, so that a subclass does not restate the constructor."""

    def advance(self, now: datetime, elapsed_s: float) -> None:
        """Move the device's physics forward by `elapsed_s` simulated seconds."""

    def on_write(self, function: int, address: int, words: list[int]) -> ExcCodes | None:
        """Apply a write; return an exception code to refuse it. Default: read-only."""
        return ExcCodes.ILLEGAL_ADDRESS

    # -- register image -------------------------------------------------------------------
    def snapshot(self) -> Mapping[str, Value]:
        self._tick(exact=True)
        return dict(self.values)

    def _tick(self, exact: bool = False) -> None:
        """Move the physics to the clock's now. A read (not `exact`) lets it lag by up to
        `options.advance_every_s` simulated seconds: the reads of one poll, milliseconds
        apart, then share one step instead of each paying for one. Energy still accrues
        exactly: the next step integrates from where the last one ended."""
        elapsed_s = self.clock.elapsed_s()
        if self._last_advance is None:
            self._last_advance, self._last_advance_s = self.clock.at(elapsed_s), elapsed_s
            return
        lag_s = elapsed_s - self._last_advance_s
        if lag_s <= 0 or (lag_s < self.options.advance_every_s and not exact):
            return
        now = self.clock.at(elapsed_s)
        elapsed = (now - self._last_advance).total_seconds()
        if elapsed > 0:
            self.advance(now, elapsed)
            self._last_advance, self._last_advance_s = now, elapsed_s

    def raw(self, address: int, count: int = 1) -> list[int]:
        return [self._image[a] for a in range(address, address + count)]

    def set_raw(self, address: int, words: Sequence[int]) -> None:
        for i, word in enumerate(words):
            self._image[address + i] = word & 0xFFFF

    def _encode(self) -> None:
        """Write changed engineering values into the register image."""
        values, encoded = self.values, self._encoded
        if values == encoded:
            return  # nothing changed since the last request: one C-level comparison
        codecs = self.profile.codecs
        for name, value in values.items():
            if encoded.get(name) == value:
                continue
            encoded[name] = value
            codec = codecs.get(name)
            if codec is not None:
                self._store(codec, value)

    def _store(self, codec: PointCodec, value: Value) -> None:
        if codec.bit is not None:
            mask = 1 << codec.bit
            word = self._image[codec.address]
            self._image[codec.address] = (word | mask) if value else (word & ~mask)
        elif codec.mapping is not None:
            inverse = {v: k for k, v in codec.mapping.items()}
            self._image[codec.address] = inverse.get(int(value), 0)
        else:
            image, address = self._image, codec.address
            for word in codec.encode(value):  # 16-bit words already
                image[address] = word
                address += 1

    def read_registers(self, address: int, count: int) -> list[int] | ExcCodes:
        self._tick()
        self._encode()
        try:
            return list(map(self._image.__getitem__, range(address, address + count)))
        except KeyError:
            return ExcCodes.ILLEGAL_ADDRESS

    def write_registers(self, function: int, address: int, words: list[int]) -> ExcCodes | None:
        if any(a not in self._image for a in range(address, address + len(words))):
            return ExcCodes.ILLEGAL_ADDRESS
        self._tick(exact=True)  # the write acts on the state of this moment
        self._encode()
        result = self.on_write(function, address, words)
        self._encode()
        return result


def frame_bytes(function: int, count: int, response: bool) -> int:
    """RTU frame length of a read (3/4) or write (6/16) request or response."""
    if function in (3, 4):
        return 5 + 2 * count if response else 8
    if function == 6:
        return 8
    return 8 if response else 9 + 2 * count


class _BusContext:
    """The datastore pymodbus' server calls, routed to the simulated devices of one bus."""

    def __init__(self, gateway: GatewaySimulator) -> None:
        self.gateway = gateway

    def device_ids(self) -> list[int]:
        return list(self.gateway.devices)

    def _device(self, device_id: int) -> RegisterDeviceSimulator:
        device = self.gateway.devices.get(device_id)
        if device is None:
            # No device answers on a real bus: with ignore_missing_devices the server is silent.
            raise NoSuchIdException(f"no simulated device {device_id}")
        return device

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | ExcCodes:
        device = self._device(device_id)
        if func_code in (3, 4):
            await self.gateway.occupy_bus(func_code, count)
        return device.read_registers(address, count)

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: list[int] | list[bool]
    ) -> ExcCodes | None:
        device = self._device(device_id)
        words = [int(v) for v in values]
        await self.gateway.occupy_bus(func_code, len(words))
        return device.write_registers(func_code, address, words)


class GatewaySimulator:
    """Serves simulated devices behind one link on 127.0.0.1."""

    def __init__(
        self,
        link: LinkConfig,
        devices: Sequence[RegisterDeviceSimulator],
        options: SimulatorOptions,
        port: int = 0,
    ) -> None:
        self.link = link
        self.devices: dict[int, RegisterDeviceSimulator] = {d.device.unit_id: d for d in devices}
        self.options = options
        self.port = port
        self._server: ModbusTcpServer | LeanModbusServer | None = None
        #: What pymodbus' request classes read and write through (both servers use it).
        self.datastore = _BusContext(self)
        self._bus = asyncio.Lock()
        self._unit_byte = 6 if link.type is LinkType.MODBUS_TCP else 0
        #: Frames sent and frames deliberately corrupted or swallowed, for tests.
        self.answered = 0
        self.suppressed = 0

    @property
    def framer(self) -> FramerType:
        return FramerType.SOCKET if self.link.type is LinkType.MODBUS_TCP else FramerType.RTU

    async def start(self) -> tuple[str, int]:
        if self.options.lean_server:
            lean = LeanModbusServer(self, rtu=self.framer is FramerType.RTU)
            self.port = await lean.start("127.0.0.1", self.port)
            self._server = lean
            return "127.0.0.1", self.port
        placeholder = SimDevice(
            id=0, simdata=[SimData(address=0, count=1, datatype=DataType.REGISTERS)]
        )
        server = ModbusTcpServer(
            placeholder,
            framer=self.framer,
            address=("127.0.0.1", self.port),
            ignore_missing_devices=True,
            trace_packet=self._trace,
        )
        # pymodbus' own SimDevice keeps one contiguous register list per device (0x0000 to
        # 0x5030 for an Acrel meter, times thousands of meters); a sparse image with
        # behaviour is what these devices need, so the server gets our datastore.
        server.context = self.datastore  # type: ignore[assignment]
        await server.serve_forever(background=True)
        self._server = server
        self.port = server.transport.sockets[0].getsockname()[1]
        return "127.0.0.1", self.port

    async def stop(self) -> None:
        if isinstance(self._server, LeanModbusServer):
            await self._server.stop()
        elif self._server is not None:
            await self._server.shutdown()
        self._server = None

    async def occupy_bus(self, function: int, count: int) -> None:
        """Hold the simulated bus for the time the request and answer take on the wire."""
        if not self.options.serial_timing:
            return
        n_bytes = frame_bytes(function, count, False) + frame_bytes(function, count, True)
        duration = (
            n_bytes * self.link.bits_per_char / self.link.baudrate + self.options.turnaround_s
        )
        async with self._bus:
            await asyncio.sleep(duration)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        return self.outgoing(data) if sending else data

    def outgoing(self, data: bytes) -> bytes:
        """An answer frame as the device puts it on the wire: nothing from a silent
        device, a corrupt frame from a garbling one."""
        if len(data) <= self._unit_byte:
            return data
        device = self.devices.get(data[self._unit_byte])
        if device is None:
            return data
        if device.silent:
            self.suppressed += 1
            return b""
        if device.garbage:
            self.suppressed += 1
            if self.framer is FramerType.RTU:
                return data[:-1] + bytes([data[-1] ^ 0xA5])  # wrong CRC
            return data[:-1]  # MBAP length no longer matches
        self.answered += 1
        return data
