"""The site file's `[billing]` section, validated field by field.

::

    [billing]
    apportionment = true          # false: no common-area apportionment at this site (转供电)
    freeze_day = 1                # the meters' monthly freeze instant: day 1–28 ...
    freeze_hour = 0               # ... at this hour, site-local; periods run freeze to freeze
    run_delay_h = 24              # month-end runs this long after the freeze instant (D+1)
    reading_max_age_h = 2         # an older "last reading" at a freeze instant holds a run
    mode = "wallet"               # default for pools and charges: wallet | bill

    [billing.areas]               # m² for rooms the site file gives no area_m2 (or overrides)
    "A-101" = 45.5

    [billing.pools.A]             # a common-area pool
    main = "M-A"                  # the main meter
    building = "A"                # subs default to every meter of its rooms (main's commodity)
    subs = ["E-A-101", "E-A-102"] # or listed
    public = ["E-A-PUB"]          # public-area meters (lifts, corridors)
    price = "0.6000"              # CNY per kWh (or m³)
    method = "area"               # loss: area | equal | consumption | ratio
    public_method = "area"        # public meters' energy (default: method)
    ratios = { "A-101" = "30", "A-102" = "70" }   # method ratio: weight per room
    loss_cap_pct = 8              # loss above this share of the main meter → held for approval
    mode = "wallet"               # wallet (general wallet; AR when short) | bill
    vacant = "owner"              # rooms without a tenant: owner (expense) | exclude

    [billing.charges.property]    # a custom charge
    type = "property"             # property | rent | service | custom
    name = "Property management fee"
    basis = "area"                # area (rate × m² per month) | fixed (amount per month)
    rate = "2.50"                 # CNY per m²·month (basis area)
    amount = "1500.00"            # CNY per month or once (basis fixed)
    cycle = "monthly"             # monthly | once
    date = 2025-03-01             # once: charged in the period holding this date
    prorate = "actual_days"       # actual_days | days_30 | none (move-in / move-out)
    mode = "wallet"               # wallet | bill
    buildings = ["A"]             # who pays: rooms of these buildings, these rooms, these
    rooms = ["A-101"]             # accounts (default: every open account with a room)
    accounts = ["SHOP-1"]
    revenue = "property"          # ledger revenue stream (default from type)

    [billing.bills]               # post-paid bills
    due_days = 15
    late_fee_per_day = "0.001"    # 1‰ of the overdue amount per day; "0" = no late fee
    late_fee_min = "1.00"
    number_prefix = "B"
    language = "zh"               # printed bills and arrears notices: zh | en
    issuer_name = "..."           # who issues them (default: the site's name)
    issuer_address = "..."        # printed with the phone as the tenant's contact
    issuer_phone = "..."
    payment_instructions = "..."  # how to pay (lines of text)

Errors read like every other section's: ``billing.pools.A.method: expected one of area,
equal, consumption, ratio; got 'floor'``.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from ..config.reader import ID_PATTERN, TableReader, describe
from ..config.site import Site
from ..errors import ConfigError, FieldError
from ..model import DeviceModel, MeterKind
from ..rating.tariff_values import to_decimal


class Method(enum.StrEnum):
    """How a pool's amount is shared between its rooms (domain.md §4)."""

    AREA = "area"
    EQUAL = "equal"
    CONSUMPTION = "consumption"
    RATIO = "ratio"


class Mode(enum.StrEnum):
    #: Taken from the general wallet; when the wallet is short, owed in full (AR) instead.
    WALLET = "wallet"
    #: Owed (asset:ar:<account>) and shown on the account's next bill.
    BILL = "bill"


class ChargeType(enum.StrEnum):
    PROPERTY = "property"
    RENT = "rent"
    SERVICE = "service"
    CUSTOM = "custom"


class Basis(enum.StrEnum):
    AREA = "area"
    FIXED = "fixed"


class Cycle(enum.StrEnum):
    MONTHLY = "monthly"
    ONCE = "once"


class Prorate(enum.StrEnum):
    ACTUAL_DAYS = "actual_days"
    DAYS_30 = "days_30"
    NONE = "none"


#: Revenue stream of each charge type (core.ledger.REVENUE_STREAMS).
DEFAULT_REVENUE = {
    ChargeType.PROPERTY: "property",
    ChargeType.RENT: "rent",
    ChargeType.SERVICE: "service",
    ChargeType.CUSTOM: "service",
}
REVENUE_CHOICES = ("property", "rent", "service", "public_energy", "electricity", "water")


@dataclass(frozen=True, slots=True)
class Pool:
    id: str
    main: str
    subs: tuple[str, ...]
    public: tuple[str, ...]
    price: Decimal
    method: Method
    public_method: Method
    ratios: Mapping[str, Decimal]
    loss_cap: Fraction
    mode: Mode
    #: electricity or water (the main meter's kind).
    commodity: str
    building: str | None = None
    vacant_to_owner: bool = True

    @property
    def source(self) -> str:
        return f"pool:{self.id}"

    @property
    def meters(self) -> tuple[str, ...]:
        return (self.main, *self.subs, *self.public)


@dataclass(frozen=True, slots=True)
class Charge:
    id: str
    type: ChargeType
    name: str
    basis: Basis
    #: CNY per m²·month (area) or CNY per month / once (fixed).
    rate: Decimal
    cycle: Cycle
    date: dt.date | None
    prorate: Prorate
    mode: Mode
    revenue: str
    buildings: tuple[str, ...] = ()
    rooms: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return f"charge:{self.id}"

    def applies_to(self, account_id: str, room: str | None, building: str | None) -> bool:
        if not (self.buildings or self.rooms or self.accounts):
            return room is not None
        return (
            account_id in self.accounts
            or (room is not None and room in self.rooms)
            or (building is not None and building in self.buildings)
        )


#: Languages of printed bills and notices (`core/billing/bill_text.py` has their words).
BILL_LANGUAGES = ("zh", "en")


@dataclass(frozen=True, slots=True)
class BillSettings:
    due_days: int = 15
    #: Share of the overdue amount charged per day (1‰ = 0.001); 0 = no late fee.
    late_fee_per_day: Decimal = Decimal("0.001")
    late_fee_min_fen: int = 100
    number_prefix: str = "B"
    #: What is printed for the tenant: the language, who issues the bill and how to reach
    #: them (empty issuer name: the site's name; empty fields are left off), how to pay.
    language: str = "zh"
    issuer_name: str = ""
    issuer_address: str = ""
    issuer_phone: str = ""
    payment_instructions: str = ""


@dataclass(frozen=True, slots=True)
class BillingSettings:
    apportionment: bool = True
    freeze_day: int = 1
    freeze_hour: int = 0
    run_delay_h: float = 24.0
    reading_max_age_s: float = 7200.0
    mode: Mode = Mode.WALLET
    #: How often the captured readings are saved (and when the service stops).
    reading_flush_s: float = 60.0
    #: How often the service looks for due batch jobs and month-ends.
    batch_poll_s: float = 1.0
    batch_lease_s: float = 60.0
    month_end_poll_s: float = 60.0
    areas: Mapping[str, Decimal] = field(default_factory=dict)
    pools: Mapping[str, Pool] = field(default_factory=dict)
    charges: Mapping[str, Charge] = field(default_factory=dict)
    bills: BillSettings = field(default_factory=BillSettings)

    def area_of(self, site: Site, room: str) -> Decimal | None:
        if room in self.areas:
            return self.areas[room]
        r = site.rooms.get(room)
        if r is None or r.area_m2 is None:
            return None
        return Decimal(repr(r.area_m2))

    def capture_meters(self, site: Site, models: Mapping[str, DeviceModel]) -> set[str]:
        """Meters whose registers are captured at each day's freeze hour: those of the
        pools, and POSTPAID billing meters (their bills difference the same readings)."""
        out = {m for p in self.pools.values() for m in p.meters}
        for d in site.devices.values():
            model = models.get(d.model)
            if (
                model is not None
                and model.kind in (MeterKind.ELECTRIC, MeterKind.WATER)
                and d.control_mode.value == "POSTPAID"
                and d.room is not None
            ):
                out.add(d.id)
        return out


def _decimal(
    r: TableReader, key: str, default: Any, *, places: int, low: Decimal, exclusive: bool = False
) -> Decimal | None:
    present, raw = r._get(key, default)
    if not present:
        return default
    d = to_decimal(raw)
    if d is None:
        r.error(f'expected a decimal such as "2.50", got {describe(raw)}', key)
        return None
    if -int(d.normalize().as_tuple().exponent) > places:
        r.error(f"at most {places} decimal places, got {raw}", key)
        return None
    if (d <= low) if exclusive else (d < low):
        r.error(f"expected {'more than' if exclusive else 'at least'} {low}, got {raw}", key)
        return None
    return d


def _per_room(r: TableReader, site: Site, *, places: int) -> dict[str, Decimal]:
    """A table of room → positive decimal (`[billing.areas]`, a pool's `ratios`)."""
    out: dict[str, Decimal] = {}
    for room in list(r.data):
        value = _decimal(r, room, None, places=places, low=Decimal(0), exclusive=True)
        if value is None:
            continue
        if room not in site.rooms:
            r.error(f"unknown room {room!r} (rooms are defined under [rooms])", room)
            continue
        out[room] = value
    r.finish()
    return out


def _without_area(site: Site, areas: Mapping[str, Decimal], rooms: list[str]) -> str | None:
    """The error for sharing by area among `rooms` when some have no area, else None."""
    missing = [room for room in rooms if room not in areas and site.rooms[room].area_m2 is None]
    if not missing:
        return None
    return (
        f"area, but rooms {', '.join(missing[:5])} have no area "
        "(set rooms.<id>.area_m2 or [billing.areas])"
    )


def _ids(r: TableReader, key: str) -> tuple[str, ...] | None:
    values = r.str_list(key, [])
    if values is None:
        return None
    bad = [v for v in values if not ID_PATTERN.match(v)]
    if bad:
        r.error(f"expected ids, got {bad[0]!r}", key)
        return None
    return tuple(values)


def parse_billing(
    site: Site, models: Mapping[str, DeviceModel] | None, errors: list[FieldError]
) -> BillingSettings:
    """`[billing]` of `site` (models: check meters against their kinds when given)."""
    d = BillingSettings()
    r = TableReader(dict(site.sections.get("billing", {}) or {}), "billing", errors)
    apportionment = r.bool("apportionment", True)
    freeze_day = r.int("freeze_day", d.freeze_day, low=1, high=28)
    freeze_hour = r.int("freeze_hour", d.freeze_hour, low=0, high=23)
    delay = r.number("run_delay_h", d.run_delay_h, low=0, high=24 * 27)
    max_age = r.number("reading_max_age_h", d.reading_max_age_s / 3600, low=0, high=24 * 31)
    mode = r.str("mode", d.mode.value, choices=[m.value for m in Mode])
    flush = r.number("reading_flush_s", d.reading_flush_s, low=0.05, high=3600)
    batch_poll = r.number("batch_poll_s", d.batch_poll_s, low=0.01, high=60)
    lease = r.number("batch_lease_s", d.batch_lease_s, low=1, high=3600)
    month_poll = r.number("month_end_poll_s", d.month_end_poll_s, low=0.05, high=3600)

    areas = _per_room(r.table("areas"), site, places=3)

    default_mode = Mode(mode) if mode else d.mode
    pools: dict[str, Pool] = {}
    for pool_id, pr in r.entries("pools"):
        pool = _read_pool(pool_id, pr, site, models, areas, default_mode)
        pr.finish()
        if pool is not None:
            pools[pool_id] = pool
    seen: dict[str, str] = {}
    for pool in pools.values():
        for meter in (*pool.subs, *pool.public):
            if meter in seen and seen[meter] != pool.id:
                errors.append(
                    FieldError(
                        f"billing.pools.{pool.id}",
                        f"meter {meter!r} is already in pool {seen[meter]!r}; a meter is "
                        "shared in one pool only",
                    )
                )
            seen[meter] = pool.id

    charges: dict[str, Charge] = {}
    for charge_id, cr in r.entries("charges"):
        charge = _read_charge(charge_id, cr, site, areas, default_mode)
        cr.finish()
        if charge is not None:
            charges[charge_id] = charge

    bills = _read_bills(r.table("bills"))
    r.finish()
    return BillingSettings(
        apportionment=apportionment if apportionment is not None else True,
        freeze_day=freeze_day or d.freeze_day,
        freeze_hour=freeze_hour if freeze_hour is not None else d.freeze_hour,
        run_delay_h=delay if delay is not None else d.run_delay_h,
        reading_max_age_s=(max_age * 3600) if max_age is not None else d.reading_max_age_s,
        mode=default_mode,
        reading_flush_s=flush or d.reading_flush_s,
        batch_poll_s=batch_poll or d.batch_poll_s,
        batch_lease_s=lease or d.batch_lease_s,
        month_end_poll_s=month_poll or d.month_end_poll_s,
        areas=areas,
        pools=pools,
        charges=charges,
        bills=bills or BillSettings(),
    )


def _kind_of(site: Site, models: Mapping[str, DeviceModel] | None, meter: str) -> str | None:
    device = site.devices.get(meter)
    if device is None or models is None:
        return None
    model = models.get(device.model)
    return None if model is None else model.kind.value


def _read_pool(
    pool_id: str,
    r: TableReader,
    site: Site,
    models: Mapping[str, DeviceModel] | None,
    areas: Mapping[str, Decimal],
    default_mode: Mode,
) -> Pool | None:
    main = r.id("main")
    building = r.id("building", None)
    subs = _ids(r, "subs")
    public = _ids(r, "public")
    price = _decimal(r, "price", None, places=6, low=Decimal(0))
    if price is None and "price" not in r.data:
        r.error('missing (required): CNY per kWh or m³, e.g. "0.6000"', "price")
    method = r.str("method", Method.AREA.value, choices=[m.value for m in Method])
    public_method = r.str("public_method", method, choices=[m.value for m in Method])
    cap = r.number("loss_cap_pct", 8.0, low=0, high=100)
    mode = r.str("mode", default_mode.value, choices=[m.value for m in Mode])
    vacant = r.str("vacant", "owner", choices=["owner", "exclude"])
    ratios = _per_room(r.table("ratios"), site, places=6)
    if None in (main, subs, public, method, public_method, cap, mode, vacant) or price is None:
        return None
    assert main is not None and subs is not None and public is not None
    if main not in site.devices:
        r.error(f"unknown meter {main!r} (site devices)", "main")
        return None
    kind = _kind_of(site, models, main)
    problems: list[tuple[str, str]] = []
    if kind is not None and kind not in (MeterKind.ELECTRIC.value, MeterKind.WATER.value):
        problems.append(("main", f"meter {main!r} is a {kind}, not an electric or water meter"))
    if building is not None and building not in site.buildings:
        problems.append(("building", f"unknown building {building!r}"))
    if building is None:
        building = site.devices[main].building or site.building_of(site.devices[main])
    if not subs:
        subs = _building_subs(site, models, main, building, public, kind, problems)
    problems.extend(_pool_meter_problems(site, models, main, subs, public, kind))
    if _reported(r, problems):
        return None
    rooms = sorted({room for m in subs if (room := site.devices[m].room)})
    for key, m in (("method", method), ("public_method", public_method)):
        if m == Method.AREA.value:
            problem = _without_area(site, areas, rooms)
            if problem:
                problems.append((key, problem))
        if m == Method.RATIO.value:
            missing = [room for room in rooms if room not in ratios]
            if missing:
                problems.append(
                    ("ratios", f"method ratio needs a weight for rooms {', '.join(missing[:5])}")
                )
    if _reported(r, problems):
        return None
    return Pool(
        pool_id,
        main,
        tuple(subs),
        tuple(public),
        price,
        Method(method),
        Method(public_method),
        ratios,
        Fraction(Decimal(repr(cap))) / 100,
        Mode(mode),
        "water" if kind == MeterKind.WATER.value else "electricity",
        building,
        vacant == "owner",
    )


def _building_subs(
    site: Site,
    models: Mapping[str, DeviceModel] | None,
    main: str,
    building: str | None,
    public: Sequence[str],
    kind: str | None,
    problems: list[tuple[str, str]],
) -> tuple[str, ...]:
    """A pool's default sub-meters: the room meters of its building (of the main meter's
    kind), other than the main and public meters."""
    if building is None:
        problems.append(("subs", "list the sub-meters, or name the pool's building"))
        return ()
    subs = tuple(
        sorted(
            dev.id
            for dev in site.devices.values()
            if dev.room is not None
            and site.rooms[dev.room].building == building
            and dev.id != main
            and dev.id not in public
            and (kind is None or _kind_of(site, models, dev.id) == kind)
        )
    )
    if not subs:
        problems.append(("subs", f"building {building!r} has no room meters to share among"))
    return subs


def _pool_meter_problems(
    site: Site,
    models: Mapping[str, DeviceModel] | None,
    main: str,
    subs: Sequence[str],
    public: Sequence[str],
    kind: str | None,
) -> list[tuple[str, str]]:
    """(key, message) for each sub or public meter that cannot be in the pool."""
    problems = []
    for key, meters in (("subs", subs), ("public", public)):
        for i, meter in enumerate(meters):
            where = f"{key}[{i}]"
            if meter not in site.devices:
                problems.append((where, f"unknown meter {meter!r}"))
            elif meter == main:
                problems.append((where, "the main meter cannot also be a sub or public meter"))
            elif kind is not None and _kind_of(site, models, meter) not in (kind, None):
                problems.append(
                    (where, f"meter {meter!r} is not a {kind} meter like the main meter")
                )
            elif key == "subs" and site.devices[meter].room is None:
                problems.append((where, f"meter {meter!r} is in no room: whose share would it be?"))
    if len(set(subs) | set(public)) != len(subs) + len(public):
        problems.append(("subs", "a meter is listed twice (subs and public must not overlap)"))
    return problems


def _reported(r: TableReader, problems: list[tuple[str, str]]) -> bool:
    """Report `problems` as errors of table `r`; True when there were any."""
    for key, message in problems:
        r.error(message, key)
    return bool(problems)


def _read_charge(
    charge_id: str,
    r: TableReader,
    site: Site,
    areas: Mapping[str, Decimal],
    default_mode: Mode,
) -> Charge | None:
    kind = r.str("type", choices=[c.value for c in ChargeType])
    name = r.str("name", charge_id)
    basis = r.str("basis", Basis.FIXED.value, choices=[b.value for b in Basis])
    rate = amount = None
    if basis == Basis.AREA.value:
        rate = _decimal(r, "rate", None, places=6, low=Decimal(0), exclusive=True)
        if "rate" not in r.data:
            r.error('missing (required): CNY per m² and month, e.g. "2.50"', "rate")
    elif basis == Basis.FIXED.value:
        amount = _decimal(r, "amount", None, places=2, low=Decimal(0), exclusive=True)
        if "amount" not in r.data:
            r.error('missing (required): CNY, e.g. "1500.00"', "amount")
    cycle = r.str("cycle", Cycle.MONTHLY.value, choices=[c.value for c in Cycle])
    date = r.raw("date", None)
    prorate = r.str("prorate", Prorate.ACTUAL_DAYS.value, choices=[p.value for p in Prorate])
    mode = r.str("mode", default_mode.value, choices=[m.value for m in Mode])
    revenue = r.str("revenue", None, choices=list(REVENUE_CHOICES))
    buildings = _ids(r, "buildings")
    rooms = _ids(r, "rooms")
    accounts = _ids(r, "accounts")
    if cycle == Cycle.ONCE.value:
        if date is None:
            r.error("missing (required for cycle once): the date it is charged", "date")
        elif not isinstance(date, dt.date) or isinstance(date, dt.datetime):
            r.error(f"expected a date such as 2025-03-01, got {describe(date)}", "date")
            date = None
    elif date is not None:
        r.error("only for cycle once", "date")
    for i, b in enumerate(buildings or ()):
        if b not in site.buildings:
            r.error(f"unknown building {b!r}", f"buildings[{i}]")
    for i, room in enumerate(rooms or ()):
        if room not in site.rooms:
            r.error(f"unknown room {room!r}", f"rooms[{i}]")
    if basis == Basis.AREA.value and rooms is not None and buildings is not None:
        chosen = set(rooms) | {
            room.id for room in site.rooms.values() if not buildings or room.building in buildings
        }
        if not rooms and not buildings and not accounts:
            chosen = set(site.rooms)
        problem = _without_area(site, areas, sorted(chosen))
        if problem:
            r.error(problem, "basis")
            return None
    value = rate if basis == Basis.AREA.value else amount
    if None in (kind, name, basis, cycle, prorate, mode, buildings, rooms, accounts) or (
        value is None
    ):
        return None
    if cycle == Cycle.ONCE.value and date is None:
        return None
    return Charge(
        charge_id,
        ChargeType(kind),
        name,
        Basis(basis),
        value,
        Cycle(cycle),
        date,
        Prorate(prorate),
        Mode(mode),
        revenue or DEFAULT_REVENUE[ChargeType(kind)],
        tuple(buildings),
        tuple(rooms),
        tuple(accounts),
    )


def _read_bills(r: TableReader) -> BillSettings | None:
    d = BillSettings()
    due = r.int("due_days", d.due_days, low=0, high=365)
    rate = _decimal(r, "late_fee_per_day", d.late_fee_per_day, places=6, low=Decimal(0))
    if rate is not None and rate > Decimal("0.01"):
        r.error(f"expected at most 0.01 (1% per day), got {rate}", "late_fee_per_day")
        rate = None
    minimum = _decimal(
        r, "late_fee_min", Decimal(d.late_fee_min_fen) / 100, places=2, low=Decimal(0)
    )
    prefix = r.str("number_prefix", d.number_prefix, pattern=ID_PATTERN, hint="expected an id")
    language = r.str("language", d.language, choices=BILL_LANGUAGES)
    printed = {
        key: _printed_text(r, key, limit, lines)
        for key, limit, lines in (
            ("issuer_name", 100, False),
            ("issuer_address", 200, False),
            ("issuer_phone", 40, False),
            ("payment_instructions", 1000, True),
        )
    }
    r.finish()
    if None in (due, rate, minimum, prefix, language, *printed.values()):
        return None
    return BillSettings(due, rate, int(minimum * 100), prefix, language, **printed)


def _printed_text(r: TableReader, key: str, limit: int, lines: bool) -> str | None:
    """A text printed on every bill: at most `limit` characters, no control characters
    (line breaks only where `lines`), surrounding spaces dropped."""
    value = r.str(key, "")
    if value is None:
        return None
    allowed = "\n\r" if lines else ""
    bad = next((c for c in value if (ord(c) < 32 or ord(c) == 127) and c not in allowed), None)
    if bad is not None:
        where = "other than line breaks " if lines else ""
        r.error(f"control character {bad!r} {where}not allowed (it is printed on bills)", key)
        return None
    if len(value) > limit:
        r.error(f"at most {limit} characters, got {len(value)}", key)
        return None
    return value.strip()


def check_billing(site: Site, models: Mapping[str, DeviceModel] | None = None) -> list[FieldError]:
    """Every problem of `[billing]` (what `openprepay check` and the runtime report)."""
    errors: list[FieldError] = []
    parse_billing(site, models, errors)
    return errors


def load_billing(site: Site, models: Mapping[str, DeviceModel] | None = None) -> BillingSettings:
    errors: list[FieldError] = []
    settings = parse_billing(site, models, errors)
    if errors:
        raise ConfigError(str(site.path or "site"), errors)
    return settings
