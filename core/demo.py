"""The demo building: a whole simulated site and the full service running against it.

`demo_site()` describes a site like a small apartment complex: by default 2 buildings × 5
floors × 6 rooms, each room with a prepaid electricity meter and a valve-controlled water
meter, each building with a common-area main meter; meters hang off several RS-485
gateways. `openprepay demo` serves it with simulators on loopback sockets and runs the
service on embedded defaults against it.
"""

from __future__ import annotations

import random
from typing import Any

from .site import Site, parse_site

ELECTRIC_MODEL = "acrel.DDSY1352"
WATER_MODEL = "xintai.valve_meter"
MAIN_MODEL = "acrel.DTSD1352"
#: Floors per electric gateway: a bus of about 18 meters, as installers wire them.
FLOORS_PER_GATEWAY = 3


def demo_site_data(
    buildings: int = 2,
    floors: int = 5,
    rooms_per_floor: int = 6,
    seed: int = 1,
    poll_interval_s: float = 5.0,
    water: bool = True,
) -> dict[str, Any]:
    """The demo site as the dict a site file would parse into."""
    rng = random.Random(seed)
    data: dict[str, Any] = {
        "site": {"id": "demo", "name": "OpenPrepay demo apartments", "timezone": "Asia/Shanghai"},
        "poll": {"interval_s": poll_interval_s, "stats_interval_s": 5},
        "links": {},
        "buildings": {},
        "rooms": {},
        "devices": {},
    }
    for b in range(buildings):
        bid = chr(ord("A") + b)
        floor_ids = [str(f) for f in range(1, floors + 1)]
        data["buildings"][bid] = {"name": f"Building {bid}", "floors": floor_ids}
        main_link = f"main-{bid}"
        data["links"][main_link] = {"type": "modbus_tcp", "host": "127.0.0.1", "port": 502}
        water_link = f"gw-{bid}-water"
        if water:
            data["links"][water_link] = {
                "type": "rtu_over_tcp",
                "host": "127.0.0.1",
                "port": 502,
                "timeout_ms": 300,
            }
        feeds: list[str] = []
        water_unit = 0
        for f, floor in enumerate(floor_ids):
            gateway = f"gw-{bid}-e{f // FLOORS_PER_GATEWAY + 1}"
            data["links"].setdefault(
                gateway,
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
                feeds.append(meter)
                if water:
                    water_unit += 1
                    data["devices"][f"W-{room}"] = {
                        "model": WATER_MODEL,
                        "link": water_link,
                        "unit_id": water_unit,
                        "room": room,
                        "control_mode": "REMOTE",
                    }
        data["devices"][f"M-{bid}"] = {
            "model": MAIN_MODEL,
            "link": main_link,
            "unit_id": 1,
            "building": bid,
            "control_mode": "POSTPAID",
            "options": {"sim_feeds": feeds, "sim_load_kw": 1.5, "sim_loss": 0.04},
        }
    return data


def demo_site(**kwargs: Any) -> Site:
    return parse_site(demo_site_data(**kwargs), source="demo")
