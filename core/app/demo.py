"""The demo building: a whole simulated site and the full service running against it.

`demo_site()` describes a site like a small apartment complex: by default 2 buildings × 5
floors × 6 rooms, each room with a prepaid electricity meter and a valve-controlled water
meter, each building with a common-area main meter; meters hang off several RS-485
gateways. `openprepay demo` serves it with simulators on loopback sockets and runs the
service on embedded defaults against it.

Its pieces — the residential and water tariffs, a disconnect policy that trips at any
hour, an account per room — are what the tests and benchmarks build their sites from too.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..config.site import Site, parse_site
from ..db.bounded import DEMO_ACCOUNTS, between_parts, chunks
from ..db.retry import backoff_s, is_busy
from ..events import utcnow
from ..prepay import accounts as acc

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from ..model import DeviceModel
    from ..prepay.feecontrol import FeeThresholds
    from .runtime import Runtime

ELECTRIC_MODEL = "acrel.DDSY1352"
WATER_MODEL = "xintai.valve_meter"
MAIN_MODEL = "acrel.DTSD1352"
#: Floor 1 of the last building (multi-floor demos): meters that speak the Chinese meter
#: protocols instead of Modbus, each medium on its own bus.
DLT645_MODEL = "dlt645.single_phase"
CJT188_MODEL = "cjt188.cold_water_dn15"
#: Floors per electric gateway: a bus of about 18 meters, as installers wire them.
FLOORS_PER_GATEWAY = 3
#: Current transformer ratios (primary / 5 A) an installer picks from; 1 = direct connected.
CT_RATIOS = (1, 10, 15, 20, 30, 40, 50, 60, 80, 100, 120, 160, 200, 300, 400, 600, 800)
#: The main meter's nameplate current on its secondary side (DTSD1352, 3×10(80) A).
MAIN_METER_MAX_A = 80.0
#: Evening peak of a residential load over its base (core.field.loadshape's curve and noise),
#: and the power factor the simulated meters draw at (worst case).
PEAK_OVER_BASE, POWER_FACTOR = 2.0, 0.85


def demo_site_data(
    buildings: int = 2,
    floors: int = 5,
    rooms_per_floor: int = 6,
    seed: int = 1,
    poll_interval_s: float = 5.0,
    water: bool = True,
    framed: bool = True,
) -> dict[str, Any]:
    """The demo site as the dict a site file would parse into. With `framed` (and more than
    one floor), floor 1 of the last building speaks DL/T 645 and CJ/T 188 instead of Modbus."""
    rng = random.Random(seed)
    data: dict[str, Any] = {
        "site": {"id": "demo", "name": "OpenPrepay demo apartments", "timezone": "Asia/Shanghai"},
        # First start without users: the OPC UA server creates the demo login (admin).
        "opcua": {"demo": True},
        "poll": {"interval_s": poll_interval_s, "stats_interval_s": 5},
        "links": {},
        "buildings": {},
        "rooms": {},
        "devices": {},
    }
    for b in range(buildings):
        _add_building(data, chr(ord("A") + b), floors, rooms_per_floor, rng, water)
    data.update(demo_prepay_sections())
    data.update(demo_billing_section(list(data["buildings"])))
    if framed and buildings and floors > 1:
        _framed_floor(data, chr(ord("A") + buildings - 1))
    return data


def _framed_floor(data: dict[str, Any], bid: str) -> None:
    """Floor 1 of building `bid` gets DL/T 645 single-phase meters on `gw-<b>-dlt645` and
    CJ/T 188 cold-water meters on `gw-<b>-cjt188` (2400 baud, addressed by the number on
    the label). They hang on their own feeder, outside the building's common-area pool:
    the main meter does not feed them and the pool lists its sub-meters without them."""
    floor = data["buildings"][bid]["floors"][0]
    links = {"dlt645": f"gw-{bid}-dlt645", "cjt188": f"gw-{bid}-cjt188"}
    moved: list[str] = []
    for device_id, device in data["devices"].items():
        room = device.get("room")
        if room is None or data["rooms"][room]["building"] != bid:
            continue
        if data["rooms"][room]["floor"] != floor:
            continue
        # 000 building, 000 floor, 000 room: a label number unique on the site.
        serial = f"{ord(bid) - ord('A') + 1:03d}{int(floor):03d}{int(room[-2:]):03d}"
        protocol = "dlt645" if device_id.startswith("E-") else "cjt188"
        device.pop("unit_id", None)
        device["model"] = DLT645_MODEL if protocol == "dlt645" else CJT188_MODEL
        device["link"] = links[protocol]
        device["address"] = serial.zfill(12 if protocol == "dlt645" else 14)
        data["links"][links[protocol]] = {
            "type": "rtu_over_tcp",
            "protocol": protocol,
            "host": "127.0.0.1",
            "port": 502,
            "timeout_ms": 500,
        }
        moved.append(device_id)
    main = data["devices"][f"M-{bid}"]
    main["options"]["sim_feeds"] = [m for m in main["options"]["sim_feeds"] if m not in moved]
    data["billing"]["pools"][bid]["subs"] = list(main["options"]["sim_feeds"])
    for link in set(data["links"]) - {d["link"] for d in data["devices"].values()}:
        del data["links"][link]  # the floor's Modbus buses, if nothing else is left on them


def _add_building(
    data: dict[str, Any],
    bid: str,
    floors: int,
    rooms_per_floor: int,
    rng: random.Random,
    water: bool,
) -> None:
    """Building `bid` into the site dict `data`: its gateways, rooms, each room's electric
    (and water) meter, and the main meter that feeds them."""
    floor_ids = [str(f) for f in range(1, floors + 1)]
    data["buildings"][bid] = {"name": f"Building {bid}", "floors": floor_ids}
    main_link = f"main-{bid}"
    data["links"][main_link] = {"type": "modbus_tcp", "host": "127.0.0.1", "port": 502}
    feeds: list[str] = []
    for f, floor in enumerate(floor_ids):
        # A bus per few floors for each medium, as installers wire a tower: unit ids stay
        # within Modbus's 247 and each link's poll load stays a bus's, at any size.
        bus = f // FLOORS_PER_GATEWAY + 1
        gateway, water_link = f"gw-{bid}-e{bus}", f"gw-{bid}-w{bus}"
        for link in (gateway, water_link) if water else (gateway,):
            data["links"].setdefault(
                link,
                {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 502, "timeout_ms": 300},
            )
        for r in range(1, rooms_per_floor + 1):
            room = f"{bid}-{floor}{r:02d}"
            data["rooms"][room] = {
                "building": bid,
                "floor": floor,
                "name": f"{floor}{r:02d}",
                "area_m2": round(rng.uniform(38, 96), 1),
            }
            meter = f"E-{room}"
            unit = (f % FLOORS_PER_GATEWAY) * rooms_per_floor + r
            data["devices"][meter] = {
                "model": ELECTRIC_MODEL,
                "link": gateway,
                "unit_id": unit,
                "room": room,
                "control_mode": "REMOTE",
                "options": {"sim_load_kw": round(rng.uniform(0.25, 1.4), 2)},
            }
            if floor == floor_ids[-1] and r <= LOW_ROOMS_PER_BUILDING:
                # A room that starts nearly empty (open_demo_accounts): a heavy user.
                data["devices"][meter]["options"]["sim_load_kw"] = 2.0
            feeds.append(meter)
            if water:
                data["devices"][f"W-{room}"] = {
                    "model": WATER_MODEL,
                    "link": water_link,
                    "unit_id": unit,
                    "room": room,
                    "control_mode": "REMOTE",
                }
    options: dict[str, Any] = {"sim_feeds": feeds, "sim_load_kw": 1.5, "sim_loss": 0.04}
    ct = main_meter_ct_ratio([data["devices"][m]["options"]["sim_load_kw"] for m in feeds], 1.5)
    if ct > 1:
        options["ct_ratio"] = ct
    data["devices"][f"M-{bid}"] = {
        "model": MAIN_MODEL,
        "link": main_link,
        "unit_id": 1,
        "building": bid,
        "control_mode": "POSTPAID",
        "options": options,
    }


def main_meter_ct_ratio(feeds_kw: Sequence[float], own_kw: float, loss: float = 0.04) -> int:
    """The CT ratio an installer would give a building's main meter: the smallest standard
    ratio whose primary current covers the evening peak of every room it feeds (a tower of
    hundreds of rooms draws far past a direct-connected meter's 80 A; without a CT its
    readings are rightly refused as implausible)."""
    peak_kw = PEAK_OVER_BASE * (sum(feeds_kw) * (1 + loss) + own_kw)
    amps = peak_kw * 1000 / (3 * 220 * POWER_FACTOR)
    return next((r for r in CT_RATIOS if MAIN_METER_MAX_A * r >= amps), CT_RATIOS[-1])


def demo_billing_section(buildings: list[str]) -> dict[str, Any]:
    """The demo's [billing]: one common-area pool per building (its main meter `M-<b>`,
    the building's room meters as sub-meters, the loss shared by floor area and billed), a
    property fee by floor area taken from the general wallet (owed when it is empty), and
    the monthly cycle at the default freeze instant (the 1st, 00:00). Readings are saved
    every 10 s so that `openprepay billing readings` shows them at once."""
    return {
        "billing": {
            "reading_flush_s": 10,
            "pools": {
                b: {
                    "main": f"M-{b}",
                    "building": b,
                    "price": "0.6000",
                    "method": "area",
                    "mode": "bill",
                }
                for b in buildings
            },
            "charges": {
                "property": {
                    "type": "property",
                    "name": "Property management fee",
                    "basis": "area",
                    "rate": "2.50",
                    "mode": "wallet",
                }
            },
        }
    }


#: Rooms of each building that start nearly empty, with a heavy load: at the demo's
#: speed-up (60×) they run out within a couple of minutes and are cut.
LOW_ROOMS_PER_BUILDING = 2
LOW_BALANCE_FEN = 80
OPENING_BALANCE_FEN = 10_000


def demo_prepay_sections() -> dict[str, Any]:
    """The demo's [tariffs] and [prepay]: residential TOU + annual tiers, tiered water, and
    a disconnect policy that allows trips at any hour without notice, so that a room that
    runs out is cut at once (a real site keeps the defaults: quiet hours, weekends,
    holidays, three days' notice, friendly credit)."""
    return {
        "tariffs": {
            "residential": {
                "name": "Residential TOU + annual tiers",
                **residential_tariff(
                    [
                        {"start": "23:00", "end": "07:00", "rate": "valley"},
                        {"start": "07:00", "end": "08:00", "rate": "flat"},
                        {"start": "08:00", "end": "11:30", "rate": "peak"},
                        {"start": "11:30", "end": "18:30", "rate": "flat"},
                        {"start": "18:30", "end": "19:00", "rate": "peak"},
                        {"start": "19:00", "end": "21:00", "rate": "sharp"},
                        {"start": "21:00", "end": "23:00", "rate": "peak"},
                    ]
                ),
            },
            "water": {"name": "Tiered water", **water_tariff()},
        },
        "prepay": {
            "thresholds": {"alarm1": "5.00", "alarm2": "2.00"},
            "policy": anytime_policy(),
            "engine": {"default_tariffs": {"electric": "residential", "water": "water"}},
        },
    }


def residential_tariff(periods: Sequence[Mapping[str, str]] | None = None) -> dict[str, Any]:
    """A `[tariffs.<id>]` table: residential electricity, TOU rates (CNY/kWh) over `periods`
    plus the annual tier adders (2880 and 4800 kWh a year). Default periods: valley by
    night, flat in the early morning, an hour of sharp from 10:00, peak the rest of the day."""
    if periods is None:
        periods = [
            {"start": "23:00", "end": "07:00", "rate": "valley"},
            {"start": "07:00", "end": "10:00", "rate": "flat"},
            {"start": "10:00", "end": "11:00", "rate": "sharp"},
            {"start": "11:00", "end": "23:00", "rate": "peak"},
        ]
    return {
        "rates": {"sharp": "0.7200", "peak": "0.6000", "flat": "0.5000", "valley": "0.2000"},
        "periods": [dict(p) for p in periods],
        "tiers": {
            "cycle": "annual",
            "thresholds": ["2880", "4800"],
            "adders": ["0", "0.05", "0.30"],
        },
    }


def water_tariff() -> dict[str, Any]:
    """A `[tariffs.<id>]` table: water in monthly tiers (18 and 25 m³)."""
    return {
        "commodity": "water",
        "tiers": {
            "cycle": "monthly",
            "thresholds": ["18", "25"],
            "prices": ["3.00", "4.50", "9.00"],
        },
    }


def anytime_policy() -> dict[str, Any]:
    """A `[prepay.policy]` that trips at any hour and day, without notice or friendly
    credit, so that an account that runs out is cut at once (the demo and tests; a real
    site keeps the defaults)."""
    return {
        "quiet_start": "00:00",
        "quiet_end": "00:00",
        "no_trip_days": [],
        "holiday_calendar": "",
        "no_trip_before_non_working_day": False,
        "notice_days": 0,
        "friendly_credit": "0.00",
        "max_trips_per_minute": 100,
    }


def low_rooms(site: Site) -> list[str]:
    """The rooms that start nearly empty: the first rooms of each building's top floor."""
    out = []
    for building in site.buildings.values():
        top = building.floors[-1]
        rooms = [r.id for r in site.rooms.values() if r.building == building.id and r.floor == top]
        out.extend(sorted(rooms)[:LOW_ROOMS_PER_BUILDING])
    return out


def open_demo_accounts(runtime: Runtime) -> list[str]:
    """Open a prepaid account per room (id = room id, its electric and water meters) with an
    opening top-up; the low rooms get only a little. Idempotent: a second demo run on the
    same state directory keeps the accounts and their balances. Returns the low rooms."""
    ops = runtime.operations
    assert ops is not None and runtime.db is not None
    site = runtime.site
    low = low_rooms(site)
    meters: dict[str, list[str]] = {}
    for device in sorted(site.devices.values(), key=lambda d: d.id):
        if device.room is not None:
            meters.setdefault(device.room, []).append(device.id)
    # Bounded transactions (core/db/bounded.py): the service is already running. Each
    # part's opening top-ups follow its accounts at once, so that no account waits long
    # unfunded (the running service would trip its meters).
    for n, part in enumerate(chunks(sorted(meters.items()), DEMO_ACCOUNTS)):
        if n:
            between_parts(runtime.db)
        runtime.db.write(
            lambda conn, part=part: open_room_accounts(
                conn,
                site,
                runtime.plugins.models,
                dict(part),
                tariff_id="residential",
                thresholds=ops.settings.thresholds,
            ),
            what=f"opening demo accounts ({len(part)})",
        )
        for room, _ in part:
            amount = LOW_BALANCE_FEN if room in low else OPENING_BALANCE_FEN
            _opening_topup(ops, room, amount)
    runtime.db.analyze()  # the planner's statistics of the tables just filled
    now = utcnow()
    with runtime.db.read() as conn:
        samples = ops.control.account_samples(conn, meters, now)
    for sample in samples:
        runtime.bus.publish(sample)
    return low


def _opening_topup(ops: Any, room: str, amount_fen: int) -> None:
    """A busy database delays an opening top-up, never loses it (the reference makes a
    repeat a replay)."""
    attempt = 1
    while True:
        try:
            ops.topup(room, amount_fen, f"demo-opening-{room}", actor="demo")
            return
        except Exception as exc:
            if not is_busy(exc):
                raise
            time.sleep(backoff_s(attempt))
            attempt += 1


def open_room_accounts(
    conn: Connection,
    site: Site,
    models: Mapping[str, DeviceModel],
    rooms: Mapping[str, Sequence[str]],
    *,
    tariff_id: str | None = None,
    thresholds: FeeThresholds | None = None,
    modes: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Open an account per room of `rooms` (room → its meters), in the caller's
    transaction: id = room id, the meters' kinds from their models and control modes from
    the site file unless `modes` (meter → mode) says otherwise. A room that has an account
    already is left as it is (a second demo run keeps its accounts). Returns the rooms
    opened."""
    opened = []
    for room, meters in sorted(rooms.items()):
        if acc.find_account(conn, room) is not None:
            continue
        assigned = tuple(acc.resolve_meter(site, models, m, (modes or {}).get(m)) for m in meters)
        spec = acc.AccountSpec(
            room,
            f"Tenant of {room}",
            assigned,
            room=room,
            tariff_id=tariff_id,
            thresholds=thresholds if thresholds is not None else acc.Thresholds(),
        )
        acc.create_account(conn, spec, now=now)
        opened.append(room)
    return opened


def demo_site(**kwargs: Any) -> Site:
    return parse_site(demo_site_data(**kwargs), source="demo")
