"""A bill's stored lines as a tenant reads them: each line's item, quantity, unit price and
amount in the bill's language, and the meter readings it was billed from.

Amounts are the bill's own fen, never recomputed. Quantities are shown at the precision of
the reading (`quantity_value`, 0.428 m³; bills drafted before it existed show their stored
`quantity`). A common-area line carries its shares as text (`apportion._lines`); its
quantity — the room's part of the pool's kWh or m³, Σ energy × weight / total weight — and
its explanation are read back from that text, and left off when it cannot be read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from ..ledger import format_fen
from ..rating.units import ENERGY_SCALE
from .bill_text import Words


@dataclass(frozen=True, slots=True)
class PrintedLine:
    item: str
    quantity: str
    unit_price: str
    amount_fen: int
    #: A smaller second line: the meter, how a share was found, which bill a fee is for.
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PrintedReading:
    meter: str
    previous: str
    current: str
    usage: str
    #: For a bill drafted before readings were stored as numbers: its reading text.
    note: str = ""


#: What charging a wallet that was short adds to a line's description (for the clerk).
_INTERNAL = re.compile(r"\s*\(general wallet short: owed\)$")
_SEGMENT = re.compile(r"^(?P<name>.+?) \((?P<a>\d{4}-\d{2}-\d{2})–(?P<b>\d{4}-\d{2}-\d{2})\)$")
_TIER = re.compile(r"tier (?P<n>\d+)(?: (?P<rate>\S+))?(?P<surcharge> surcharge)?")
_DAYS_OF = re.compile(r"(\d+)/(\d+) days")
_COMMON = re.compile(r"^common area (?P<pool>\S+) (?P<period>\S+): (?P<parts>.+)$")
_SHARE = re.compile(
    r"(?P<what>public-area energy|line loss) (?P<units>\d+(?:\.\d+)?) (?P<unit>\S+) × "
    r"(?P<price>\d+(?:\.\d+)?) = (?P<total>-?\d+\.\d\d), by (?P<method>[a-z]+): "
    r"(?P<mine>\d+(?:\.\d+)?) of (?P<of>\d+(?:\.\d+)?)(?: (?P<of_unit>\S+))? → "
    r"(?P<share>-?\d+\.\d\d)"
)


def printed_lines(
    lines: Sequence[Mapping[str, Any]], words: Words
) -> tuple[list[PrintedLine], list[PrintedReading]]:
    """The bill's priced lines and its meter readings, in the order they were billed."""
    rows: list[PrintedLine] = []
    readings: list[PrintedReading] = []
    for ln in lines:
        kind = ln["kind"]
        if kind == "meter_reading":
            readings.append(_reading(ln))
        elif kind in ("electricity", "water"):
            rows.append(_usage(ln, words))
        elif kind == "public_energy":
            rows.append(_common_area(ln, words))
        elif kind == "late_fee":
            rows.append(_late_fee(ln, words))
        else:
            rows.append(_charge(ln, words))
    return rows, readings


def _usage(ln: Mapping[str, Any], words: Words) -> PrintedLine:
    """A metered line: "电费 高峰" with "电表 E-A-101" under it."""
    meter = str(ln.get("meter", ""))
    label = str(ln["description"])[len(meter) :].strip()
    period = ""
    m = _SEGMENT.match(label)
    if m is not None:
        label, period = m["name"], words("segment", start=m["a"], end=m["b"])
    item = " ".join(p for p in (words(ln["kind"]), _rate_label(label, words), period) if p)
    quantity = (
        f"{ln['quantity_value']} {ln['unit']}"
        if "quantity_value" in ln
        else str(ln.get("quantity", ""))
    )
    return PrintedLine(
        item,
        quantity,
        str(ln.get("unit_price", "")),
        int(ln["amount_fen"]),
        words(f"meter.{ln['kind']}", meter=meter),
    )


def _rate_label(label: str, words: Words) -> str:
    """ "energy" (one rate) → nothing; a rate or a tier in the bill's language."""
    if label in ("", "energy"):
        return ""
    m = _TIER.fullmatch(label)
    if m is None:
        return words.optional(f"rate.{label}", label)
    if not m["surcharge"]:
        return words("tier", n=m["n"])
    if not m["rate"]:
        return words("tier_surcharge", n=m["n"])
    rate = words.optional(f"rate.{m['rate']}", m["rate"])
    return words("tier_rate_surcharge", n=m["n"], rate=rate)


def _reading(ln: Mapping[str, Any]) -> PrintedReading:
    meter = str(ln.get("meter", ""))
    if "start" not in ln:
        return PrintedReading(meter, "", "", "", note=str(ln["description"]))
    unit = str(ln.get("unit", ""))
    return PrintedReading(
        meter,
        _units(int(ln["start"])),
        _units(int(ln["end"])),
        f"{_units(int(ln['energy']))} {unit}",
    )


def _units(units: int) -> str:
    """0.001 kWh (or m³) units as a reading: 12428 → "12.428"."""
    return f"{Decimal(units) / ENERGY_SCALE:.3f}"


def _common_area(ln: Mapping[str, Any], words: Words) -> PrintedLine:
    """The room's common-area share: its kWh (or m³) and how each part was shared."""
    text = _INTERNAL.sub("", str(ln["description"]))
    m = _COMMON.match(text)
    shares = [_SHARE.fullmatch(p) for p in m["parts"].split("; ")] if m else []
    period = m["period"] if m else ""
    if not shares or None in shares:
        return PrintedLine(
            words("common_area.electricity", period=period).strip(),
            str(ln.get("quantity", "")),
            str(ln.get("unit_price", "")),
            int(ln["amount_fen"]),
        )
    unit = shares[0]["unit"]
    commodity = "water" if unit == "m³" else "electricity"
    mine = sum((_share_of(s) for s in shares), Decimal(0))
    quantity = str(ln.get("quantity") or "") or f"{_hundredths(mine)} {unit}"
    return PrintedLine(
        words(f"common_area.{commodity}", period=period),
        quantity,
        str(ln.get("unit_price", "")),
        int(ln["amount_fen"]),
        words("list_sep").join(_share_text(s, commodity, words) for s in shares),
    )


def _share_of(share: re.Match[str]) -> Decimal:
    """The room's part of one shared energy: energy × its weight / the total weight."""
    try:
        of = Decimal(share["of"])
        return Decimal(share["units"]) * Decimal(share["mine"]) / of if of else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


def _hundredths(d: Decimal) -> str:
    return f"{d.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):f}"


def _share_text(share: re.Match[str], commodity: str, words: Words) -> str:
    what = (
        words(f"share.public.{commodity}")
        if share["what"] == "public-area energy"
        else words("share.loss")
    )
    return words(
        "share",
        what=what,
        units=share["units"],
        unit=share["unit"],
        price=share["price"],
        total=share["total"],
        method=words.optional(f"method.{share['method']}", share["method"]),
        mine=share["mine"],
        of=share["of"] + _of_unit(share["of_unit"], words),
        share=share["share"],
    )


def _of_unit(unit: str | None, words: Words) -> str:
    """What a weight is counted in: m², kWh, m³ as they are; rooms in the bill's words."""
    if not unit:
        return ""
    return " " + (words("rooms") if unit == "rooms" else unit)


def _late_fee(ln: Mapping[str, Any], words: Words) -> PrintedLine:
    days = re.match(r"\d+", str(ln.get("quantity", "")))
    rate = str(ln.get("unit_price", ""))
    try:
        shown_rate = words.percent(Decimal(rate))
    except InvalidOperation:
        shown_rate = rate
    n = days.group() if days else ""
    return PrintedLine(
        words("late_fee"),
        words("days", n=n) if n else "",
        words("per_day", rate=shown_rate) if rate else "",
        int(ln["amount_fen"]),
        words("late_fee_detail", bill=ln.get("bill", ""), days=n, rate=shown_rate),
    )


def _charge(ln: Mapping[str, Any], words: Words) -> PrintedLine:
    """A property fee, rent, service or one-off charge: its name as the site file or the
    clerk gave it (with the period), prorated days in the bill's language."""
    return PrintedLine(
        _days(_INTERNAL.sub("", str(ln["description"])), words),
        _days(str(ln.get("quantity", "")), words),
        str(ln.get("unit_price", "")),
        int(ln["amount_fen"]),
    )


def _days(text: str, words: Words) -> str:
    return _DAYS_OF.sub(lambda m: words("days_of", n=m[1], of=m[2]), text)


def money(fen: int) -> str:
    """Fen as yuan with two decimals (the bill's own amount, nothing rounded)."""
    return format_fen(fen)
