"""DL/T 645 meter profiles: which data identifiers a model answers, as TOML data files.

A profile says what the model is (`[model]`, with `supply` and `limits` as in the Modbus
profiles), which DIs one poll reads and which points each answer holds, in order
(`[[reads]]`), how each point is encoded (`[points.<name>]`: a BCD `format` such as
"XXXXXX.XX", `signed`, or a bit of a status word: `from` + `bit`), and the remote-control
commands with their read-back check (`[commands.<name>]`). Every DI and point carries
`verified` and `source`. `refuse` marks a model the plugin knows but will not drive (State
Grid ESAM meters), with the reason a user is shown. Format: plugins/dlt645/README.md.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from openprepay.core.config.profiles import load_profile_folder, read_limits
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

from .codec import RemoteAction, from_bcd, to_bcd


@dataclass(frozen=True, slots=True)
class PointFormat:
    """How one point sits in an answer: BCD digits with a decimal point, or a raw word."""

    name: str
    #: Bytes in the answer (0 for a bit point derived from a status word).
    size: int
    decimals: int = 0
    signed: bool = False
    #: "bcd" or "word" (a little-endian bit field such as status word 3).
    kind: str = "bcd"
    #: For bit points: the word point and the bit, and whether 1 means the point's 0.
    source: str | None = None
    bit: int | None = None
    invert: bool = False

    def decode(self, raw: bytes) -> float | int:
        if self.kind == "word":
            return int.from_bytes(raw, "little")
        if self.signed:
            negative = bool(raw[-1] & 0x80)
            value = from_bcd(raw[:-1] + bytes([raw[-1] & 0x7F]))
            value = -value if negative else value
        else:
            value = from_bcd(raw)
        return value / 10**self.decimals if self.decimals else value

    def encode(self, value: float | int) -> bytes:
        if self.kind == "word":
            return int(value).to_bytes(self.size, "little")
        scaled = round(abs(value) * 10**self.decimals)
        # The sign is the top bit of the last byte: a signed value's top digit is 0..7.
        limit = 8 * 10 ** (self.size * 2 - 1) if self.signed else 10 ** (self.size * 2)
        scaled %= limit  # a register wraps like the meter's
        raw = to_bcd(scaled, self.size)
        if self.signed and value < 0:
            raw = raw[:-1] + bytes([raw[-1] | 0x80])
        return raw


@dataclass(frozen=True, slots=True)
class DataRead:
    di: int
    points: tuple[PointFormat, ...]
    #: A DI the meter may not have: an error answer "no such data" drops its points.
    optional: bool = False
    verified: bool = True
    source: str = ""

    @property
    def size(self) -> int:
        return sum(p.size for p in self.points)


@dataclass(frozen=True, slots=True)
class RemoteCommand:
    name: str
    action: RemoteAction
    point: str
    expect: int
    confirm_delay_s: float
    spec: CommandSpec


@dataclass(frozen=True, slots=True)
class Dlt645Profile:
    model: DeviceModel
    reads: tuple[DataRead, ...]
    #: Bit points derived from word points after a read.
    bits: tuple[PointFormat, ...]
    commands: dict[str, RemoteCommand]
    #: Why the plugin will not drive this model (None: it will).
    refuse: str | None = None
    path: Path | None = None

    def read_of(self, point: str) -> DataRead:
        source = next((b.source for b in self.bits if b.name == point), None) or point
        for read in self.reads:
            if any(p.name == source for p in read.points):
                return read
        raise KeyError(point)


def parse_format(text: str) -> tuple[int, int] | None:
    """ "XXXXXX.XX" → (4 bytes, 2 decimals); None if not an even count of digits."""
    digits = text.replace(".", "")
    if not digits or set(digits.upper()) - {"X", "N"} or len(digits) % 2 or text.count(".") > 1:
        return None
    decimals = len(text.split(".")[1]) if "." in text else 0
    return len(digits) // 2, decimals


def load_profile(path: Path) -> Dlt645Profile:
    errors: list[FieldError] = []
    with path.open("rb") as f:
        data = tomllib.load(f)
    root = TableReader(data, "", errors)
    formats: dict[str, PointFormat] = {}
    specs: dict[str, PointSpec] = {}
    for name, r in root.entries("points", required=True):
        found = _read_point(name, r)
        r.finish()
        if found is not None:
            specs[name], formats[name] = found
    reads = []
    used: set[str] = set()
    raw_reads = root.raw("reads", [])
    for i, raw in enumerate(raw_reads if isinstance(raw_reads, list) else []):
        r = TableReader(raw, f"reads[{i}]", errors)
        di = r.str("di")
        names = r.str_list("points")
        optional = r.bool("optional", False)
        verified = r.bool("verified", True)
        source = r.str("source", "")
        r.finish()
        if di is None or names is None:
            continue
        try:
            di_value = int(di, 16)
            if len(di) != 8:
                raise ValueError
        except ValueError:
            r.error(f"expected 8 hex digits as written in the standard, got {di!r}", "di")
            continue
        unknown = [n for n in names if n not in formats or formats[n].size == 0]
        if unknown:
            r.error(f"no value point(s) named {', '.join(unknown)}", "points")
            continue
        used.update(names)
        reads.append(
            DataRead(di_value, tuple(formats[n] for n in names), optional, verified, source)
        )
    bits = tuple(f for f in formats.values() if f.bit is not None)
    for f in bits:
        if f.source not in formats or formats[f.source].kind != "word":
            errors.append(FieldError(f"points.{f.name}.from", f"no word point {f.source!r}"))
    model = _read_model(root.table("model", required=True), specs)
    commands: dict[str, RemoteCommand] = {}
    for name, r in root.entries("commands"):
        command = _read_command(name, r, specs)
        r.finish()
        if command is not None:
            commands[name] = command
    refuse = root.str("refuse", None)
    root.finish()
    if model is not None and model.supply is not None:
        for cmd in (model.supply.cut, model.supply.restore):
            if cmd not in commands:
                errors.append(FieldError("model.supply", f"no command named {cmd!r}"))
    if errors or model is None:
        raise ConfigError(str(path), errors)
    model = dataclasses.replace(
        model, commands=tuple(c.spec for c in commands.values()), profile=str(path)
    )
    return Dlt645Profile(model, tuple(reads), bits, commands, refuse, path)


def _read_point(name: str, r: TableReader) -> tuple[PointSpec, PointFormat] | None:
    fmt = r.str("format", None)
    signed = r.bool("signed", False)
    source = r.str("from", None)
    bit = r.int("bit", None, low=0, high=15)
    invert = r.bool("invert", False)
    unit = r.str("unit", "")
    description = r.str("description")
    role = r.str("role", PointRole.MEASUREMENT.value, choices=[p.value for p in PointRole])
    low = r.number("low", None)
    high = r.number("high", None)
    legal = r.raw("legal", None)
    verified = r.bool("verified", True)
    src = r.str("source", "")
    if description is None or role is None:
        return None
    if (fmt is None) == (source is None):
        r.error('give either format = "XXXXXX.XX" (or "word16") or from + bit', "format")
        return None
    if source is not None:
        if bit is None:
            r.error("missing (required with from): the bit of the word, 0..15", "bit")
            return None
        point = PointFormat(name, 0, kind="bit", source=source, bit=bit, invert=bool(invert))
        value_type, legal = ValueType.INT, legal or [0, 1]
        step = rollover = None
    elif fmt in ("word16", "word32"):
        point = PointFormat(name, 2 if fmt == "word16" else 4, kind="word")
        value_type, step, rollover = ValueType.INT, None, None
    else:
        parsed = parse_format(str(fmt))
        if parsed is None:
            r.error(f'expected BCD digits like "XXXXXX.XX" or "word16", got {fmt!r}', "format")
            return None
        size, decimals = parsed
        point = PointFormat(name, size, decimals, bool(signed))
        value_type = ValueType.INT if decimals == 0 else ValueType.FLOAT
        step = 10.0**-decimals
        digits = size * 2 - (1 if signed else 0)
        rollover = 10.0 ** (digits - decimals) if role == PointRole.CUMULATIVE else None
    spec = PointSpec(
        name=name,
        unit=unit or "",
        description=description,
        role=PointRole(role),
        value_type=value_type,
        resolution=step,
        rollover=rollover,
        low=low,
        high=high,
        legal=None if legal is None else tuple(legal),
        verified=bool(verified),
        source=src or "",
    )
    return spec, point


def _read_model(r: TableReader, specs: dict[str, PointSpec]) -> DeviceModel | None:
    name = r.str("name")
    vendor = r.str("vendor")
    product = r.str("product")
    kind = r.str("kind", "electric", choices=[k.value for k in MeterKind])
    description = r.str("description")
    total = r.str("total_point", None)
    tariffs = r.str_list("tariff_points", [])
    supply = None
    if r.has("supply"):
        s = r.table("supply")
        cut, restore, state = s.str("cut"), s.str("restore"), s.str("state_point")
        s.finish()
        if state is not None and state not in specs:
            s.error(f"no point named {state!r}", "state_point")
        elif cut and restore and state:
            supply = SupplyControl(cut, restore, state)
    limits = read_limits(r, kind) if r.has("limits") else None
    r.finish()
    for point in [total, *(tariffs or [])]:
        if point is not None and point not in specs:
            r.error(f"no point named {point!r}", "total_point")
    if None in (name, vendor, product, kind, description):
        return None
    return DeviceModel(
        name=name,
        vendor=vendor,
        product=product,
        kind=MeterKind(kind),
        description=description,
        points=tuple(specs.values()),
        supply=supply,
        total_point=total,
        tariff_points=tuple(tariffs or ()),
        limits=limits,
        protocol="dlt645",
    )


def _read_command(name: str, r: TableReader, specs: dict[str, PointSpec]) -> RemoteCommand | None:
    action = r.str("action", choices=[a.name for a in RemoteAction])
    description = r.str("description")
    confirm = r.table("confirm", required=True)
    point = confirm.str("point")
    expect = confirm.int("expect")
    confirm.finish()
    delay_ms = r.number("confirm_delay_ms", 500, low=0, high=60000)
    verified = r.bool("verified", True)
    source = r.str("source", "")
    if point is not None and point not in specs:
        confirm.error(f"no point named {point!r}", "point")
        return None
    if None in (action, description, point, expect, delay_ms):
        return None
    spec = CommandSpec(name, description, {}, bool(verified), source or "")
    return RemoteCommand(name, RemoteAction[action], point, expect, delay_ms / 1000, spec)


def load_profiles(folder: Path) -> dict[str, Dlt645Profile]:
    return load_profile_folder(folder, load_profile)
