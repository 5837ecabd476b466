"""Encoding samples and events as InfluxDB line protocol, vectorised.

A poll produces many samples of a few models whose values always have the same points in
the same order. The encoder groups the samples of a commit by *layout* (model, point order,
with or without a device clock) and encodes each group with numpy, column by column, into
one byte matrix:

- the values are gathered into one float64 matrix (one C call per group);
- checks are vectorised: finiteness, integral values in integer points, and for float
  points the number of decimals `d` such that `rint(x * 10**d) / 10**d == x` — then the
  decimal k / 10**d printed with d decimals parses back to exactly x (float division is
  correctly rounded), so nothing is lost;
- digits are produced for whole columns at once (integer division by powers of ten), the
  literal parts (measurement, tags, field names, separators) are broadcast, and the padding
  is squeezed out with one boolean mask.

No Point objects, no per-field Python code. A row that fails a check (NaN, 1/3, a string, a
fraction in an integer point), a Bad sample, a per-point quality and every event take the
careful per-field path instead, which gives the same line a %-formatter would.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from openprepay.core.config.site import Site
from openprepay.core.events import Event
from openprepay.core.model import DeviceModel, Quality, Sample, ValueType

from .schema import event_measurement, event_parts, field_name, sample_tags, series_kind

_MEASUREMENT_ESCAPE = str.maketrans({",": r"\,", " ": r"\ ", "\n": " "})
_KEY_ESCAPE = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": " "})
_STRING_ESCAPE = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})

_MICROSECOND = timedelta(microseconds=1)
#: Rows encoded at once: enough to amortise numpy's per-call cost, few enough to keep the
#: temporaries in the CPU cache.
BLOCK_ROWS = 1024
#: Largest integer a float64 holds exactly.
_EXACT = float(2**53)
#: Decimals tried for a float column when its resolution gives no hint.
_DECIMALS = (0, 1, 2, 3, 4, 5, 6)
_BOOLS = np.array([list(b"false"), [*b"true", 0]], dtype=np.uint8)


def escape_key(text: str) -> str:
    return text.translate(_KEY_ESCAPE)


def escape_measurement(text: str) -> str:
    return text.translate(_MEASUREMENT_ESCAPE)


def string_field(text: str) -> str:
    return '"' + text.translate(_STRING_ESCAPE) + '"'


def to_ns(t: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime (naive counts as UTC), exactly."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def from_ns(ns: int) -> datetime:
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // 1000)


def format_value(value: object, vt: ValueType | None) -> str | None:
    """One field value, coerced to the point's type; None when it cannot be written."""
    if value is None:
        return None
    if vt is ValueType.BOOL or (vt is None and isinstance(value, bool)):
        return "true" if value else "false"
    if isinstance(value, str):
        return string_field(value)
    if vt is ValueType.INT or (vt is None and isinstance(value, int)):
        if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
            return repr(value) if math.isfinite(value) and vt is None else None
        return f"{int(value)}i"
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return string_field(str(value))
    return repr(number) if math.isfinite(number) else None


@dataclass(slots=True)
class _Layout:
    """How one (model, point order, device clock) group of samples is encoded."""

    #: Column indexes (in the sample's value order) by type.
    floats: np.ndarray
    ints: np.ndarray
    bools: np.ndarray
    #: Escaped "name=" bytes per column of each type.
    float_names: list[bytes]
    int_names: list[bytes]
    bool_names: list[bytes]
    #: Decimals to try first per float column (from the resolution, then what last fit).
    decimals: list[int | None]
    has_lag: bool
    points: int
    #: Escaped prefixes (measurement and tags) by source.
    prefix_index: dict[str, int] = field(default_factory=dict)
    prefixes: list[bytes] = field(default_factory=list)
    #: The prefixes as a zero-padded byte matrix.
    table: np.ndarray | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """Encoded lines ready for the spool: `data` ends with a newline."""

    data: bytes
    lines: int
    points: int
    first_ns: int
    last_ns: int


class LineEncoder:
    def __init__(
        self, site: Site | None, on_new_series: Callable[[str, DeviceModel], None] | None = None
    ) -> None:
        self.site = site
        #: Called with (source, model) the first time a source's samples of a model are seen.
        self.on_new_series = on_new_series
        self._prefixes: dict[tuple[str, str], str] = {}
        self._layouts: dict[tuple[str, tuple[str, ...], bool], _Layout | None] = {}

    # -- samples, one at a time -----------------------------------------------------------
    def prefix(self, source: str, model: DeviceModel) -> str:
        key = (source, model.name)
        prefix = self._prefixes.get(key)
        if prefix is None:
            measurement = escape_measurement(series_kind(model).measurement)
            tags = sample_tags(self.site, model, source)
            prefix = measurement + "".join(
                f",{escape_key(k)}={escape_key(v)}" for k, v in tags.items() if v
            )
            self._prefixes[key] = prefix
            if self.on_new_series is not None:
                self.on_new_series(source, model)
        return prefix

    def sample_line(self, sample: Sample) -> tuple[str, int, int]:
        """(line without newline, points written, time in ns), field by field."""
        t = sample.device_time or sample.read_at
        ns = to_ns(t)
        prefix = self.prefix(sample.source, sample.model)
        extra = ""
        if sample.device_time is not None:
            extra = f",read_lag_ms={_lag_ms(sample)!r}"
        specs = {p.name: p for p in sample.model.points}
        fields: list[str] = []
        overrides: dict[str, int] = {}
        if sample.quality.is_good or sample.quality is Quality.UNCERTAIN:
            for name, value in sample.values.items():
                spec = specs.get(name)
                text = format_value(value, spec.value_type if spec else None)
                if text is None:
                    if value is not None:  # NaN, infinity, a fraction in an integer point
                        overrides[name] = int(Quality.BAD_DEVICE_FAILURE)
                    continue
                fields.append(f"{escape_key(field_name(name))}={text}")
        points = len(fields)
        for name, q in (sample.point_quality or {}).items():
            if q > sample.quality:
                overrides[name] = max(int(q), overrides.get(name, 0))
        fields.append(f"quality={int(sample.quality)}i")
        for name, q in overrides.items():
            fields.append(f"{escape_key('quality_' + name)}={q}i")
        if sample.error and not sample.quality.is_good:
            fields.append(f"error={string_field(sample.error[:1000])}")
        return f"{prefix} {','.join(fields)}{extra} {ns}", points, ns

    # -- events ---------------------------------------------------------------------------
    def event_line(self, event: Event) -> tuple[str, int, int]:
        tags, fields, at = event_parts(event, self.site)
        ns = to_ns(at)
        head = escape_measurement(event_measurement(event)) + "".join(
            f",{escape_key(k)}={escape_key(v)}" for k, v in tags.items()
        )
        body = ",".join(
            f"{escape_key(k)}={text}"
            for k, v in fields.items()
            if (text := format_value(v, None)) is not None
        )
        return f"{head} {body or 'occurred=true'} {ns}", 1, ns

    # -- batches --------------------------------------------------------------------------
    def encode(self, items: Sequence[Sample | Event], max_lines: int) -> list[Chunk]:
        """Lines of `items` cut into chunks of at most `max_lines` lines, chunks in order."""
        return [
            self._encode_chunk(items[i : i + max_lines]) for i in range(0, len(items), max_lines)
        ]

    def _encode_chunk(self, items: Sequence[Sample | Event]) -> Chunk:
        groups: dict[tuple[str, tuple[str, ...], bool], list[Sample]] = {}
        parts: list[bytes] = []
        single: list[str] = []
        lines = points = 0
        first, last = 2**63, -(2**63)
        good = Quality.GOOD
        for item in items:
            if isinstance(item, Sample):
                if item.quality is good and not item.point_quality and item.values:
                    key = (item.model.name, tuple(item.values), item.device_time is not None)
                    group = groups.get(key)
                    if group is None:
                        groups[key] = group = []
                    group.append(item)
                    continue
                line, n, ns = self.sample_line(item)
            elif isinstance(item, Event):
                line, n, ns = self.event_line(item)
            else:
                continue
            single.append(line)
            points += n
            first, last = min(first, ns), max(last, ns)
        for key, samples in groups.items():
            layout = self._layout(key, samples[0].model)
            if layout is None:
                rest = samples
            else:
                rest = []
                # Blocks small enough for the temporaries to stay in the CPU cache.
                for i in range(0, len(samples), BLOCK_ROWS):
                    data, rows, n, lo, hi, left = self._encode_group(
                        layout, samples[i : i + BLOCK_ROWS]
                    )
                    rest += left
                    if rows:
                        parts.append(data)
                        lines += rows
                        points += n
                        first, last = min(first, lo), max(last, hi)
            for sample in rest:
                line, n, ns = self.sample_line(sample)
                single.append(line)
                points += n
                first, last = min(first, ns), max(last, ns)
        if single:
            single.append("")
            parts.append("\n".join(single).encode())
            lines += len(single) - 1
        return Chunk(b"".join(parts), lines, points, first, last)

    def _layout(self, key: tuple[str, tuple[str, ...], bool], model: DeviceModel) -> _Layout | None:
        if key in self._layouts:
            return self._layouts[key]
        _, names, has_lag = key
        specs = {p.name: p for p in model.points}
        layout = None
        if all(n in specs for n in names):
            by_type: dict[ValueType, list[int]] = {t: [] for t in ValueType}
            for i, n in enumerate(names):
                by_type[specs[n].value_type].append(i)

            def named(idx: list[int]) -> list[bytes]:
                return [f"{escape_key(field_name(names[i]))}=".encode() for i in idx]

            floats = by_type[ValueType.FLOAT]
            layout = _Layout(
                floats=np.array(floats, dtype=np.intp),
                ints=np.array(by_type[ValueType.INT], dtype=np.intp),
                bools=np.array(by_type[ValueType.BOOL], dtype=np.intp),
                float_names=named(floats),
                int_names=named(by_type[ValueType.INT]),
                bool_names=named(by_type[ValueType.BOOL]),
                decimals=[_decimals_of(specs[names[i]].resolution) for i in floats],
                has_lag=has_lag,
                points=len(names),
            )
        self._layouts[key] = layout
        return layout

    def _encode_group(
        self, layout: _Layout, samples: list[Sample]
    ) -> tuple[bytes, int, int, int, int, list[Sample]]:
        """(bytes, lines, points, first ns, last ns, samples left for the careful path)."""
        try:
            matrix = np.array([tuple(s.values.values()) for s in samples], dtype=np.float64)
        except (TypeError, ValueError):  # a string or an object among the values
            return b"", 0, 0, 0, 0, samples
        columns, ok = _checked_columns(layout, matrix, samples)
        rest = [s for s, good in zip(samples, ok.tolist(), strict=True) if not good]
        if rest:
            columns = columns.rows(np.flatnonzero(ok))
            samples = [s for s, good in zip(samples, ok.tolist(), strict=True) if good]
        m = len(samples)
        if not m:
            return b"", 0, 0, 0, 0, rest
        prefixes = self._prefix_rows(layout, samples)
        data = _render(layout, columns, prefixes)
        ns = columns.ns
        return data, m, m * layout.points, int(ns.min()), int(ns.max()), rest

    def _prefix_rows(self, layout: _Layout, samples: list[Sample]) -> np.ndarray:
        """Each sample's measurement and tags, as rows of the layout's prefix table."""
        model = samples[0].model
        index = layout.prefix_index
        rows = []
        for s in samples:
            i = index.get(s.source)
            if i is None:
                i = index[s.source] = len(layout.prefixes)
                layout.prefixes.append(self.prefix(s.source, model).encode() + b" ")
            rows.append(i)
        if layout.table is None or len(layout.table) != len(layout.prefixes):
            width = max(len(p) for p in layout.prefixes)
            layout.table = np.zeros((len(layout.prefixes), width), dtype=np.uint8)
            for i, p in enumerate(layout.prefixes):
                layout.table[i, : len(p)] = np.frombuffer(p, dtype=np.uint8)
        return layout.table[np.array(rows, dtype=np.intp)]


@dataclass(slots=True)
class _Columns:
    """A group's values by type, each row's time in ns and read lag, and the decimals each
    float column is printed with."""

    floats: np.ndarray
    ints: np.ndarray
    bools: np.ndarray
    ns: np.ndarray
    lag: np.ndarray | None
    decimals: list[int]

    def rows(self, keep: np.ndarray) -> _Columns:
        lag = self.lag[keep] if self.lag is not None else None
        return _Columns(
            self.floats[keep], self.ints[keep], self.bools[keep], self.ns[keep], lag, self.decimals
        )


def _checked_columns(
    layout: _Layout, matrix: np.ndarray, samples: list[Sample]
) -> tuple[_Columns, np.ndarray]:
    """The group's columns, and which rows print exactly: finite floats with few enough
    decimals, integral integers, booleans, a lag in whole microseconds."""
    times = [s.device_time or s.read_at for s in samples]
    seconds = np.fromiter(
        (t.timestamp() if t.tzinfo else t.replace(tzinfo=UTC).timestamp() for t in times),
        np.float64,
        len(times),
    )
    ns = np.rint(seconds * 1e6).astype(np.int64) * 1000
    ok = np.ones(len(samples), dtype=bool)

    fm = matrix[:, layout.floats]
    ok &= np.isfinite(fm).all(axis=1)
    im = matrix[:, layout.ints]
    ok &= ((np.rint(im) == im) & (np.abs(im) < _EXACT)).all(axis=1)
    bm = matrix[:, layout.bools]
    ok &= ~np.isnan(bm).any(axis=1)
    decimals = []
    for j in range(fm.shape[1]):
        d, fits = _fit_decimals(fm[:, j], ok, layout.decimals[j])
        layout.decimals[j] = d
        decimals.append(d)
        ok &= fits
    lag = None
    if layout.has_lag:
        lag = np.array([_lag_ms(s) for s in samples], dtype=np.float64)
        lag_k = np.rint(lag * 1000)
        ok &= np.isfinite(lag) & (lag_k / 1000 == lag) & (np.abs(lag_k) < _EXACT)
    return _Columns(fm, im, bm, ns, lag, decimals), ok


def _render(layout: _Layout, columns: _Columns, prefixes: np.ndarray) -> bytes:
    """The lines: every number of a kind at once (fixed-point floats, integers, the
    timestamp), literal parts broadcast, the padding squeezed out with one mask."""
    fm, im, bm, ns, lag = columns.floats, columns.ints, columns.bools, columns.ns, columns.lag
    decimals = columns.decimals
    m = len(ns)
    segments: list[np.ndarray] = [prefixes]
    d = np.array(decimals, dtype=np.int64)
    fk = np.rint(fm * 10.0**d).astype(np.int64)
    f_digits, f_width = _digit_block(np.abs(fk), d + 1)
    ik = np.rint(im).astype(np.int64)
    i_digits, _ = _digit_block(np.abs(ik), np.ones(ik.shape[1], dtype=np.int64))
    t_digits, _ = _digit_block(np.abs(ns)[:, None], np.ones(1, dtype=np.int64))
    dot = _literal(b".", m)

    sep = b""
    for j, name in enumerate(layout.float_names):
        segments.append(_literal(sep + name, m))
        if (fk[:, j] < 0).any():
            segments.append(_sign(fk[:, j] < 0))
        split = f_width - decimals[j]
        if decimals[j]:
            segments += [f_digits[:, j, :split], dot, f_digits[:, j, split:]]
        else:
            segments.append(f_digits[:, j])
        sep = b","
    for j, name in enumerate(layout.int_names):
        segments.append(_literal(sep + name, m))
        if (ik[:, j] < 0).any():
            segments.append(_sign(ik[:, j] < 0))
        segments += [i_digits[:, j], _literal(b"i", m)]
        sep = b","
    for j, name in enumerate(layout.bool_names):
        segments.append(_literal(sep + name, m))
        segments.append(_BOOLS[(bm[:, j] != 0).astype(np.intp)])
        sep = b","
    segments.append(_literal(sep + b"quality=0i", m))
    if lag is not None:
        segments.append(_literal(b",read_lag_ms=", m))
        segments.extend(_fixed_point(lag, 3))
    segments.append(_literal(b" ", m))
    if (ns < 0).any():
        segments.append(_sign(ns < 0))
    segments += [t_digits[:, 0], _literal(b"\n", m)]
    block = np.concatenate(segments, axis=1)
    return block[block != 0].tobytes()


def _lag_ms(sample: Sample) -> float:
    assert sample.device_time is not None
    return ((sample.read_at - sample.device_time) // _MICROSECOND) / 1000


def _decimals_of(resolution: float | None) -> int | None:
    if not resolution or resolution <= 0:
        return None
    d = -math.log10(resolution)
    return round(d) if abs(d - round(d)) < 1e-9 and 0 <= round(d) <= 9 else None


def _fit_decimals(column: np.ndarray, ok: np.ndarray, hint: int | None) -> tuple[int, np.ndarray]:
    """The fewest decimals that print `column` exactly, and which rows fit them."""
    candidates = ([hint] if hint is not None else []) + [d for d in _DECIMALS if d != hint]
    best: tuple[int, np.ndarray] | None = None
    with np.errstate(invalid="ignore", over="ignore"):
        for d in candidates:
            scale = 10.0**d
            k = np.rint(column * scale)
            fits = (k / scale == column) & (np.abs(k) < _EXACT)
            if fits[ok].all():
                if d == hint or best is None:
                    return d, fits
                break
            if best is None or fits.sum() > best[1].sum():
                best = (d, fits)
        # Fewer decimals may fit every row when the hint did not: take the smallest that does.
        for d in _DECIMALS:
            scale = 10.0**d
            k = np.rint(column * scale)
            fits = (k / scale == column) & (np.abs(k) < _EXACT)
            if fits[ok].all():
                return d, fits
    assert best is not None
    return best


def _literal(text: bytes, rows: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text, dtype=np.uint8), (rows, len(text)))


#: "0000".."9999" as bytes: digits are produced four at a time.
_DIGITS4 = np.array([list(b"%04d" % i) for i in range(10000)], dtype=np.uint8)


def _width_digits(k: np.ndarray, width: int) -> np.ndarray:
    """The last `width` decimal digits of each non-negative int64 of `k` (any shape), as
    bytes along a new last axis, with leading zeros."""
    groups = (width + 3) // 4
    parts = []
    rest = k
    for _ in range(groups):
        parts.append(_DIGITS4[rest % 10000])
        rest = rest // 10000
    out = parts[0] if groups == 1 else np.concatenate(parts[::-1], axis=-1)
    return out[..., groups * 4 - width :]


def _digits(k: np.ndarray, min_digits: int = 1) -> np.ndarray:
    """Decimal digits of non-negative int64 `k`, right-aligned; leading positions are 0."""
    top = int(k.max()) if len(k) else 0
    width = max(len(str(top)), min_digits)
    out = _width_digits(k, width)
    if width > min_digits and int(k.min()) < 10 ** (width - 1):
        # Blank the leading zeros of the shorter numbers.
        count = np.full(len(k), max(min_digits, 1), dtype=np.int64)
        for p in range(max(min_digits, 1), width):
            count += k >= 10**p
        keep = np.arange(width)[None, :] >= (width - count)[:, None]
        out = out * keep
    return out


def _digit_block(k: np.ndarray, min_digits: np.ndarray) -> tuple[np.ndarray, int]:
    """Digits of a (rows x columns) matrix of non-negative int64, right-aligned in a common
    width: (rows x columns x width) bytes with leading positions 0, and the width. Column c
    keeps at least `min_digits[c]` digits (the zeros of "0.05")."""
    rows, cols = k.shape
    if not rows or not cols:
        return np.zeros((rows, cols, 1), dtype=np.uint8), 1
    top = int(k.max())
    width = max(len(str(top)), int(min_digits.max()))
    out = _width_digits(k, width)
    count = np.ones((rows, cols), dtype=np.int64)
    for p in range(1, width):
        count += k >= 10**p
    count = np.maximum(count, min_digits[None, :])
    if int(count.min()) < width:
        out = out * (np.arange(width)[None, None, :] >= (width - count)[:, :, None])
    return out, width


def _sign(negative: np.ndarray) -> np.ndarray:
    return np.where(negative, np.uint8(45), np.uint8(0)).astype(np.uint8)[:, None]


def _integer(column: np.ndarray, exact: np.ndarray | None = None) -> list[np.ndarray]:
    k = exact if exact is not None else np.rint(column).astype(np.int64)
    if (k < 0).any():
        return [_sign(k < 0), _digits(np.abs(k))]
    return [_digits(k)]


def _fixed_point(column: np.ndarray, decimals: int) -> list[np.ndarray]:
    k = np.rint(column * 10.0**decimals).astype(np.int64)
    negative = k < 0
    k = np.abs(k)
    out = [_sign(negative)] if negative.any() else []
    if decimals == 0:
        return [*out, _digits(k)]
    scale = 10**decimals
    dot = np.full((len(k), 1), 46, dtype=np.uint8)
    return [*out, _digits(k // scale), dot, _digits(k % scale, min_digits=decimals)]


def _chunk(lines: Sequence[str], points: int, first: int, last: int) -> Chunk:
    lines = list(lines)
    lines.append("")
    return Chunk("\n".join(lines).encode(), len(lines) - 1, points, first, last)


def gzip_member(data: bytes, level: int = 1) -> bytes:
    """One gzip member; members concatenate into a valid multi-member gzip stream."""
    z = zlib.compressobj(level, zlib.DEFLATED, 31)
    return z.compress(data) + z.flush()


def gunzip(data: bytes) -> bytes:
    """Decompress a (multi-member) gzip stream."""
    out = []
    while data:
        d = zlib.decompressobj(31)
        out.append(d.decompress(data))
        out.append(d.flush())
        data = d.unused_data
    return b"".join(out)
