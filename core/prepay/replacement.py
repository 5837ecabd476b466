"""Meter replacement: recording that the device behind a meter id was swapped.

`openprepay meter replace SITE METER --final-reading … --new-serial … --initial-reading …`
and the OPC UA method ReplaceMeter (both `Operations.replace_meter`) record one row of
`meter_replacement`: the old device's final reading and the new device's initial reading
of every register the meter is rated on (the total and, for a time-of-use meter, T1..Tn),
at the moment it is recorded. Metering applies it with the meter's next batch
(`core.rating.layout.Replacement`): the old device is billed from its last reading up to its
final reading, the new one from its initial reading on — nothing lost, nothing invented
(the new device's lower registers never read as a decrease). For a LOCAL meter the new
device's own purchase count is read and aligned with before the next delivery.

A reading is given as `total=1234.56,T1=100,T2=500.5,T3=400,T4=234.06` (or the model's
point names, `energy_total=…`); a meter rated on its total register alone takes a bare
number, and `0` stands for every register of a brand-new device.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t
from ..ledger import RequestError, insert_ignore
from ..rating.layout import RegisterLayout
from ..rating.units import ENERGY_SCALE

_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./:-]{0,63}$")


@dataclass(frozen=True, slots=True)
class ReplacementRecord:
    id: int
    meter_id: str
    at: datetime
    old_serial: str | None
    new_serial: str
    #: Register point name → value (kWh or m³, as given).
    final_reading: Mapping[str, str]
    initial_reading: Mapping[str, str]
    account_id: str | None

    def describe(self) -> str:
        return (
            f"meter {self.meter_id} replaced: {self.old_serial or 'old device'} final "
            f"{_text(self.final_reading)}; {self.new_serial} initial "
            f"{_text(self.initial_reading)}"
        )


def _text(reading: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in reading.items())


def parse_reading(
    layout: RegisterLayout, given: str | Mapping[str, object], field: str
) -> dict[str, str]:
    """Every rated register of `layout` from `given` (text or a mapping), as decimal text;
    `RequestError(field, …)` naming what is missing, unknown or out of range."""
    aliases = _aliases(layout)
    expected = ", ".join(aliases)
    if isinstance(given, str):
        text = given.strip()
        if not text:
            raise RequestError(field, f"required: {expected}")
        if "=" not in text:
            value = _value(text, field)
            if value == 0:
                return {p: "0" for p in layout.points}
            if len(layout.points) != 1:
                raise RequestError(
                    field,
                    f"this meter is rated on {len(layout.points)} registers: give each, "
                    f"e.g. {', '.join(f'{a}=…' for a in aliases)}",
                )
            given = {layout.points[0]: text}
        else:
            pairs = {}
            for part in re.split(r"[,;\s]+", text):
                if not part:
                    continue
                name, sep, value = part.partition("=")
                if not sep:
                    raise RequestError(field, f"expected NAME=VALUE, got {part!r}")
                pairs[name.strip()] = value.strip()
            given = pairs
    out: dict[str, str] = {}
    for name, raw in given.items():
        point = aliases.get(str(name), str(name) if str(name) in layout.points else None)
        if point is None:
            raise RequestError(field, f"unknown register {name!r} (registers: {expected})")
        if point in out:
            raise RequestError(field, f"register {name!r} given twice")
        value = _value(str(raw), f"{field}.{name}")
        index = layout.points.index(point)
        modulus = layout.modulus[index]
        if modulus is not None and value >= modulus * layout.resolution[index]:
            top = modulus * layout.resolution[index]
            raise RequestError(
                f"{field}.{name}", f"expected less than {top} (the register's range)"
            )
        steps = value / layout.resolution[index]
        if steps != steps.to_integral_value():
            raise RequestError(
                f"{field}.{name}",
                f"expected a multiple of the register's resolution {layout.resolution[index]}",
            )
        out[point] = format(value, "f")
    missing = [a for a, p in aliases.items() if p not in out]
    if missing:
        raise RequestError(field, f"missing register(s) {', '.join(missing)} (give {expected})")
    return {p: out[p] for p in layout.points}


def _aliases(layout: RegisterLayout) -> dict[str, str]:
    """Short names → point names: total, T1..Tn."""
    out = {}
    if layout.has_total:
        out["total"] = layout.points[0]
    for i, point in enumerate(layout.tou_points, 1):
        out[f"T{i}"] = point
    return out


def _value(text: str, field: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        raise RequestError(
            field, f"expected a register value such as 1234.56, got {text!r}"
        ) from None
    if not value.is_finite() or value < 0:
        raise RequestError(field, f"expected a register value >= 0, got {text!r}")
    if value * ENERGY_SCALE != (value * ENERGY_SCALE).to_integral_value():
        raise RequestError(field, f"at most 3 decimal places, got {text!r}")
    return value


def check_serial(serial: str) -> str:
    if not isinstance(serial, str) or not _SERIAL.match(serial.strip()):
        raise RequestError(
            "new_serial",
            "expected the new device's serial number: letters, digits and _ . / : - "
            f"(at most 64); got {serial!r}",
        )
    return serial.strip()


def record(
    conn: Connection,
    meter_id: str,
    kind: str,
    *,
    final_reading: Mapping[str, str],
    initial_reading: Mapping[str, str],
    new_serial: str,
    account_id: str | None,
    reason: str,
    recorded_by: str,
    now: datetime,
) -> ReplacementRecord:
    """Write the replacement (checked input) in the caller's transaction; the meter now
    names the new device's serial."""
    conn.execute(
        insert_ignore(conn, t.meter),
        {"id": meter_id, "kind": kind, "buy_count": 0, "confirmed_buy_count": 0, "updated_at": now},
    )
    old_serial = conn.execute(sa.select(t.meter.c.serial).where(t.meter.c.id == meter_id)).scalar()
    replacement_id = conn.execute(
        t.meter_replacement.insert().returning(t.meter_replacement.c.id),
        {
            "meter_id": meter_id,
            "at": now,
            "old_serial": old_serial,
            "new_serial": new_serial,
            "final_reading": dict(final_reading),
            "initial_reading": dict(initial_reading),
            "account_id": account_id,
            "reason": reason[:500],
            "recorded_by": recorded_by[:100],
            "created_at": now,
        },
    ).scalar_one()
    conn.execute(
        t.meter.update().where(t.meter.c.id == meter_id).values(serial=new_serial, updated_at=now)
    )
    return ReplacementRecord(
        int(replacement_id),
        meter_id,
        now,
        old_serial,
        new_serial,
        dict(final_reading),
        dict(initial_reading),
        account_id,
    )
