"""A lean Modbus server for simulated devices: the framing done here, the answers from the
devices' register images.

pymodbus' server turns every request into PDU objects, a transaction manager, a task and a
datastore round trip; at thousands of simulated meters that cost most of the simulator's
CPU. `LeanModbusServer` frames RTU-over-TCP (CRC16 from tables) and Modbus TCP
(MBAP header) itself and answers read holding/input registers (3/4) and write single or
multiple registers (6/16) directly — byte for byte as pymodbus' server, as `GatewaySimulator`
configures it, answers them (tests/plugins/test_lean_server.py holds the two side by side):

- a request for a unit no device has gets no answer (`ignore_missing_devices`);
- an RTU frame whose CRC is wrong gets no answer, and everything received with it is
  dropped, as pymodbus' RTU framer drops it;
- an FC06 answer echoes the register read back after the write, as pymodbus' does;
- one frame is taken per arrival of data, an answer drops whatever else was buffered,
  and a buffer over 516 bytes is dropped: pymodbus' transport does all three.

Anything else — other function codes, counts out of range, short or odd frames, a Modbus
TCP protocol id other than 0 — is handed to pymodbus' own framer and PDU classes on the same
datastore, so it answers (or stays silent) exactly as before.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
import sys
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusIOException, NoSuchIdException
from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU

from openprepay.core.config.site import DeviceConfig
from openprepay.core.contracts import SimulatorOptions

from .frames import CRC_TABLE
from .receive import StandingBufferProtocol

log = logging.getLogger("openprepay.simulator")

#: pymodbus' transport drops its receive buffer when it grows past this.
MAX_BUFFER = 516
MAX_READ_COUNT = 125
MAX_WRITE_COUNT = 123
_MBAP = struct.Struct(">HHHB")
_ADDRESS_COUNT = struct.Struct(">HH")
_WRITE_MULTIPLE = struct.Struct(">HHB")


@functools.cache
def _crc_pair_table() -> tuple[int, ...]:
    """The CRC register after two bytes whose 16 bits were XORed into it: half the
    Python steps per frame (the CRC of the answers was half of the lean path's cost).
    Built on first use (65,536 entries, tens of milliseconds)."""
    table = CRC_TABLE

    def step(crc: int) -> int:
        return (crc >> 8) ^ table[crc & 0xFF]

    return tuple(step(step(word)) for word in range(0x10000))


def crc16(frame: bytes) -> bytes:
    """Modbus RTU CRC of `frame`, as the two bytes that follow it on the wire (low first)."""
    crc = 0xFFFF
    even = len(frame) & ~1
    if _LITTLE_ENDIAN and even:
        pairs = _crc_pair_table()
        # Each 16-bit little-endian word is the next two bytes in the CRC's (reflected) order.
        for word in memoryview(frame)[:even].cast("H"):
            crc = pairs[crc ^ word]
        rest = frame[even:]
    else:
        rest = frame
    table = CRC_TABLE
    for byte in rest:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc.to_bytes(2, "little")


_LITTLE_ENDIAN = sys.byteorder == "little"


class ServedDevice(Protocol):
    """What the server needs of a simulated device (`RegisterDeviceSimulator`)."""

    device: DeviceConfig

    def read_registers(self, address: int, count: int) -> list[int] | ExcCodes: ...

    def write_registers(self, function: int, address: int, words: list[int]) -> ExcCodes | None: ...


class ServedGateway(Protocol):
    """What the server needs of the gateway it serves (`GatewaySimulator`)."""

    @property
    def devices(self) -> Mapping[int, ServedDevice]: ...

    @property
    def options(self) -> SimulatorOptions: ...

    #: The datastore pymodbus' request classes work on (the fallback path).
    @property
    def datastore(self) -> Any: ...

    def outgoing(self, frame: bytes) -> bytes: ...

    async def occupy_bus(self, function: int, count: int) -> None: ...


@dataclass(slots=True)
class _Request:
    """One decoded request of the lean path."""

    unit: int
    function: int
    address: int
    count: int
    #: The words an FC06/FC16 request writes.
    words: list[int]
    #: Modbus TCP transaction id (0 on RTU).
    tid: int


def _parse_pdu(unit: int, pdu: bytes, tid: int) -> _Request | None:
    """The request in `pdu` if the lean path answers it as pymodbus would, else None."""
    function = pdu[0]
    if function in (3, 4, 6):
        if len(pdu) != 5:
            return None
        address, count = _ADDRESS_COUNT.unpack_from(pdu, 1)
        if function == 6:
            return _Request(unit, function, address, 1, [count], tid)
        if not 1 <= count <= MAX_READ_COUNT:
            return None
        return _Request(unit, function, address, count, [], tid)
    if function == 16 and len(pdu) >= 6:
        address, count, byte_count = _WRITE_MULTIPLE.unpack_from(pdu, 1)
        if not 1 <= count <= MAX_WRITE_COUNT or byte_count != 2 * count:
            return None
        if len(pdu) != 6 + byte_count:
            return None
        words = list(struct.unpack_from(f">{count}H", pdu, 6))
        return _Request(unit, function, address, count, words, tid)
    return None


class LeanModbusServer:
    """Serves the devices of one `GatewaySimulator` on a TCP socket."""

    def __init__(self, gateway: ServedGateway, rtu: bool) -> None:
        self.gateway = gateway
        self.rtu = rtu
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        #: Answers waiting for the simulated bus (serial timing), cancelled at stop.
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> int:
        _crc_pair_table()  # now, not on the first request
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._connections):
            connection.close()
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task the server cancels when it stops."""
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


class _Connection(StandingBufferProtocol):
    """One client connection: its receive buffer, framing and answers."""

    def __init__(self, server: LeanModbusServer) -> None:
        self.server = server
        self.gateway = server.gateway
        self.rtu = server.rtu
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self._fallback = _PymodbusFallback(self)

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if len(buffer) > MAX_BUFFER:
            self.buffer = b""
            return
        self.buffer = buffer
        decoded = self._frame_rtu(buffer) if self.rtu else self._frame_tcp(buffer)
        if decoded is None:
            self._fallback.receive(buffer)
        elif decoded is not False:
            self._dispatch(decoded)

    # -- framing --------------------------------------------------------------------------
    def _frame_rtu(self, buffer: bytes) -> _Request | bool | None:
        """The request at the head of `buffer`; False: wait for more, or a bad CRC (the
        buffer is dropped); None: not a lean-path frame."""
        if len(buffer) < 4:
            return False
        function = buffer[1]
        if function in (3, 4, 6):
            size = 8
        elif function == 16 and len(buffer) >= 7:
            size = buffer[6] + 9
        else:
            return None
        if len(buffer) < size:
            return False
        # pymodbus' RTU framer takes everything received with a frame, good CRC or bad.
        self.buffer = b""
        if crc16(buffer[: size - 2]) != buffer[size - 2 : size]:
            return False
        request = _parse_pdu(buffer[0], buffer[1 : size - 2], 0)
        if request is None:
            self.buffer = buffer
        return request

    def _frame_tcp(self, buffer: bytes) -> _Request | bool | None:
        if len(buffer) < 8:
            return False
        tid, protocol, length, unit = _MBAP.unpack_from(buffer)
        size = length + 6
        if protocol or size < 8 or (size == 8 and len(buffer) == 9):
            return None
        if len(buffer) < size:
            return False
        request = _parse_pdu(unit, buffer[7:size], tid)
        if request is not None:
            self.buffer = buffer[size:]
        return request

    def frame(self, unit: int, tid: int, pdu: bytes) -> bytes:
        if self.rtu:
            head = bytes((unit,)) + pdu
            return head + crc16(head)
        return _MBAP.pack(tid, 0, len(pdu) + 1, unit) + pdu

    def send(self, frame: bytes) -> None:
        """Send an answer through the gateway's fault injection (silent or garbage devices);
        like pymodbus' transport, sending drops what is left in the receive buffer."""
        self.buffer = b""
        data = self.gateway.outgoing(frame)
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- answers --------------------------------------------------------------------------
    def _dispatch(self, request: _Request) -> None:
        device = self.gateway.devices.get(request.unit)
        if device is None:
            return  # nobody answers on a real bus
        if self.gateway.options.serial_timing:
            self.server.later(self._answer_after_bus(device, request))
        else:
            self.send(self._answer(device, request))

    async def _answer_after_bus(self, device: ServedDevice, request: _Request) -> None:
        await self.gateway.occupy_bus(request.function, request.count)
        self.send(self._answer(device, request))

    def _answer(self, device: ServedDevice, request: _Request) -> bytes:
        function = request.function
        try:
            pdu = self._apply(device, request)
        except Exception:  # a simulator bug answers "device failure", as pymodbus' server does
            log.exception("simulated device %s failed a request", device.device.id)
            pdu = bytes((function | 0x80, ExcCodes.DEVICE_FAILURE))
        return self.frame(request.unit, request.tid, pdu)

    @staticmethod
    def _apply(device: ServedDevice, request: _Request) -> bytes:
        function, address, count = request.function, request.address, request.count
        if function in (3, 4):
            words = device.read_registers(address, count)
            if isinstance(words, ExcCodes):
                return bytes((function | 0x80, words))
            return struct.pack(f">BB{count}H", function, 2 * count, *words)
        refused = device.write_registers(function, address, request.words)
        if refused:
            return bytes((function | 0x80, refused))
        if function == 16:
            return struct.pack(">BHH", function, address, count)
        # pymodbus answers FC06 with the register as read back after the write.
        words = device.read_registers(address, 1)
        if isinstance(words, ExcCodes):
            return bytes((function | 0x80, words))
        return struct.pack(">BHH", function, address, words[0])


class _PymodbusFallback:
    """The requests the lean path does not take, answered by pymodbus' own framer, PDU
    classes and request handling (ServerRequestHandler's), on the gateway's datastore."""

    def __init__(self, connection: _Connection) -> None:
        self.connection = connection
        decoder = DecodePDU(True)
        self.framer = FramerRTU(decoder) if connection.rtu else FramerSocket(decoder)

    def receive(self, buffer: bytes) -> None:
        connection = self.connection
        try:
            used, pdu = self.framer.handleFrame(buffer, 0, 0)
        except ModbusIOException as exc:
            response = ExceptionResponse(
                exc.fcode or 0,
                exception_code=ExcCodes.ILLEGAL_FUNCTION,
                device_id=exc.dev_id,
                transaction=exc.transaction_id,
            )
            connection.send(self.framer.buildFrame(response))
            return
        connection.buffer = buffer[used:]
        if pdu is not None:
            connection.server.later(self._handle(pdu))

    async def _handle(self, request: ModbusPDU) -> None:
        datastore = self.connection.gateway.datastore
        try:
            response = await request.datastore_update(datastore, request.dev_id)  # type: ignore[arg-type]
        except NoSuchIdException:
            return
        except Exception:
            log.exception("simulated request %s failed", request)
            response = ExceptionResponse(request.function_code, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = request.transaction_id
        response.dev_id = request.dev_id
        self.connection.send(self.framer.buildFrame(response))
