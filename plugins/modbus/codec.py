"""Turning register words into engineering values and back, a whole block at a time.

A block read returns N 16-bit words. `BlockDecoder` is compiled once per profile block into
one byte gather (undoing each point's byte/word order) and one `struct` layout, so decoding
a block is a single unpack plus each point's scaling, whatever the number of points.

Byte/word order uses the usual SCADA letters for a 32-bit value whose big-endian bytes are
A B C D: `ABCD` (high word first, the Modbus default), `CDAB` (word-swapped), `BADC`
(byte-swapped words), `DCBA` (fully little-endian, e.g. the Xintai water meter's floats).
"""

from __future__ import annotations

import enum
import functools
import math
import operator
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from openprepay.core.model import Value, ValueType


class WireType(enum.StrEnum):
    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    F32 = "f32"
    U64 = "u64"

    @property
    def registers(self) -> int:
        return {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2, "u64": 4}[self.value]

    @property
    def struct_code(self) -> str:
        return {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "f32": "f", "u64": "Q"}[self.value]

    @property
    def is_float(self) -> bool:
        return self is WireType.F32


ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
_F32 = struct.Struct(">f")


def byte_positions(offset: int, wire: WireType, order: str) -> list[int]:
    """Positions, in the block's big-endian byte string, of a value's bytes A, B, C, D...

    `offset` is the value's first register relative to the block start.
    """
    n_regs = wire.registers
    base = 2 * offset
    words = list(range(n_regs))
    if order in ("CDAB", "DCBA"):  # low word first on the wire
        words.reverse()
    swap_bytes = order in ("BADC", "DCBA")
    out: list[int] = []
    for w in words:
        hi, lo = base + 2 * w, base + 2 * w + 1
        out.extend((lo, hi) if swap_bytes else (hi, lo))
    return out


@dataclass(frozen=True, slots=True)
class PointCodec:
    """How one point sits in the registers."""

    name: str
    address: int
    wire: WireType
    order: str = "ABCD"
    #: value = raw × scale; stored as a power of ten where possible for exact decimals.
    scale: float = 1.0
    value_type: ValueType = ValueType.FLOAT
    #: For flags: the bit of a 16-bit register (0 = least significant).
    bit: int | None = None
    #: Raw value → engineering value (e.g. pipe status 0x55 → 0, 0xAA → 1).
    mapping: Mapping[int, int] | None = None
    #: For floats: the step the value is published in (0.001 m³); None publishes the
    #: shortest decimal the float32 register holds (0.6, not 0.6000000238418579).
    resolution: float | None = None

    @property
    def registers(self) -> int:
        return self.wire.registers

    def to_value(self, raw: float | int) -> Value:
        """Engineering value from the raw wire number (scalar path, for one point)."""
        if self.bit is not None:
            return (int(raw) >> self.bit) & 1
        if self.mapping is not None:
            return self.mapping.get(int(raw), -1)
        if self.wire.is_float and self.value_type is ValueType.FLOAT:
            return _float_rounding(self.resolution)(raw * self.scale)
        value = _scaled(raw, self.scale)
        if self.value_type is ValueType.INT:
            return round(value)
        if self.value_type is ValueType.BOOL:
            return bool(value)
        return float(value)

    def encode(self, value: Value) -> list[int]:
        """Registers that hold `value` (the inverse of decoding), for writes and simulators."""
        if self.bit is not None or self.mapping is not None:
            raise ValueError(f"{self.name}: flag and mapped points are encoded as whole registers")
        raw: float | int = value / self.scale if self.scale != 1 else value
        wire = self.wire
        if wire is not WireType.F32:
            raw = round(raw)
            lo, hi = _INT_RANGES[wire]
            if not lo <= raw <= hi:
                raise ValueError(f"{self.name}: {value} does not fit a {self.wire} register")
        return _word_packer(wire, self.order)(raw)

    def as_read(self, value: Value) -> Value:
        """What a read returns once `value` is written: encoded, then decoded with this
        codec (a float32 register holds 1234.567 as 1234.5670166…, published 1234.567)."""
        out: dict[str, Value] = {}
        BlockDecoder(self.address, self.registers, [self]).decode(self.encode(value), out)
        return out[self.name]


def _int_range(wire: WireType) -> tuple[int, int]:
    bits = 16 * wire.registers
    if wire in (WireType.I16, WireType.I32):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


_INT_RANGES = {wire: _int_range(wire) for wire in WireType if wire is not WireType.F32}


@functools.cache
def _word_packer(wire: WireType, order: str) -> Callable[[float | int], list[int]]:
    """Raw number → the registers that hold it in `order`, compiled once per layout:
    simulators encode every changed value of every meter on every step."""
    value = struct.Struct(">" + wire.struct_code)
    words = struct.Struct(f">{wire.registers}H")
    positions = byte_positions(0, wire, order)
    if positions == list(range(len(positions))):  # ABCD: the bytes are already in place
        return lambda raw: list(words.unpack(value.pack(raw)))
    # Wire byte i comes from value byte positions.index(i).
    gather = operator.itemgetter(*(positions.index(i) for i in range(len(positions))))
    return lambda raw: list(words.unpack(bytes(gather(value.pack(raw)))))


def _decimal_divisor(scale: float) -> int | None:
    """10**k when scale == 10**-k, so that raw / 10**k gives the exact decimal's float."""
    for k in range(1, 10):
        if abs(scale * 10**k - 1) < 1e-12:
            return 10**k
    return None


def _scaled(raw: float | int, scale: float) -> float | int:
    if scale == 1:
        return raw
    divisor = _decimal_divisor(scale)
    return raw / divisor if divisor else raw * scale


class BlockDecoder:
    """Decodes every point of one contiguous register block in one call.

    Compiled once: the bytes of every point are gathered (already permuted into big-endian
    order, whatever the point's byte/word order) into one contiguous layout that a single
    precompiled `struct.Struct` unpacks; each raw number then goes through its point's
    scaling. Overlapping points (a register read as a number and as flags) are fine.
    """

    def __init__(self, start: int, count: int, codecs: Sequence[PointCodec]) -> None:
        self.start = start
        self.count = count
        self.codecs = tuple(codecs)
        positions: list[int] = []
        codes = []
        for codec in self.codecs:
            offset = codec.address - start
            if offset < 0 or offset + codec.registers > count:
                raise ValueError(
                    f"{codec.name} at 0x{codec.address:04X} is outside the block "
                    f"0x{start:04X}+{count}"
                )
            positions.extend(byte_positions(offset, codec.wire, codec.order))
            codes.append(codec.wire.struct_code)
        self._words = struct.Struct(f">{count}H")
        self._layout = struct.Struct(">" + "".join(codes))
        # The common case (every point big-endian, in address order, no gaps) needs no
        # gathering: the block's bytes are the layout.
        identity = positions == list(range(len(positions)))
        self._gather = None if identity else operator.itemgetter(*positions)
        self._convert = tuple(_converter(codec) for codec in self.codecs)
        self._names = tuple(codec.name for codec in self.codecs)

    def decode(self, registers: Sequence[int], into: dict[str, Value]) -> None:
        """Decode `registers` (the block's words) and store every point's value in `into`."""
        if len(registers) != self.count:
            raise ValueError(f"expected {self.count} registers, got {len(registers)}")
        raw = self._words.pack(*registers)
        if self._gather is not None:
            gathered = self._gather(raw)
            raw = bytes(gathered) if isinstance(gathered, tuple) else bytes((gathered,))
        elif len(raw) != self._layout.size:
            raw = raw[: self._layout.size]
        for name, convert, value in zip(
            self._names, self._convert, self._layout.unpack(raw), strict=True
        ):
            into[name] = convert(value)


def shortest_float32(value: float) -> float:
    """The shortest decimal that reads back as the same float32: what the register holds,
    without the digits float32 → float64 conversion invents (0.6000000238418579 → 0.6)."""
    if not math.isfinite(value):
        return value
    single = _F32.unpack(_F32.pack(value))[0]
    for digits in range(6, 10):  # 9 significant digits always identify a float32
        shorter = float(f"{single:.{digits}g}")
        try:
            if _F32.unpack(_F32.pack(shorter))[0] == single:
                return shorter
        except OverflowError:  # rounded past the largest float32
            continue
    return single


def _float_rounding(resolution: float | None) -> Callable[[float], float]:
    """How a float register's value is published: to its declared step, or shortest."""
    if resolution is None:
        return shortest_float32
    divisor = _decimal_divisor(resolution)
    if divisor is not None:
        places = round(math.log10(divisor))
        return lambda value: round(value, places) if math.isfinite(value) else value
    step = Decimal(repr(resolution))
    return lambda value: (
        float(Decimal(round(value / resolution)) * step) if math.isfinite(value) else value
    )


def _converter(codec: PointCodec) -> Callable[[float | int], Value]:
    """The function turning a point's raw wire number into its engineering value."""
    if codec.wire.is_float and codec.value_type is ValueType.FLOAT:
        rounding = _float_rounding(codec.resolution)
        if codec.scale == 1:
            return rounding
        scale = codec.scale
        return lambda raw: rounding(raw * scale)
    if codec.bit is not None:
        bit = codec.bit
        return lambda raw: (raw >> bit) & 1
    if codec.mapping is not None:
        mapping = codec.mapping
        return lambda raw: mapping.get(raw, -1)
    divisor = _decimal_divisor(codec.scale)
    if codec.value_type is ValueType.INT:
        if codec.scale == 1:
            return int  # exact, whatever the width
        if divisor:
            return lambda raw: round(raw / divisor)
        return lambda raw: round(raw * codec.scale)
    if codec.value_type is ValueType.BOOL:
        return bool
    if codec.scale == 1:
        return float
    if divisor:
        return lambda raw: raw / divisor
    scale = codec.scale
    return lambda raw: raw * scale
