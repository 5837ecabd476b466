"""Meter register readings at the capture instants (`billing_reading`).

Apportionment needs the main meter and its sub-meters read **at the same instant, from
their own cumulative registers** (domain.md §4, never integrated power). The meters in use
have no frozen-data registers, so the service keeps, for every pool meter and every
POSTPAID meter, **the last Good reading at or before each capture instant** (each
site-local day at the freeze hour; the month's freeze instant is one of them):

- `ReadingCapture.on_sample` (on the bus, cheap) only remembers the latest Good sample of
  each meter and, when a sample arrives after a capture instant, the last one before it;
- `flush()` saves them (every `reading_flush_s`, and when the service stops) with an upsert
  that keeps the *latest* reading at or before the instant, so an instance that saw an
  older reading never overwrites a newer one; the periodic flush writes a provisional
  reading (its instant still ahead) at most every `PROVISIONAL_SAVE_S` per meter. A
  reading that was saved for the coming instant stays the reading of that instant if
  nothing newer arrives before it (the meter went silent): its `read_at` tells how old it
  is, and a run whose readings are older than `reading_max_age_h` is held.

Operators record readings by hand for a meter that could not be read (`source = manual`);
a captured reading never overwrites a manual one.

Energy is stored in 0.001 kWh or m³ (the rating engine's unit), from the meter's register
counts (`RegisterLayout`), never from floats added up.
"""

from __future__ import annotations

import datetime as dt
import json
import zlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import FastStatement, db_time
from ..db import schema as t
from ..db.among import among
from ..db.dialect_insert import dialect_insert
from ..events import utcnow
from ..ledger import RequestError
from ..model import DeviceModel, MeterKind, PointRole, PointSpec, Quality, Sample
from ..numbers import NumberRefused, read_decimal
from ..rating.errors import RatingError
from ..rating.layout import RegisterLayout
from ..rating.units import ENERGY_SCALE
from .periods import Calendar

CAPTURED = "meter"
MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Reading:
    meter_id: str
    at: dt.datetime
    read_at: dt.datetime
    #: Total register, 0.001 kWh or m³.
    energy: int
    #: Rate register point name → 0.001 units.
    registers: Mapping[str, int] = field(default_factory=dict)
    source: str = CAPTURED
    #: The registers as stored (JSON text), when read with them.
    registers_text: str = ""


def energy_of(layout: RegisterLayout, values: Mapping[str, Any]) -> tuple[int, dict[str, int]]:
    """(total, {register: units}) of one reading's engineering values, in 0.001 units."""
    counts = layout.counts(values)
    units = [c * f for c, f in zip(counts, layout.unit_factor, strict=True)]
    registers = dict(zip(layout.points, units, strict=True))
    if layout.has_total:
        total = units[0]
        registers.pop(layout.points[0])
    else:
        total = sum(units)
    return total, registers


def modulus_units(layout: RegisterLayout) -> int | None:
    """Where the total register wraps, in 0.001 units (None: it does not)."""
    if layout.has_total:
        m = layout.modulus[0]
        return None if m is None else m * layout.unit_factor[0]
    return None


def _upsert(conn: Connection) -> Any:
    stmt = dialect_insert(conn, t.billing_reading)
    r = t.billing_reading
    return stmt.on_conflict_do_update(
        index_elements=[r.c.meter_id, r.c.at],
        set_={
            "read_at": stmt.excluded.read_at,
            "energy": stmt.excluded.energy,
            "registers": stmt.excluded.registers,
            "source": stmt.excluded.source,
            "recorded_by": stmt.excluded.recorded_by,
            "updated_at": stmt.excluded.updated_at,
        },
        where=sa.and_(r.c.source != MANUAL, stmt.excluded.read_at > r.c.read_at),
    )


def save_captured(conn: Connection, readings: Iterable[Reading], *, now: dt.datetime) -> int:
    """Upsert captured readings, keeping the latest one at or before each instant."""
    rows = [
        {
            "meter_id": r.meter_id,
            "at": r.at,
            "read_at": r.read_at,
            "energy": r.energy,
            "registers": dict(r.registers),
            "source": CAPTURED,
            "recorded_by": "capture",
            "updated_at": now,
        }
        for r in readings
    ]
    if rows:
        conn.execute(_upsert(conn), rows)
    return len(rows)


def record_reading(
    conn: Connection,
    meter_id: str,
    at: dt.datetime,
    energy: Decimal | str | int,
    *,
    registers: Mapping[str, Decimal | str | int] | None = None,
    read_at: dt.datetime | None = None,
    recorded_by: str,
    known_meters: Collection[str] | None = None,
    model: DeviceModel | None = None,
    now: dt.datetime | None = None,
) -> Reading:
    """An operator's reading of `meter_id` for capture instant `at` (kWh or m³ as
    decimals): replaces whatever was captured for that instant. Errors name the field.
    With the meter's `model`, values beyond a register's range (its rollover or declared
    high) and registers the model does not have are refused."""
    if known_meters is not None and meter_id not in known_meters:
        shown = ", ".join(sorted(known_meters)[:8])
        raise RequestError("meter", f"unknown meter {meter_id!r} (site meters: {shown}, ...)")
    if at.tzinfo is None:
        raise RequestError("at", "expected a time with its zone")
    read_at = read_at or at
    if read_at > at:
        raise RequestError("read_at", "a reading for an instant cannot be taken after it")
    if not recorded_by or not recorded_by.strip():
        raise RequestError("recorded_by", "required (audit)")
    total_spec, specs = register_specs(model, [str(k) for k in (registers or {})])
    units = _units(energy, "energy", total_spec)
    regs = {
        str(k): _units(v, f"registers.{k}", specs[str(k)]) for k, v in (registers or {}).items()
    }
    now = now or utcnow()
    r = t.billing_reading
    conn.execute(r.delete().where(r.c.meter_id == meter_id, r.c.at == at))
    conn.execute(
        r.insert(),
        {
            "meter_id": meter_id,
            "at": at,
            "read_at": read_at,
            "energy": units,
            "registers": regs,
            "source": MANUAL,
            "recorded_by": recorded_by[:100],
            "updated_at": now,
        },
    )
    return Reading(meter_id, at, read_at, units, regs, MANUAL)


#: A register value beyond this (kWh or m³) is refused even where the model declares no range.
MAX_REGISTER = Decimal(10**9)


def _units(value: Decimal | str | int, field: str, spec: PointSpec | None = None) -> int:
    """A register value typed by an operator as 0.001 units: the one number form, at most
    3 decimals, from 0 to below the register's rollover (or to its declared `high`)."""
    high = MAX_REGISTER
    if spec is not None and spec.high is not None:
        high = min(high, Decimal(repr(spec.high)))
    if spec is not None and spec.rollover is not None:
        # The register wraps at rollover: its largest reading is one resolution below.
        step = Decimal(repr(spec.resolution)) if spec.resolution else Decimal("0.001")
        high = min(high, Decimal(repr(spec.rollover)) - step)
    try:
        d = read_decimal(
            value,
            places=3,
            low=Decimal(0),
            high=high,
            what="a register value",
            example="1234.56",
        )
    except NumberRefused as refused:
        beyond = " (the register's range)" if refused.out_of_range and high < MAX_REGISTER else ""
        raise RequestError(field, refused.message + beyond) from None
    return int(d * ENERGY_SCALE)


def meter_model(site: Any, models: Mapping[str, DeviceModel], meter_id: str) -> DeviceModel | None:
    """The model of a site meter (None for an unknown meter or model)."""
    device = site.devices.get(meter_id)
    return None if device is None else models.get(device.model)


def register_specs(
    model: DeviceModel | None, registers: Iterable[str]
) -> tuple[PointSpec | None, dict[str, PointSpec | None]]:
    """The point specs of a model's total register and of the named rate registers, for the
    range checks of a manual reading; a rate register the model does not have is refused."""
    if model is None:
        return None, {name: None for name in registers}
    total = model.point(model.total_point) if model.total_point else None
    known = {p.name: p for p in model.points if p.role == PointRole.CUMULATIVE}
    out: dict[str, PointSpec | None] = {}
    for name in registers:
        if name not in known:
            raise RequestError(
                f"registers.{name}",
                f"{model.name} has no cumulative register {name!r} "
                f"(it has: {', '.join(sorted(known)) or 'none'})",
            )
        out[name] = known[name]
    return total, out


def readings_at(
    conn: Connection,
    meters: Collection[str],
    at: dt.datetime,
    *,
    registers: bool = True,
    decode: bool = True,
) -> dict[str, Reading]:
    """The readings of `meters` for capture instant `at` (meters without one are absent);
    `registers=False` leaves the rate registers out (the totals are all a pool needs);
    `decode=False` keeps them as stored text only (`registers_text`, for digests)."""
    r = t.billing_reading
    columns = [r.c.meter_id, r.c.read_at, r.c.energy, r.c.source]
    if registers:  # as text: decoded here, and hashed as it is by bills' digests
        columns.append(sa.cast(r.c.registers, sa.Text))
    out = {}
    ids = sorted(set(meters))
    loads = json.loads
    if registers and len(ids) > 2000:  # most of the site: one pass over the instant
        wanted = set(ids)
        cursor = _all_at.execute(conn, {"at": db_time(conn, at)})
        rows = cursor.fetchall()
        cursor.close()
        for meter, read_at, energy, source, text in rows:
            if meter in wanted:
                regs = loads(text) if text and decode else {}
                out[meter] = Reading(
                    meter, at, raw_time(read_at), int(energy), regs, source, text or ""
                )
        return out
    for chunk in range(0, len(ids), 5000):
        rows = conn.execute(
            sa.select(*columns).where(r.c.at == at, r.c.meter_id.in_(ids[chunk : chunk + 5000]))
        ).all()
        for row in rows:
            text = row[4] if registers else ""
            regs = loads(text) if text and decode else {}
            out[row[0]] = Reading(row[0], at, row[1], int(row[2]), regs, row[3], text or "")
    return out


_r = t.billing_reading
_all_at = FastStatement(
    sa.select(
        _r.c.meter_id, _r.c.read_at, _r.c.energy, _r.c.source, sa.cast(_r.c.registers, sa.Text)
    ).where(_r.c.at == sa.bindparam("at"))
)


def raw_time(value: Any) -> dt.datetime:
    """A timestamp from a raw cursor row (`FastStatement`): SQLite's text or a datetime."""
    if isinstance(value, str):
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def readings_between(
    conn: Connection, meters: Collection[str], start: dt.datetime, end: dt.datetime
) -> dict[str, list[Reading]]:
    """Every reading of `meters` with start <= at <= end, per meter, oldest first."""
    r = t.billing_reading
    out: dict[str, list[Reading]] = {}
    rows = conn.execute(
        sa.select(r)
        .where(r.c.at >= start, r.c.at <= end, among(conn, r.c.meter_id, set(meters)))
        .order_by(r.c.meter_id, r.c.at)
    ).all()
    for row in rows:
        out.setdefault(row.meter_id, []).append(
            Reading(
                row.meter_id,
                row.at,
                row.read_at,
                int(row.energy),
                {k: int(v) for k, v in (row.registers or {}).items()},
                row.source,
            )
        )
    return out


def difference(start: Reading, end: Reading, modulus: int | None = None) -> int | None:
    """Energy between two readings of one meter (0.001 units); a register that wrapped is
    taken modulo its range when that is plausible (≤ 1 %), any other drop is None — never
    negative usage (a replaced or faulty meter needs a reading recorded by hand)."""
    delta = end.energy - start.energy
    if delta >= 0:
        return delta
    if modulus and delta + modulus <= modulus // 100:
        return delta + modulus
    return None


def _is_reading(sample: Sample, points: Sequence[str]) -> bool:
    """Whether `sample` holds every billing register Good. The sample stream carries more
    under a meter's id than its registers (the link's per-device health figures, a failed
    read's empty sample): only a reading may become the reading of an instant, else it
    would displace the real one held before it."""
    values = sample.values
    if sample.point_quality:
        return all(p in values and sample.quality_of(p).is_good for p in points)
    return all(p in values for p in points)


#: A meter's provisional reading (for a capture instant still ahead) is saved again at most
#: this often by the periodic flush; a final one (its instant passed) at the next flush,
#: everything at stop and before a month-end. Saving every meter's newest reading every
#: `reading_flush_s` was 10,000 upserts a minute per instance at 20,000 meters, a burst the
#: event loop lagged behind; a reading 10 minutes old is well inside `reading_max_age_h`.
PROVISIONAL_SAVE_S = 600


class ReadingCapture:
    """Keeps the last Good reading of each captured meter before each capture instant."""

    def __init__(
        self,
        calendar: Calendar,
        layouts: Mapping[str, RegisterLayout],
    ) -> None:
        self.calendar = calendar
        self.layouts = dict(layouts)
        #: meter → the sample held and the capture instant it is for (two dicts, not one
        #: of pairs: a pair holding a sample is one more object per meter for the
        #: collector to walk).
        self._held: dict[str, Sample] = {}
        self._held_at: dict[str, dt.datetime] = {}
        #: Samples to save: (meter, instant) → sample (final or provisional).
        self._dirty: dict[tuple[str, dt.datetime], Sample] = {}
        #: meter → when its provisional reading is to be saved again (read time).
        self._next_provisional: dict[str, dt.datetime] = {}

    @classmethod
    def for_meters(
        cls,
        calendar: Calendar,
        site: Any,
        models: Mapping[str, DeviceModel],
        meters: Iterable[str],
    ) -> ReadingCapture:
        layouts = {}
        for meter in meters:
            device = site.devices.get(meter)
            model = models.get(device.model) if device is not None else None
            if model is None or model.kind not in (MeterKind.ELECTRIC, MeterKind.WATER):
                continue
            try:
                layouts[meter] = RegisterLayout.from_model(model)
            except RatingError:
                continue
        return cls(calendar, layouts)

    def on_sample(self, sample: Sample) -> None:
        if sample.quality is not Quality.GOOD:
            return
        layout = self.layouts.get(sample.source)
        if layout is None or not _is_reading(sample, layout.points):
            return
        meter = sample.source
        held = self._held.get(meter)
        if held is not None and sample.read_at <= held.read_at:
            return
        held_at = self._held_at.get(meter)
        if held_at is not None and sample.read_at <= held_at:
            at = held_at
        else:
            at = self.calendar.capture_instant(sample.read_at)
        self._held[meter] = sample
        self._held_at[meter] = at
        self._dirty[(meter, at)] = sample

    @property
    def pending(self) -> int:
        return len(self._dirty)

    def take(self, now: dt.datetime | None = None) -> dict[tuple[str, dt.datetime], Sample]:
        """The samples to save since the last call (meter, instant → sample). With `now`,
        a provisional one (its instant after `now`) only when its meter's is due
        (`PROVISIONAL_SAVE_S`); the others stay for a later call."""
        # Swapped, not iterated in place: `on_sample` adds to it on the event loop meanwhile.
        dirty, self._dirty = self._dirty, {}
        if now is None:
            return dirty
        taken = {}
        due = self._next_provisional
        for key, sample in dirty.items():
            meter, at = key
            if at <= now or meter not in due or sample.read_at >= due[meter]:
                taken[key] = sample
            else:
                self._dirty.setdefault(key, sample)  # a newer one that came meanwhile wins
        return taken

    def saved(self, taken: Mapping[tuple[str, dt.datetime], Sample]) -> None:
        """`taken` is stored: each meter's next provisional save is `PROVISIONAL_SAVE_S`
        after this one. The first is spread over that span by the meter's id, so the
        meters do not all come due in the same flush."""
        period = dt.timedelta(seconds=PROVISIONAL_SAVE_S)
        for (meter, _at), sample in taken.items():
            if meter in self._next_provisional:
                self._next_provisional[meter] = sample.read_at + period
            else:
                spread = zlib.crc32(meter.encode()) % PROVISIONAL_SAVE_S
                self._next_provisional[meter] = sample.read_at + dt.timedelta(seconds=spread)

    def restore(self, taken: Mapping[tuple[str, dt.datetime], Sample]) -> None:
        """Samples whose save failed are kept for the next flush (newer ones win)."""
        for key, sample in taken.items():
            current = self._dirty.get(key)
            if current is None or current.read_at < sample.read_at:
                self._dirty[key] = sample

    def readings(self, taken: Mapping[tuple[str, dt.datetime], Sample]) -> list[Reading]:
        """`take()`'s samples as readings in register units (unusable samples skipped)."""
        out = []
        for (meter, at), sample in taken.items():
            layout = self.layouts[meter]
            if any(
                p not in sample.values or not sample.quality_of(p).is_good for p in layout.points
            ):
                continue
            try:
                energy, registers = energy_of(layout, sample.values)
            except (RatingError, InvalidOperation, ValueError, TypeError):
                continue
            out.append(Reading(meter, at, sample.read_at, energy, registers))
        return out
