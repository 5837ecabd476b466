"""Register profiles: a device model's Modbus map as a TOML data file.

A profile says what a model is (`[model]`), which contiguous register ranges to read
(`[[blocks]]`), where each point sits and how to decode it (`[points.<name>]`), and how to
command it with a read-back check (`[commands.<name>]`). Every register carries `verified`
and `source`, because several vendor registers rest on a single source. A user with a
firmware variant edits a profile, not Python. The format is documented in
plugins/modbus/README.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openprepay.core.config.profiles import (
    load_profile_file,
    load_profile_folder,
    read_limits,
)
from openprepay.core.config.reader import TableReader
from openprepay.core.errors import ConfigError, FieldError
from openprepay.core.model import (
    CommandSpec,
    DeviceModel,
    MeterKind,
    PointRole,
    PointSpec,
    SupplyControl,
    ValueType,
)

from .codec import ORDERS, BlockDecoder, PointCodec, WireType

#: Modbus function codes a profile may use.
READ_FUNCTIONS = (3, 4)
WRITE_FUNCTIONS = (6, 16)
MAX_READ = 125


@dataclass(frozen=True, slots=True)
class Block:
    start: int
    count: int
    function: int = 3
    #: An optional block is read if the device has it; a device that rejects it (illegal
    #: address) keeps working without its points.
    optional: bool = False
    decoder: BlockDecoder | None = None


@dataclass(frozen=True, slots=True)
class CommandField:
    """One value written by a parameterised command: a constant or a parameter."""

    codec: PointCodec
    param: str | None = None
    constant: float | int | None = None


@dataclass(frozen=True, slots=True)
class Confirmation:
    """How to tell from a read-back that a command took effect.

    Either raw registers (`address`, `count`, `expect`) or a decoded point compared with a
    constant (`point`, `expect`) or with a command parameter (`point`, `expect_param`).
    """

    address: int | None = None
    count: int | None = None
    expect_registers: tuple[int, ...] = ()
    point: str | None = None
    expect_value: float | int | None = None
    expect_param: str | None = None


@dataclass(frozen=True, slots=True)
class CommandMap:
    name: str
    function: int
    address: int
    fields: tuple[CommandField, ...]
    confirm: Confirmation
    confirm_delay_s: float
    spec: CommandSpec

    def registers(self, params: Mapping[str, Any]) -> list[int]:
        words: list[int] = []
        for f in self.fields:
            value = f.constant if f.param is None else params[f.param]
            words.extend(f.codec.encode(value))
        return words


@dataclass(frozen=True, slots=True)
class RegisterProfile:
    model: DeviceModel
    blocks: tuple[Block, ...]
    codecs: Mapping[str, PointCodec]
    commands: Mapping[str, CommandMap]
    #: Point → multiplier name ("ct", "pt", "ctpt") for meters reporting secondary values.
    ratios: Mapping[str, str] = field(default_factory=dict)
    path: Path | None = None

    def block_of(self, point: str) -> Block:
        codec = self.codecs[point]
        for block in self.blocks:
            if block.start <= codec.address < block.start + block.count:
                return block
        raise KeyError(point)


def load_profiles(folder: str | Path) -> dict[str, RegisterProfile]:
    """Every `*.toml` profile of a folder, by model name (what a device plugin ships)."""
    return load_profile_folder(folder, load_profile)


def load_profile(path: str | Path) -> RegisterProfile:
    return load_profile_file(path, parse_profile)


def parse_profile(
    data: Mapping[str, Any], source: str = "profile", path: Path | None = None
) -> RegisterProfile:
    errors: list[FieldError] = []
    root = TableReader(dict(data), "", errors)
    m = root.table("model", required=True)
    proto = root.table("protocol")
    read_function = proto.int("read_function", 3)
    if read_function not in READ_FUNCTIONS:
        proto.error(f"expected 3 or 4, got {read_function}", "read_function")
    default_order = proto.str("order", "ABCD", choices=ORDERS) or "ABCD"
    proto.finish()

    points: dict[str, tuple[PointSpec, PointCodec]] = {}
    ratios: dict[str, str] = {}
    for name, r in root.entries("points", required=True):
        parsed = _read_point(name, r, default_order)
        r.finish()
        if parsed is not None:
            spec, codec, ratio = parsed
            points[name] = (spec, codec)
            if ratio:
                ratios[name] = ratio

    blocks = _read_blocks(root, read_function or 3, points, errors)

    commands: dict[str, CommandMap] = {}
    for name, r in root.entries("commands"):
        command = _read_command(name, r, default_order, points)
        r.finish()
        if command is not None:
            commands[name] = command

    model = _read_model(m, points, commands)
    root.finish()
    if errors or model is None:
        raise ConfigError(source, errors)
    return RegisterProfile(
        model=model,
        blocks=blocks,
        codecs={name: codec for name, (_, codec) in points.items()},
        commands=commands,
        ratios=ratios,
        path=path,
    )


def _read_model(
    r: TableReader,
    points: Mapping[str, tuple[PointSpec, PointCodec]],
    commands: Mapping[str, CommandMap],
) -> DeviceModel | None:
    name = r.str("name")
    vendor = r.str("vendor")
    product = r.str("product")
    kind = r.str("kind", choices=[MeterKind.ELECTRIC.value, MeterKind.WATER.value])
    description = r.str("description")
    total = r.str("total_point", None)
    tariffs = r.str_list("tariff_points", [])
    for key, names in (("total_point", [total] if total else []), ("tariff_points", tariffs or [])):
        for point in names:
            if point not in points:
                r.error(f"no point named {point!r}", key)
            elif points[point][0].role is not PointRole.CUMULATIVE:
                r.error(f'point {point!r} must have role = "cumulative"', key)
    supply = None
    if r.has("supply"):
        s = r.table("supply")
        cut, restore, state = s.str("cut"), s.str("restore"), s.str("state_point")
        s.finish()
        for key, cmd in (("cut", cut), ("restore", restore)):
            if cmd is not None and cmd not in commands:
                s.error(f"no command named {cmd!r}", key)
        if state is not None and state not in points:
            s.error(f"no point named {state!r}", "state_point")
        if cut and restore and state:
            supply = SupplyControl(cut, restore, state)
    limits = read_limits(r, kind) if r.has("limits") else None
    if limits is None and (total or tariffs):
        r.error(
            "missing (required for a model with total_point or tariff_points): the nameplate "
            "bounds how fast its registers can rise, e.g. { rated_voltage = 220, "
            "max_current = 60, phases = 1 } or, for water, { max_flow = 5 }",
            "limits",
        )
    r.finish()
    if None in (name, vendor, product, kind, description):
        return None
    return DeviceModel(
        name=name,
        vendor=vendor,
        product=product,
        kind=MeterKind(kind),
        description=description,
        points=tuple(spec for spec, _ in points.values()),
        commands=tuple(c.spec for c in commands.values()),
        supply=supply,
        total_point=total,
        tariff_points=tuple(tariffs or ()),
        limits=limits,
    )


def _read_point(
    name: str, r: TableReader, default_order: str
) -> tuple[PointSpec, PointCodec, str | None] | None:
    codec = _read_codec(name, r, default_order)
    unit = r.str("unit", "")
    description = r.str("description")
    role = r.str("role", PointRole.MEASUREMENT.value, choices=[p.value for p in PointRole])
    value_type = r.str("value", None, choices=[v.value for v in ValueType])
    low = r.number("low", None)
    high = r.number("high", None)
    legal = r.raw("legal", None)
    rollover = r.number("rollover", None, low=0.0, low_exclusive=True)
    resolution = r.number("resolution", None, low=0.0, low_exclusive=True)
    verified = r.bool("verified", True)
    src = r.str("source", "")
    ratio = r.str("ratio", None, choices=["ct", "pt", "ctpt"])
    if codec is None or description is None or role is None:
        return None
    if legal is not None and (
        not isinstance(legal, list)
        or not legal
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in legal)
    ):
        r.error("expected the list of values the register may hold, e.g. [0, 1]", "legal")
        legal = None
    if legal is None and codec.mapping is not None:
        legal = sorted(set(codec.mapping.values()))  # an unmapped raw value reads -1
    if low is not None and high is not None and low >= high:
        r.error(f"must be above low ({low:g})", "high")
    if resolution is not None and not codec.wire.is_float:
        r.error(
            "only f32 points take a resolution; an integer register steps by its scale",
            "resolution",
        )
        resolution = None
    if value_type is None:
        is_int = (
            codec.bit is not None
            or codec.mapping is not None
            or (not codec.wire.is_float and codec.scale == 1)
        )
        value_type = ValueType.INT if is_int else ValueType.FLOAT
    codec = PointCodec(
        codec.name,
        codec.address,
        codec.wire,
        codec.order,
        codec.scale,
        ValueType(value_type),
        codec.bit,
        codec.mapping,
        resolution,
    )
    # The step of the published value: a float's declared resolution, an integer's scale.
    step = resolution if codec.wire.is_float else (codec.scale if codec.bit is None else None)
    if role == PointRole.CUMULATIVE and rollover is None and not codec.wire.is_float:
        rollover = (1 << (16 * codec.registers)) * codec.scale
    spec = PointSpec(
        name=name,
        unit=unit or "",
        description=description,
        role=PointRole(role),
        value_type=ValueType(value_type),
        resolution=step,
        rollover=rollover,
        low=low,
        high=high,
        legal=None if legal is None else tuple(legal),
        verified=bool(verified),
        source=src or "",
    )
    return spec, codec, ratio


def _read_codec(name: str, r: TableReader, default_order: str) -> PointCodec | None:
    address = r.int("address", low=0, high=0xFFFF)
    wire = r.str("type", choices=[w.value for w in WireType])
    scale = r.number("scale", 1.0)
    order = r.str("order", default_order, choices=ORDERS)
    bit = r.int("bit", None, low=0, high=15)
    raw_map = r.raw("map", None)
    mapping = None
    if raw_map is not None:
        try:
            mapping = {int(k, 0): int(v) for k, v in raw_map.items()}
        except (AttributeError, ValueError, TypeError):
            r.error("expected a table of raw value = engineering value, e.g. { 0x55 = 0 }", "map")
    if address is None or wire is None or scale is None or order is None:
        return None
    if scale == 0:
        r.error("must not be 0", "scale")
        return None
    wire_type = WireType(wire)
    if (bit is not None or mapping is not None) and wire_type is not WireType.U16:
        r.error('bit and map need type = "u16"', "type")
        return None
    return PointCodec(name, address, wire_type, order, scale, ValueType.FLOAT, bit, mapping)


def _read_blocks(
    root: TableReader,
    default_function: int,
    points: Mapping[str, tuple[PointSpec, PointCodec]],
    errors: list[FieldError],
) -> tuple[Block, ...]:
    raw_blocks = root.raw("blocks", None)
    if not isinstance(raw_blocks, list) or not raw_blocks:
        root.error("expected one or more [[blocks]] (start, count)", "blocks")
        return ()
    placed: set[str] = set()
    blocks: list[Block] = []
    for i, raw in enumerate(raw_blocks):
        r = TableReader(raw, f"blocks[{i}]", errors)
        start = r.int("start", low=0, high=0xFFFF)
        count = r.int("count", low=1, high=MAX_READ)
        function = r.int("function", default_function)
        optional = r.bool("optional", False)
        r.finish()
        if function not in READ_FUNCTIONS:
            r.error(f"expected 3 or 4, got {function}", "function")
            continue
        if start is None or count is None:
            continue
        inside = [
            codec for name, (_, codec) in points.items() if start <= codec.address < start + count
        ]
        for codec in inside:
            if codec.address + codec.registers > start + count:
                errors.append(
                    FieldError(
                        f"points.{codec.name}.address",
                        f"0x{codec.address:04X} ({codec.wire}) runs past the end of "
                        f"blocks[{i}] (0x{start:04X}+{count})",
                    )
                )
                return ()
        placed.update(c.name for c in inside)
        blocks.append(
            Block(start, count, function, bool(optional), BlockDecoder(start, count, inside))
        )
    for name, (_, codec) in points.items():
        if name not in placed:
            errors.append(
                FieldError(
                    f"points.{name}.address",
                    f"0x{codec.address:04X} is outside every [[blocks]] range; add a block "
                    "that covers it",
                )
            )
    return tuple(blocks)


def _read_command(
    name: str,
    r: TableReader,
    default_order: str,
    points: Mapping[str, tuple[PointSpec, PointCodec]],
) -> CommandMap | None:
    description = r.str("description")
    function = r.int("function")
    address = r.int("address", low=0, high=0xFFFF)
    verified = r.bool("verified", True)
    src = r.str("source", "")
    delay_ms = r.number("confirm_delay_ms", 200, low=0, high=600_000)
    fields = _read_fields(r, default_order)
    confirm = _read_confirmation(r.table("confirm", required=True), points, fields)
    if function is not None and function not in WRITE_FUNCTIONS:
        r.error(
            f"expected 6 (write one register) or 16 (write several), got {function}", "function"
        )
        return None
    if None in (description, function, address, fields, confirm):
        return None
    assert fields is not None
    n_words = sum(f.codec.registers for f in fields)
    if function == 6 and n_words != 1:
        r.error(f"function 6 writes one register, the values take {n_words}", "function")
        return None
    params = {f.param: f"{f.codec.wire} value" for f in fields if f.param}
    spec = CommandSpec(name, description, params, bool(verified), src or "")
    return CommandMap(name, function, address, tuple(fields), confirm, delay_ms / 1000, spec)


def _read_fields(r: TableReader, default_order: str) -> list[CommandField] | None:
    """`values = [1, 1]` (constant u16 words) or `fields = [{ param = ..., type = ... }]`."""
    if r.has("values") == r.has("fields"):
        r.error("give either values = [words] or fields = [{ param, type }]", "values")
        r.raw("fields")
        return None
    if r.has("values"):
        words = r.raw("values")
        if not isinstance(words, list) or not all(
            isinstance(w, int) and 0 <= w <= 0xFFFF for w in words
        ):
            r.error("expected a list of 16-bit register values", "values")
            return None
        u16 = WireType.U16
        return [CommandField(PointCodec("value", 0, u16), None, w) for w in words]
    raw_fields = r.raw("fields")
    if not isinstance(raw_fields, list) or not raw_fields:
        r.error("expected a list of { param, type, scale } tables", "fields")
        return None
    out = []
    for i, raw in enumerate(raw_fields):
        fr = TableReader(raw, f"{r.path}.fields[{i}]", r.errors)
        param = fr.id("param", None)
        constant = fr.number("value", None)
        wire = fr.str("type", "u16", choices=[w.value for w in WireType])
        scale = fr.number("scale", 1.0)
        order = fr.str("order", default_order, choices=ORDERS)
        fr.finish()
        if (param is None) == (constant is None):
            fr.error("give either param (a command parameter) or value (a constant)", "param")
            continue
        if wire is None or scale is None or order is None:
            continue
        codec = PointCodec(param or "value", 0, WireType(wire), order, scale)
        out.append(CommandField(codec, param, None if constant is None else constant))
    return out if len(out) == len(raw_fields) else None


def _read_confirmation(
    r: TableReader,
    points: Mapping[str, tuple[PointSpec, PointCodec]],
    fields: Sequence[CommandField] | None,
) -> Confirmation | None:
    if r.has("point"):
        point = r.str("point")
        expect = r.number("expect", None)
        expect_param = r.id("expect_param", None)
        r.finish()
        if point is not None and point not in points:
            r.error(f"no point named {point!r}", "point")
            return None
        params = {f.param for f in fields or () if f.param}
        if expect_param is not None and expect_param not in params:
            r.error(f"the command has no parameter {expect_param!r}", "expect_param")
            return None
        if (expect is None) == (expect_param is None):
            r.error("give either expect (a value) or expect_param (a parameter name)", "expect")
            return None
        value = None if expect is None else (int(expect) if float(expect).is_integer() else expect)
        return Confirmation(point=point, expect_value=value, expect_param=expect_param)
    address = r.int("address", low=0, high=0xFFFF)
    expect = r.raw("expect", None)
    r.finish()
    if not isinstance(expect, list) or not all(isinstance(w, int) for w in expect) or not expect:
        r.error("expected a list of register values to read back", "expect")
        return None
    if address is None:
        return None
    return Confirmation(address=address, count=len(expect), expect_registers=tuple(expect))
