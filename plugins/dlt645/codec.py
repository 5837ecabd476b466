"""DL/T 645-2007 frames: `68 A0..A5 68 C L DATA CS 16`, optionally preceded by FE bytes.

- The address is 6 bytes BCD, low byte first: "000012345678" goes out as 78 56 34 12 00 00.
  999999999999 is the broadcast address (time sync), AAAAAAAAAAAA the wildcard (read
  address: `68 AA AA AA AA AA AA 68 13 00 DF 16`).
- Every DATA byte is sent +33H (mod 256); data identifiers (DI) go low byte first.
- CS is the sum mod 256 of every byte from the first 68 to the last data byte.
- Control byte: b7 direction (1 = the meter answers), b6 error answer, b5 a follow-up
  frame comes; b4..b0 the function (11 read, 12 read follow-up, 13 read address, 08
  broadcast time sync, 1C remote control...). An error answer carries one error byte.

Everything that is not a well-formed frame raises `FrameError` with the reason: a caller
turns it into a Bad sample, never into a value. Facts: ../shared/reference/protocols.md §2.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from openprepay.plugins.framed import FrameScan
from openprepay.plugins.framed.framing import skip_preamble

START = 0x68
END = 0x16
PREAMBLE = b"\xfe\xfe\xfe\xfe"
OFFSET = 0x33
BROADCAST = "999999999999"
WILDCARD = "AAAAAAAAAAAA"
#: Start, address, start, control, length, checksum, end.
OVERHEAD = 12
MAX_DATA = 200

#: Control byte bits.
REPLY = 0x80
ERROR = 0x40
FOLLOWS = 0x20
FUNCTION = 0x1F


class Function(enum.IntEnum):
    BROADCAST_TIME = 0x08
    READ = 0x11
    READ_FOLLOWUP = 0x12
    READ_ADDRESS = 0x13
    WRITE = 0x14
    WRITE_ADDRESS = 0x15
    CHANGE_BAUD = 0x17
    REMOTE_CONTROL = 0x1C


#: Bits of the error byte of an error answer (C | 0x40).
ERROR_BITS = {
    0: "other error",
    1: "no such data (DI not supported)",
    2: "wrong password or not authorized",
    3: "baud rate cannot be changed",
    4: "too many year time zones",
    5: "too many day periods",
    6: "too many tariffs",
}


class FrameError(ValueError):
    """Bytes that are not a valid DL/T 645 frame, or not the answer that was asked for."""


def describe_error(code: int) -> str:
    names = [name for bit, name in ERROR_BITS.items() if code & (1 << bit)]
    return ", ".join(names) or f"error byte 0x{code:02X}"


# -- addresses and BCD -----------------------------------------------------------------------
def address_bytes(address: str) -> bytes:
    """ "000012345678" → 78 56 34 12 00 00; "AAAAAAAAAAAA" → AA × 6."""
    if len(address) != 12 or not all(c in "0123456789Aa" for c in address):
        raise ValueError(f"a DL/T 645 address has 12 digits, got {address!r}")
    return bytes.fromhex(address)[::-1]


def address_text(raw: bytes) -> str:
    return raw[::-1].hex().upper()


def to_bcd(value: int, size: int) -> bytes:
    """Non-negative `value` as `size` BCD bytes, low byte first."""
    digits = f"{value:0{size * 2}d}"
    if value < 0 or len(digits) > size * 2:
        raise ValueError(f"{value} does not fit {size} BCD bytes")
    return bytes.fromhex(digits)[::-1]


def from_bcd(raw: bytes) -> int:
    """BCD bytes, low byte first → int; a nibble above 9 is a `FrameError`."""
    text = raw[::-1].hex()
    if not text.isdigit():
        raise FrameError(f"not BCD: {raw.hex(' ').upper()}")
    return int(text)


def di_bytes(di: int) -> bytes:
    return di.to_bytes(4, "little")


def di_text(di: int) -> str:
    return f"{di:08X}"


def time_bytes(at: datetime) -> bytes:
    """ss mm hh DD MM YY, BCD (a meter's local time)."""
    return bytes(
        to_bcd(v, 1)[0] for v in (at.second, at.minute, at.hour, at.day, at.month, at.year % 100)
    )


def time_from_bytes(raw: bytes) -> datetime:
    ss, mm, hh, day, month, yy = (from_bcd(raw[i : i + 1]) for i in range(6))
    try:
        return datetime(2000 + yy, month, day, hh, mm, ss)
    except ValueError as exc:
        raise FrameError(f"not a date and time: {raw.hex(' ').upper()}") from exc


# -- frames -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Frame:
    address: str
    control: int
    #: The data as the application sees it (the +33H already taken off).
    data: bytes = b""

    @property
    def function(self) -> int:
        return self.control & FUNCTION

    @property
    def is_reply(self) -> bool:
        return bool(self.control & REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.control & ERROR)

    @property
    def follows(self) -> bool:
        return bool(self.control & FOLLOWS)

    def encode(self) -> bytes:
        if len(self.data) > MAX_DATA:
            raise ValueError(f"DL/T 645 data is at most {MAX_DATA} bytes, got {len(self.data)}")
        body = (
            bytes([START])
            + address_bytes(self.address)
            + bytes([START, self.control, len(self.data)])
            + bytes((b + OFFSET) & 0xFF for b in self.data)
        )
        return body + bytes([sum(body) & 0xFF, END])


def decode(raw: bytes) -> Frame:
    """A frame from `raw` (leading FE bytes allowed); `FrameError` for anything else."""
    start = skip_preamble(raw)
    frame = raw[start:]
    if not frame:
        raise FrameError("no frame: only preamble bytes")
    if frame[0] != START:
        raise FrameError(f"start byte 0x{frame[0]:02X}, expected 0x68")
    if len(frame) < OVERHEAD:
        raise FrameError(f"frame of {len(frame)} bytes, shorter than the 12 of an empty frame")
    if frame[7] != START:
        raise FrameError(f"second start byte 0x{frame[7]:02X}, expected 0x68")
    length = frame[9]
    if len(frame) != OVERHEAD + length:
        raise FrameError(f"length byte says {length} data bytes, frame holds {len(frame) - 12}")
    if frame[-1] != END:
        raise FrameError(f"end byte 0x{frame[-1]:02X}, expected 0x16")
    checksum = sum(frame[:-2]) & 0xFF
    if frame[-2] != checksum:
        raise FrameError(f"checksum 0x{frame[-2]:02X}, computed 0x{checksum:02X}")
    data = bytes((b - OFFSET) & 0xFF for b in frame[10:-2])
    return Frame(address_text(frame[1:7]), frame[8], data)


class Dlt645Framing:
    """Where a DL/T 645 frame ends in the bytes received (for the framed transport)."""

    name = "DL/T 645"
    preamble = PREAMBLE

    def scan(self, buffer: bytes) -> FrameScan:
        start = skip_preamble(buffer)
        rest = buffer[start:]
        if not rest:
            return FrameScan(start)
        if rest[0] != START:
            return FrameScan(start, problem=f"start byte 0x{rest[0]:02X}, expected 0x68")
        if len(rest) >= 8 and rest[7] != START:
            return FrameScan(start, problem=f"second start byte 0x{rest[7]:02X}, expected 0x68")
        if len(rest) < 10:
            return FrameScan(start)
        end = start + OVERHEAD + rest[9]
        if len(buffer) < end:
            return FrameScan(start)
        return FrameScan(start, end)


FRAMING = Dlt645Framing()


# -- requests --------------------------------------------------------------------------------
def read_request(address: str, di: int) -> Frame:
    return Frame(address, Function.READ, di_bytes(di))


def read_followup_request(address: str, di: int, seq: int) -> Frame:
    return Frame(address, Function.READ_FOLLOWUP, di_bytes(di) + bytes([seq & 0xFF]))


def read_address_request() -> Frame:
    return Frame(WILDCARD, Function.READ_ADDRESS)


def time_sync_request(local_time: datetime) -> Frame:
    return Frame(BROADCAST, Function.BROADCAST_TIME, time_bytes(local_time))


class RemoteAction(enum.IntEnum):
    """N1 of a remote-control (1C) request."""

    TRIP = 0x1A
    ALLOW_CLOSE = 0x1B
    CLOSE = 0x1C
    ALARM = 0x2A
    CANCEL_ALARM = 0x2B
    PROTECT = 0x3A
    CANCEL_PROTECT = 0x3B


def remote_control_request(
    address: str, action: int, password: str, operator: str, expires_local: datetime
) -> Frame:
    """1C in plaintext: PA P0 P1 P2 | C0..C3 | N1 N2 | ss mm hh DD MM YY.

    `password` is 8 digits, level first ("02123456": level 02, password 123456);
    `operator` 8 digits. Both go low byte first after the level."""
    return Frame(
        address,
        Function.REMOTE_CONTROL,
        password_bytes(password)
        + to_bcd(int(operator), 4)
        + bytes([action, 0])
        + time_bytes(expires_local),
    )


def password_bytes(password: str) -> bytes:
    if len(password) != 8 or not password.isdigit():
        raise ValueError(f"expected 8 digits (level + 6-digit password), got {password!r}")
    return bytes.fromhex(password[:2]) + to_bcd(int(password[2:]), 3)


# -- answers ---------------------------------------------------------------------------------
def check_answer(answer: Frame, request: Frame) -> Frame:
    """`answer` if it is the meter's answer to `request`; `FrameError` otherwise (an error
    answer is returned: the caller decides what its error byte means)."""
    if not answer.is_reply:
        raise FrameError(f"control 0x{answer.control:02X} is not an answer (direction bit 0)")
    if answer.function != request.function:
        raise FrameError(
            f"answer to function 0x{answer.function:02X}, asked 0x{request.function:02X}"
        )
    if request.address not in (WILDCARD, BROADCAST) and answer.address != request.address:
        raise FrameError(f"answer from address {answer.address}, asked {request.address}")
    if answer.is_error and len(answer.data) != 1:
        raise FrameError(f"error answer with {len(answer.data)} data bytes, expected 1")
    if answer.function in (Function.READ, Function.READ_FOLLOWUP) and not answer.is_error:
        if len(answer.data) < 4:
            raise FrameError(f"read answer of {len(answer.data)} bytes has no DI")
        if answer.data[:4] != request.data[:4]:
            raise FrameError(
                f"answer for DI {di_text(int.from_bytes(answer.data[:4], 'little'))}, "
                f"asked {di_text(int.from_bytes(request.data[:4], 'little'))}"
            )
    return answer
