"""CJ/T 188-2004 frames: encode, delimit and decode, checking everything a frame can get wrong.

Frame (reference/protocols.md §3.1)::

    FE FE | 68 | T | A0..A6 | C | L | DI0 DI1 SER data | CS | 16

- `T` is the meter type (0x10 cold water); the address is 14 BCD digits, sent low byte
  first (A0 holds the two lowest digits); `AAAAAAAAAAAAAA` is the wildcard.
- `C`: b7 direction (1 = the meter's reply), b6 error reply; read data 01 → 81 / C1,
  read address 03 → 83 / C3, write data 04 → 84 / C4.
- `L` counts DI, SER and data. Data is plain BCD (no +33H as in DL/T 645).
- `CS` is the sum mod 256 from the 68 to the last data byte.
- The DI is sent low byte first (`1F 90` for 901F) by the standard's own example; many
  tools and meters send it high byte first (`90 1F`). Replies are accepted in either
  order; the order of requests is a profile setting.

`decode` raises `FrameError` with a sentence naming what is wrong (checksum, length, end
byte, non-BCD digit, address or DI not the one asked for); a frame that raises is never
read for a value.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

START = 0x68
END = 0x16
WAKE = 0xFE
#: Preamble bytes a reply may carry (the standard's 2, some meters 3 or 4).
MAX_PREAMBLE = 4
ADDRESS_DIGITS = 14
WILDCARD = "A" * ADDRESS_DIGITS
#: Bytes from the 68 to L inclusive, and the CS and 16 after the data.
HEADER_LEN = 11
TRAILER_LEN = 2
#: DI (2) and SER (1) open the data of every frame.
DI_SER_LEN = 3
MAX_DATA_LEN = 0xFF

REPLY_BIT = 0x80
ERROR_BIT = 0x40


class MeterType(enum.IntEnum):
    COLD_WATER = 0x10
    HOT_WATER = 0x11
    DRINKING_WATER = 0x12
    RECLAIMED_WATER = 0x13
    HEAT_HEATING = 0x20
    HEAT_COOLING = 0x21
    GAS = 0x30
    ELECTRIC = 0x40


class Control(enum.IntEnum):
    READ_DATA = 0x01
    READ_ADDRESS = 0x03
    WRITE_DATA = 0x04
    READ_KEY_VERSION = 0x09
    WRITE_ADDRESS = 0x15
    WRITE_SYNC = 0x16


class DI(enum.IntEnum):
    METERING = 0x901F
    ADDRESS = 0x810A
    VALVE = 0xA017


#: Valve command bytes of DI A017.
VALVE_OPEN = 0x55
VALVE_CLOSE = 0x99

#: Unit codes after a BCD quantity, and their factor to the unit we publish.
UNITS: dict[int, tuple[str, Decimal]] = {
    0x2C: ("m³", Decimal(1)),
    0x29: ("L", Decimal("0.001")),  # to m³
    0x35: ("m³/h", Decimal(1)),
    0x32: ("L/h", Decimal("0.001")),  # to m³/h
    0x05: ("kWh", Decimal(1)),
    0x17: ("kW", Decimal(1)),
}
VOLUME_UNITS = (0x2C, 0x29)
#: Volume unit codes by the names a simulator option uses.
UNITS_BY_NAME = {"m3": 0x2C, "L": 0x29}
M3 = 0x2C


class FrameError(ValueError):
    """Bytes that are not a usable CJ/T 188 frame; the message says why."""


@dataclass(frozen=True, slots=True)
class Frame:
    meter_type: int
    address: str
    control: int
    di: int
    ser: int
    data: bytes = b""
    #: True when the DI went (or came) high byte first (`90 1F`).
    di_high_first: bool = False

    @property
    def is_reply(self) -> bool:
        return bool(self.control & REPLY_BIT)

    @property
    def is_error(self) -> bool:
        return bool(self.control & ERROR_BIT)

    @property
    def function(self) -> int:
        """The request's control code (a reply's without its direction and error bits)."""
        return self.control & 0x3F


# -- BCD and addresses ------------------------------------------------------------------------


def bcd_encode(value: int, length: int) -> bytes:
    """`value` as `length` bytes of BCD, low byte first."""
    if value < 0 or value >= 10 ** (2 * length):
        raise ValueError(f"{value} does not fit in {length} BCD bytes")
    digits = f"{value:0{2 * length}d}"
    return bytes(int(digits[i : i + 2], 16) for i in range(2 * length - 2, -2, -2))


def bcd_decode(data: bytes, what: str = "value") -> int:
    """BCD bytes, low byte first, as an integer; `FrameError` on a nibble above 9."""
    value = 0
    for byte in reversed(data):
        high, low = byte >> 4, byte & 0x0F
        if high > 9 or low > 9:
            raise FrameError(f"{what}: byte 0x{byte:02X} is not BCD")
        value = value * 100 + high * 10 + low
    return value


def check_address(address: str) -> str:
    """A meter address as 14 decimal digits (or the wildcard); `ValueError` otherwise."""
    text = str(address).strip().upper()
    if text == WILDCARD:
        return text
    if len(text) != ADDRESS_DIGITS or not text.isdigit():
        raise ValueError(
            f"expected {ADDRESS_DIGITS} decimal digits (the number on the meter's label, "
            f'zero-padded, e.g. "00000000001234"), got {address!r}'
        )
    return text


def address_bytes(address: str) -> bytes:
    text = check_address(address)
    if text == WILDCARD:
        return b"\xaa" * 7
    return bcd_encode(int(text), 7)


def address_text(raw: bytes) -> str:
    if raw == b"\xaa" * 7:
        return WILDCARD
    return f"{bcd_decode(raw, 'address'):0{ADDRESS_DIGITS}d}"


def checksum(data: bytes) -> int:
    return sum(data) & 0xFF


# -- frames -----------------------------------------------------------------------------------


def encode(frame: Frame, preamble: int = 2) -> bytes:
    """The bytes of `frame` on the wire, with `preamble` wake-up bytes (FE) in front."""
    if not 0 <= frame.meter_type <= 0xFF or not 0 <= frame.control <= 0xFF:
        raise ValueError("meter type and control code are single bytes")
    if not 0 <= frame.di <= 0xFFFF or not 0 <= frame.ser <= 0xFF:
        raise ValueError("DI is two bytes, SER one")
    di = frame.di.to_bytes(2, "big" if frame.di_high_first else "little")
    body = di + bytes([frame.ser]) + frame.data
    if len(body) > MAX_DATA_LEN:
        raise ValueError(f"{len(body)} data bytes, at most {MAX_DATA_LEN}")
    head = (
        bytes([START, frame.meter_type])
        + address_bytes(frame.address)
        + bytes([frame.control, len(body)])
    )
    core = head + body
    return bytes([WAKE]) * preamble + core + bytes([checksum(core), END])


def frame_length(buffer: bytes) -> int | None:
    """How many bytes of `buffer` the first frame takes (preamble included), or None while
    more bytes are needed. Raises `FrameError` when the bytes cannot start a frame."""
    start = 0
    while start < len(buffer) and buffer[start] == WAKE:
        start += 1
    if start > MAX_PREAMBLE:
        raise FrameError(f"{start} preamble bytes (FE), at most {MAX_PREAMBLE}")
    if start == len(buffer):
        return None
    if buffer[start] != START:
        raise FrameError(f"frame starts with 0x{buffer[start]:02X}, expected 0x68")
    if len(buffer) < start + HEADER_LEN:
        return None
    return start + HEADER_LEN + buffer[start + HEADER_LEN - 1] + TRAILER_LEN


def decode(
    raw: bytes,
    *,
    address: str | None = None,
    meter_type: int | None = None,
    di: int | None = None,
    ser: int | None = None,
) -> Frame:
    """The frame in `raw` (preamble allowed), checked end to end.

    With `address`, `meter_type`, `di` or `ser` the frame must echo them (a reply to
    another meter, or to an earlier request, is not this one's answer). A DI is accepted in
    either byte order.
    """
    length = frame_length(raw)
    if length is None:
        raise FrameError(f"truncated: {len(raw)} bytes, no complete frame")
    if len(raw) < length:
        raise FrameError(f"truncated: {len(raw)} bytes of a {length}-byte frame")
    if len(raw) > length:
        raise FrameError(f"{len(raw) - length} bytes after the end of the frame")
    start = 0
    while raw[start] == WAKE:
        start += 1
    core = raw[start : length - TRAILER_LEN]
    if raw[length - 1] != END:
        raise FrameError(f"frame ends with 0x{raw[length - 1]:02X}, expected 0x16")
    expected = checksum(core)
    if raw[length - 2] != expected:
        raise FrameError(f"checksum 0x{raw[length - 2]:02X}, computed 0x{expected:02X}")
    body = core[HEADER_LEN:]
    if len(body) < DI_SER_LEN:
        raise FrameError(f"L = {len(body)}, too short for DI and SER")
    frame_address = address_text(core[2:9])
    frame_type = core[1]
    di_value = int.from_bytes(body[:2], "little")
    high_first = False
    if di is not None and di_value != di:
        if int.from_bytes(body[:2], "big") != di:
            raise FrameError(f"DI {body[:2].hex(' ').upper()} is not the DI asked for ({di:04X})")
        di_value, high_first = di, True
    frame = Frame(frame_type, frame_address, core[9], di_value, body[2], body[3:], high_first)
    if address is not None and address != WILDCARD and frame_address != check_address(address):
        raise FrameError(f"reply from address {frame_address}, asked {address}")
    if meter_type is not None and frame_type != meter_type:
        raise FrameError(f"meter type 0x{frame_type:02X}, asked 0x{meter_type:02X}")
    if ser is not None and frame.ser != ser:
        raise FrameError(f"SER {frame.ser}, asked {ser} (a stale reply)")
    return frame


def reply_for(request: Frame, data: bytes = b"", error: bool = False) -> Frame:
    """The meter's answer to `request` (used by the simulator and tests)."""
    control = request.function | REPLY_BIT | (ERROR_BIT if error else 0)
    return Frame(
        request.meter_type,
        request.address,
        control,
        request.di,
        request.ser,
        data,
        request.di_high_first,
    )


# -- the data of replies ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quantity:
    """A BCD quantity with its unit code, converted to the published unit."""

    value: Decimal
    unit_code: int

    @property
    def unit(self) -> str:
        """The unit the meter reported in (`value` is already converted)."""
        return UNITS[self.unit_code][0]


@dataclass(frozen=True, slots=True)
class MeteringData:
    """The water/gas answer to DI 901F (L = 0x16)."""

    volume: Quantity
    settlement_volume: Quantity
    #: The meter's own clock, None when it reads all zeros (no clock fitted).
    meter_time: datetime | None
    #: ST, two bytes; byte 0 low.
    status: int


METERING_DATA_LEN = 5 + 5 + 7 + 2


def quantity(data: bytes, what: str, decimals: int = 2) -> Quantity:
    """4 BCD bytes (XXXXXX.XX) and a unit code, converted to m³ (or m³/h, kWh, kW)."""
    code = data[4]
    if code not in UNITS:
        known = ", ".join(f"{c:02X} {u}" for c, (u, _) in UNITS.items())
        raise FrameError(f"{what}: unit code 0x{code:02X} is not one of {known}")
    raw = Decimal(bcd_decode(data[:4], what)).scaleb(-decimals)
    return Quantity(raw * UNITS[code][1], code)


def encode_quantity(value: Decimal, unit_code: int = M3, decimals: int = 2) -> bytes:
    """`value` (in the unit of `unit_code`) as 4 BCD bytes and the unit code."""
    steps = int(value.scaleb(decimals).to_integral_value())
    return bcd_encode(steps, 4) + bytes([unit_code])


def bcd_time(data: bytes) -> datetime | None:
    """7 BCD bytes `ss mm hh DD MM YY YY` (low byte of the year first)."""
    if not any(data):
        return None
    second, minute, hour, day, month = (bcd_decode(data[i : i + 1], "time") for i in range(5))
    year = bcd_decode(data[5:7], "time")
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise FrameError(f"meter time {data.hex(' ').upper()}: {exc}") from None


def encode_time(at: datetime | None) -> bytes:
    if at is None:
        return bytes(7)
    return b"".join(bcd_encode(v, 1) for v in (at.second, at.minute, at.hour, at.day, at.month)) + (
        bcd_encode(at.year, 2)
    )


def decode_metering(data: bytes) -> MeteringData:
    """The data after DI and SER of a 901F reply from a water or gas meter."""
    if len(data) != METERING_DATA_LEN:
        raise FrameError(
            f"901F data of {len(data)} bytes, expected {METERING_DATA_LEN} (a water meter's layout)"
        )
    volume = quantity(data[0:5], "current cumulative flow")
    settlement = quantity(data[5:10], "settlement-day flow")
    for q, what in ((volume, "current cumulative flow"), (settlement, "settlement-day flow")):
        if q.unit_code not in VOLUME_UNITS:
            raise FrameError(f"{what}: unit {q.unit} is not a volume (m³ or L)")
    return MeteringData(
        volume, settlement, bcd_time(data[10:17]), int.from_bytes(data[17:19], "little")
    )


def encode_metering(m: MeteringData, unit_code: int = M3) -> bytes:
    factor = UNITS[unit_code][1]
    return (
        encode_quantity(m.volume.value / factor, unit_code)
        + encode_quantity(m.settlement_volume.value / factor, unit_code)
        + encode_time(m.meter_time)
        + m.status.to_bytes(2, "little")
    )
