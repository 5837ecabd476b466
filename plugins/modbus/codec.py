"""Turning register words into engineering values and back, a whole block at a time.

A block read returns N 16-bit words. `BlockDecoder` is compiled once per profile block: it
groups the block's points by wire type and keeps, per group, the byte positions of every
value (already permuted for the point's byte/word order). Decoding a block is then a few
vectorised numpy operations per group: gather bytes, view them as the wire type, scale.

Byte/word order uses the usual SCADA letters for a 32-bit value whose big-endian bytes are
A B C D: `ABCD` (high word first, the Modbus default), `CDAB` (word-swapped), `BADC`
(byte-swapped words), `DCBA` (fully little-endian, e.g. the Xintai water meter's floats).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

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
    def numpy_dtype(self) -> str:
        return {"u16": ">u2", "i16": ">i2", "u32": ">u4", "i32": ">i4", "f32": ">f4", "u64": ">u8"}[
            self.value
        ]

    @property
    def struct_code(self) -> str:
        return {"u16": "H", "i16": "h", "u32": "I", "i32": "i", "f32": "f", "u64": "Q"}[self.value]

    @property
    def is_float(self) -> bool:
        return self is WireType.F32


ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")


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

    @property
    def registers(self) -> int:
        return self.wire.registers

    def to_value(self, raw: float | int) -> Value:
        """Engineering value from the raw wire number (scalar path, for one point)."""
        if self.bit is not None:
            return (int(raw) >> self.bit) & 1
        if self.mapping is not None:
            return self.mapping.get(int(raw), -1)
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
        if not self.wire.is_float:
            raw = round(raw)
            lo, hi = _int_range(self.wire)
            if not lo <= raw <= hi:
                raise ValueError(f"{self.name}: {value} does not fit a {self.wire} register")
        big = struct.pack(">" + self.wire.struct_code, raw)
        positions = byte_positions(0, self.wire, self.order)
        wire_bytes = bytearray(len(big))
        for value_index, wire_index in enumerate(positions):
            wire_bytes[wire_index] = big[value_index]
        return [int.from_bytes(wire_bytes[i : i + 2], "big") for i in range(0, len(wire_bytes), 2)]


def _int_range(wire: WireType) -> tuple[int, int]:
    bits = 16 * wire.registers
    if wire in (WireType.I16, WireType.I32):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


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


@dataclass(slots=True)
class _Group:
    dtype: str
    positions: np.ndarray  # (n, bytes) gather indices
    codecs: list[PointCodec]
    divisors: np.ndarray
    multipliers: np.ndarray


@dataclass(slots=True)
class BlockDecoder:
    """Decodes every point of one contiguous register block in bulk."""

    start: int
    count: int
    codecs: Sequence[PointCodec]
    _groups: list[_Group] = field(default_factory=list)

    def __post_init__(self) -> None:
        by_dtype: dict[str, list[PointCodec]] = {}
        for codec in self.codecs:
            offset = codec.address - self.start
            if offset < 0 or offset + codec.registers > self.count:
                raise ValueError(
                    f"{codec.name} at 0x{codec.address:04X} is outside the block "
                    f"0x{self.start:04X}+{self.count}"
                )
            by_dtype.setdefault(codec.wire.numpy_dtype, []).append(codec)
        for dtype, codecs in by_dtype.items():
            positions = np.array(
                [byte_positions(c.address - self.start, c.wire, c.order) for c in codecs],
                dtype=np.intp,
            )
            divisors = np.array([_decimal_divisor(c.scale) or 1 for c in codecs], dtype=np.float64)
            multipliers = np.array(
                [1.0 if _decimal_divisor(c.scale) else c.scale for c in codecs], dtype=np.float64
            )
            self._groups.append(_Group(dtype, positions, codecs, divisors, multipliers))

    def decode(self, registers: Sequence[int], into: dict[str, Value]) -> None:
        """Decode `registers` (the block's words) and store every point's value in `into`."""
        if len(registers) != self.count:
            raise ValueError(f"expected {self.count} registers, got {len(registers)}")
        raw_bytes = np.asarray(registers, dtype=np.uint16).astype(">u2").view(np.uint8)
        for group in self._groups:
            raw = raw_bytes[group.positions].view(group.dtype).ravel()
            scaled = raw.astype(np.float64) / group.divisors * group.multipliers
            raws = raw.tolist()
            for codec, raw_value, value in zip(group.codecs, raws, scaled.tolist(), strict=True):
                if codec.bit is not None or codec.mapping is not None:
                    into[codec.name] = codec.to_value(raw_value)
                elif codec.value_type is ValueType.INT:
                    into[codec.name] = round(value)
                elif codec.value_type is ValueType.BOOL:
                    into[codec.name] = bool(value)
                else:
                    into[codec.name] = value
