"""One Modbus link: a serial port, an RTU-over-TCP gateway or a Modbus TCP device.

`ModbusTransport` carries the link's transactions and turns their outcomes into the core's
error vocabulary (`DeviceTimeout`, `DeviceRejected`, `GarbledResponse`, `LinkDown`). It
keeps the link's inter-frame silence between transactions and never lets an unanswered
device close the connection. Retries and back-off belong to the link arbiter, so each
request is sent exactly once.

Two clients carry the frames:

- TCP links (RTU-over-TCP gateways, Modbus TCP devices) use the transport's own lean
  client (connection.py, frames.py): one asyncio protocol that frames requests and checks
  answers. A poll is mostly Modbus transactions, and pymodbus' general machinery (its
  transaction manager, framers, PDU classes and debug formatting) doubled the CPU of a
  read: above what the loop and socket calls cost anyway, it costs 4-10 times the lean
  client's (benchmarks/transaction_cpu.py).
- Serial links use pymodbus (and TCP links do with `lean=False`, or `LEAN_TCP = False`).
  pymodbus closes a TCP socket after `retries + 3` consecutive unanswered requests, which
  would drop every healthy device behind a gateway because one is silent: that limit is
  lifted.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from functools import cache

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse

from openprepay.core.config.site import LinkConfig, LinkType
from openprepay.core.errors import DeviceRejected, DeviceTimeout, GarbledResponse, LinkDown

from .connection import MbapConnection, RtuConnection, open_connection
from .frames import KEEP_BYTES, describe_frame, echoes_write, read_pdu, write_pdu

log = logging.getLogger("openprepay.modbus")

#: TCP links use the lean client; False puts them back on pymodbus (as serial links are).
LEAN_TCP = True
#: Effectively "never close on silence": the arbiter decides what a silent device costs.
MAX_NO_RESPONSES = 1 << 30

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class ModbusTransport:
    def __init__(self, link: LinkConfig, lean: bool | None = None) -> None:
        self.link = link
        #: Whether the lean client carries this link (TCP links unless told otherwise).
        self.lean = (LEAN_TCP if lean is None else lean) and link.type is not LinkType.SERIAL
        self._connection: RtuConnection | MbapConnection | None = None
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._last_end = 0.0
        #: What the current transaction received (the start of it), to say why an
        #: answer could not be used.
        self._received = bytearray()
        self._bytes_received = 0
        #: Why the last answer could not be decoded, when pymodbus could not decode it.
        self._undecodable: str | None = None
        self._lock = asyncio.Lock() if link.in_flight == 1 else None
        #: Read once: LinkConfig.gap_s is derived on every access.
        self._gap_s = link.gap_s
        #: Transactions and wire errors, for the link statistics.
        self.transactions = 0
        self.garbled_frames = 0

    # -- connection -----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        if self.lean:
            return self._connection is not None and self._connection.connected
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        if self.lean:
            if self._connection is not None:
                self._connection.close()  # one the peer closed is replaced, not leaked
            self._connection = None
            self._connection = await open_connection(self.link)
            return
        if self._client is None:
            self._client = self._make_client()
            self._keep_link_on_undecodable_answers(self._client)
        try:
            ok = await self._client.connect()
        except Exception as exc:  # pymodbus raises various OS-level errors here
            raise LinkDown(f"cannot open {self.link.address}: {exc}") from exc
        if not ok:
            raise LinkDown(f"cannot open {self.link.address}")
        self._client.set_max_no_responses(MAX_NO_RESPONSES)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        link = self.link
        common = {
            "timeout": link.timeout_s,
            "retries": 0,
            "reconnect_delay": 0,  # the arbiter reconnects, with its own back-off
            "trace_packet": self._trace,
            "name": link.id,
        }
        if link.type is LinkType.SERIAL:
            return AsyncModbusSerialClient(
                str(link.device),
                framer=FramerType.RTU,
                baudrate=link.baudrate,
                bytesize=link.bytesize,
                parity=link.parity,
                stopbits=link.stopbits,
                **common,
            )
        framer = FramerType.RTU if link.type is LinkType.RTU_OVER_TCP else FramerType.SOCKET
        return AsyncModbusTcpClient(
            str(link.host), port=int(link.port or 502), framer=framer, **common
        )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._bytes_received += len(data)
            if len(self._received) < KEEP_BYTES:
                self._received += data[: KEEP_BYTES - len(self._received)]
        return data

    def _keep_link_on_undecodable_answers(
        self, client: AsyncModbusTcpClient | AsyncModbusSerialClient
    ) -> None:
        """pymodbus raises from inside the socket's data callback when a well-framed
        answer holds a PDU it cannot decode; asyncio then logs a 20-line traceback and
        closes the connection, dropping every device of the link. Instead the answer is
        dropped and the waiting request fails at once as a garbled answer: the framing
        (MBAP length, RTU CRC) already delimited it, and the next request starts clean."""
        manager = client.ctx
        decode = manager.callback_data

        def callback_data(data: bytes, addr: tuple | None = None) -> int:
            try:
                return decode(data, addr=addr)
            except ModbusIOException:
                self._undecodable = describe_frame(bytes(data), self.link.type)
                waiting = manager.response_future
                if not waiting.done():
                    waiting.set_exception(ModbusIOException(self._undecodable))
                return len(data)

        manager.callback_data = callback_data  # type: ignore[method-assign]

    # -- transactions ---------------------------------------------------------------------
    async def read(self, unit: int, function: int, address: int, count: int) -> list[int]:
        if self.lean:
            pdu = read_pdu(function, address, count)
            frame, start, end = await self._lean_transact(unit, pdu)
            return self._registers(unit, count, frame, start, end)
        client = self._require_client()
        call = client.read_holding_registers if function == 3 else client.read_input_registers
        response = await self._transact(unit, call(address, count=count, device_id=unit))
        registers = list(response.registers)
        if len(registers) != count:
            self.garbled_frames += 1
            raise GarbledResponse(f"asked for {count} registers, got {len(registers)}")
        return registers

    async def write(self, unit: int, function: int, address: int, words: list[int]) -> None:
        if self.lean:
            pdu = write_pdu(function, address, words)
            frame, start, end = await self._lean_transact(unit, pdu)
            self._check_echo(unit, pdu, frame[start:end])
            return
        client = self._require_client()
        if function == 6:
            call = client.write_register(address, words[0], device_id=unit)
        else:
            call = client.write_registers(address, words, device_id=unit)
        await self._transact(unit, call)

    def _require_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._client is None or not self._client.connected:
            raise LinkDown(f"link {self.link.id} is not connected")
        return self._client

    async def _transact(self, unit: int, request):
        if self._lock is None:
            return await self._exchange(unit, request)
        async with self._lock:
            return await self._exchange(unit, request)

    async def _exchange(self, unit: int, request):
        gap = self.link.gap_s
        if gap:
            wait = self._last_end + gap - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        self._bytes_received = 0
        self._received.clear()
        self._undecodable = None
        self.transactions += 1
        try:
            response = await request
        except ModbusIOException as exc:
            if self._undecodable is not None:
                self.garbled_frames += 1
                raise GarbledResponse(f"unit {unit}: {self._undecodable}") from exc
            if self._bytes_received:
                self.garbled_frames += 1
                why = describe_frame(bytes(self._received), self.link.type)
                raise GarbledResponse(
                    f"unit {unit}: {self._bytes_received} bytes received but no valid frame ({why})"
                ) from exc
            raise DeviceTimeout(f"unit {unit}: no answer within {self.link.timeout_s:g} s") from exc
        except ConnectionException as exc:
            raise LinkDown(f"link {self.link.id}: {exc}") from exc
        finally:
            self._last_end = time.monotonic()
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # pymodbus awaits the answer with asyncio.wait_for, which on Python 3.11 returns
            # the answer and drops our cancellation when both happen at once: re-raise it.
            raise asyncio.CancelledError
        if response is None:
            raise DeviceTimeout(f"unit {unit}: no answer")
        if isinstance(response, ExceptionResponse) or response.isError():
            code = getattr(response, "exception_code", None)
            name = EXCEPTION_NAMES.get(code or 0, "error")
            raise DeviceRejected(f"unit {unit}: exception {code} ({name})", code)
        return response

    # -- transactions on the lean client ---------------------------------------------------
    async def _lean_transact(self, unit: int, pdu: bytes) -> tuple[bytes, int, int]:
        """The answer frame to `pdu` and where its PDU starts and ends; its function code
        is the request's (an exception answer raises `DeviceRejected`)."""
        connection = self._connection
        if connection is None or not connection.connected:
            raise LinkDown(f"link {self.link.id} is not connected")
        lock = self._lock
        if lock is not None:
            await lock.acquire()
        try:
            if self._gap_s:
                await self._keep_gap()
            self.transactions += 1
            try:
                frame = await connection.transact(unit, pdu)
            except GarbledResponse:
                self.garbled_frames += 1
                raise
            finally:
                if self._gap_s:
                    self._last_end = time.monotonic()
        finally:
            if lock is not None:
                lock.release()
        start = connection.head
        end = len(frame) - connection.tail
        if frame[start] == pdu[0]:
            return frame, start, end
        raise self._refusal_or_garbled(unit, pdu[0], frame, start, end)

    async def _keep_gap(self) -> None:
        """The link's silence between the end of one transaction and the next request."""
        wait = self._last_end + self._gap_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    def _refusal_or_garbled(
        self, unit: int, function: int, frame: bytes, start: int, end: int
    ) -> DeviceRejected | GarbledResponse:
        """The error of an answer whose function code is not the request's."""
        if frame[start] == function | 0x80 and end - start == 2:
            code = frame[start + 1]
            name = EXCEPTION_NAMES.get(code, "error")
            return DeviceRejected(f"unit {unit}: exception {code} ({name})", code)
        self.garbled_frames += 1
        return GarbledResponse(f"unit {unit}: {describe_frame(frame[:KEEP_BYTES], self.link.type)}")

    def _registers(self, unit: int, count: int, frame: bytes, start: int, end: int) -> list[int]:
        byte_count = frame[start + 1] if end - start > 1 else 0
        if byte_count != 2 * count or end - start != 2 + byte_count:
            self.garbled_frames += 1
            raise GarbledResponse(
                f"unit {unit}: asked for {count} registers, got {byte_count // 2}"
                + ("" if end - start == 2 + byte_count else f" in a PDU of {end - start} bytes")
            )
        return list(_words(count).unpack_from(frame, start + 2))

    def _check_echo(self, unit: int, pdu: bytes, answer: bytes) -> None:
        if not echoes_write(pdu, answer):
            self.garbled_frames += 1
            raise GarbledResponse(
                f"unit {unit}: the answer to a write ({answer[:KEEP_BYTES].hex(' ')}) does "
                f"not echo it ({pdu[:5].hex(' ')})"
            )


@cache
def _words(count: int) -> struct.Struct:
    """Big-endian 16-bit registers, `count` of them."""
    return struct.Struct(f">{count}H")
