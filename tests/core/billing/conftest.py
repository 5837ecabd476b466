"""Fixtures for billing operations: a site with one building of three rooms (the areas of
worked example D), its main meter and a public-area meter, on a real database — a SQLite
file and the real PostgreSQL server (`db` is parametrised: money tests run on both).

`make_billing(billing)` builds a `Billing` for the site with the given `[billing]` section;
`open_accounts(db, site)` opens an account per room, `deposit` fills a general wallet;
`read(db, at, kwh)` records the meters' registers at an instant like the capture does;
`check()` runs `ledger.verify` and fails the test on any broken invariant.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from openprepay.core import ledger
from openprepay.core.app.demo import (
    anytime_policy,
    open_room_accounts,
    residential_tariff,
    water_tariff,
)
from openprepay.core.app.plugins import DISABLE_ENV, Plugins
from openprepay.core.billing.readings import Reading, save_captured
from openprepay.core.billing.service import Billing
from openprepay.core.config.site import Site, parse_site
from openprepay.core.db import Database
from openprepay.core.model import (
    CommandSpec,
    DeviceModel,
    MeterKind,
    PointRole,
    PointSpec,
    SupplyControl,
    ValueType,
)

TZ = ZoneInfo("Asia/Shanghai")


def _energy(name: str, unit: str = "kWh") -> PointSpec:
    return PointSpec(
        name, unit, name, PointRole.CUMULATIVE, ValueType.FLOAT, resolution=0.01, rollover=1e8
    )


ELECTRIC = DeviceModel(
    name="test.prepaid",
    vendor="test",
    product="prepaid meter",
    kind=MeterKind.ELECTRIC,
    description="",
    points=(
        _energy("energy_total"),
        _energy("energy_sharp"),
        _energy("energy_peak"),
        _energy("energy_flat"),
        _energy("energy_valley"),
        PointSpec("relay_closed", "", "relay", PointRole.STATE, ValueType.BOOL),
    ),
    commands=(
        CommandSpec("TRIP", "trip"),
        CommandSpec("CLOSE", "close"),
        CommandSpec("SET_PRICES", "prices", {"sharp": "", "peak": "", "flat": "", "valley": ""}),
        CommandSpec("SET_ALARMS", "alarms", {"alarm1": "", "alarm2": ""}),
    ),
    supply=SupplyControl("TRIP", "CLOSE", "relay_closed"),
    total_point="energy_total",
    tariff_points=("energy_sharp", "energy_peak", "energy_flat", "energy_valley"),
)
MAIN = DeviceModel(
    name="test.main",
    vendor="test",
    product="main meter",
    kind=MeterKind.ELECTRIC,
    description="",
    points=(_energy("energy_total"),),
    total_point="energy_total",
)
WATER = DeviceModel(
    name="test.water",
    vendor="test",
    product="valve water meter",
    kind=MeterKind.WATER,
    description="",
    points=(
        _energy("volume_total", "m³"),
        PointSpec("valve_open", "", "valve", PointRole.STATE, ValueType.BOOL),
    ),
    commands=(CommandSpec("VALVE_OPEN", "open"), CommandSpec("VALVE_CLOSE", "close")),
    supply=SupplyControl("VALVE_CLOSE", "VALVE_OPEN", "valve_open"),
    total_point="volume_total",
)
MODELS = {m.name: m for m in (ELECTRIC, MAIN, WATER)}


def _dev(model: DeviceModel, unit: int, **where: Any) -> dict[str, Any]:
    return {"model": model.name, "link": "gw", "unit_id": unit, **where}


SITE: dict[str, Any] = {
    "site": {"id": "billing-test", "timezone": "Asia/Shanghai"},
    "links": {"gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 15999}},
    "buildings": {"A": {"floors": ["1", "2"]}, "B": {"floors": ["1"]}},
    "rooms": {
        "A-101": {"building": "A", "floor": "1", "area_m2": 45.5},
        "A-102": {"building": "A", "floor": "1", "area_m2": 60.2},
        "A-201": {"building": "A", "floor": "2", "area_m2": 78.3},
        "B-101": {"building": "B", "floor": "1", "area_m2": 50.0},
        "B-102": {"building": "B", "floor": "1", "area_m2": 50.0},
    },
    "devices": {
        "E-A-101": _dev(ELECTRIC, 1, room="A-101"),
        "E-A-102": _dev(ELECTRIC, 2, room="A-102"),
        "E-A-201": _dev(ELECTRIC, 3, room="A-201"),
        "W-A-101": _dev(WATER, 4, room="A-101"),
        "M-A": _dev(MAIN, 5, building="A", control_mode="POSTPAID"),
        "P-A": _dev(MAIN, 6, building="A", control_mode="POSTPAID"),
        "E-B-101": _dev(ELECTRIC, 7, room="B-101"),
        "E-B-102": _dev(ELECTRIC, 8, room="B-102"),
        "M-B": _dev(MAIN, 9, building="B", control_mode="POSTPAID"),
    },
    "tariffs": {
        "flat": {"price": "0.5000"},
        "residential": residential_tariff(),
        "water": water_tariff(),
    },
    "prepay": {
        "policy": anytime_policy(),
        "engine": {"default_tariffs": {"electric": "flat", "water": "water"}},
    },
    "billing": {
        "pools": {
            "A": {
                "main": "M-A",
                "public": ["P-A"],
                "price": "0.6000",
                "method": "consumption",
                "public_method": "area",
            }
        },
        "charges": {
            "property": {
                "type": "property",
                "basis": "area",
                "rate": "2.50",
                "name": "Property fee",
            }
        },
    },
}

#: Freeze instants of the periods 2025-01 and 2025-02 (1st of the month 00:00 Shanghai).
JAN = dt.datetime(2025, 1, 1, tzinfo=TZ).astimezone(dt.UTC)
FEB = dt.datetime(2025, 2, 1, tzinfo=TZ).astimezone(dt.UTC)
MAR = dt.datetime(2025, 3, 1, tzinfo=TZ).astimezone(dt.UTC)
NOW = dt.datetime(2025, 2, 2, 9, tzinfo=TZ).astimezone(dt.UTC)


def site_data(**sections: Any) -> dict[str, Any]:
    data = copy.deepcopy(SITE)
    for key, value in sections.items():
        data[key] = value
    return data


@pytest.fixture
def site() -> Site:
    return parse_site(site_data())


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    """A SQLite database only (tests that are not about money)."""
    database = Database(f"sqlite:///{tmp_path / 'billing.db'}")
    database.upgrade()
    yield database
    database.dispose()


def make_billing(billing: Mapping[str, Any] | None = None, **sections: Any) -> Billing:
    data = site_data(**sections)
    if billing is not None:
        data["billing"] = dict(billing)
    return Billing(parse_site(data), MODELS)


def open_accounts(
    db: Database,
    site: Site,
    rooms: Mapping[str, tuple[str, ...]] | None = None,
    *,
    modes: Mapping[str, str] | None = None,
    tariff: str | None = None,
    opened_at: dt.datetime | None = None,
) -> None:
    """An open account per room (id = room id) with the given meters."""
    rooms = rooms or {
        "A-101": ("E-A-101",),
        "A-102": ("E-A-102",),
        "A-201": ("E-A-201",),
    }
    with db.begin() as conn:
        open_room_accounts(
            conn,
            site,
            MODELS,
            rooms,
            tariff_id=tariff,
            modes=modes,
            now=opened_at or dt.datetime(2024, 12, 1, tzinfo=dt.UTC),
        )


def deposit(db: Database, account: str, fen: int) -> None:
    """Money in the account's general wallet, as a cash payment would put it there."""
    with db.begin() as conn:
        ledger.post_journal(
            conn,
            "charge",
            [
                ledger.Posting("asset:psp_clearing:cash", fen),
                ledger.Posting(ledger.wallet_code(account, "general"), -fen),
            ],
            idempotency_key=f"deposit:{account}:{fen}",
            account_id=account,
        )


def read(
    db: Database, at: dt.datetime, kwh: Mapping[str, Any], **registers: Mapping[str, Any]
) -> None:
    """Readings of meters at capture instant `at` (kWh), taken a minute before it."""
    rows = []
    for meter, value in kwh.items():
        regs = {k: int(Decimal(str(v)) * 1000) for k, v in registers.get(meter, {}).items()}
        rows.append(
            Reading(meter, at, at - dt.timedelta(minutes=1), int(Decimal(str(value)) * 1000), regs)
        )
    with db.begin() as conn:
        save_captured(conn, rows, now=at)


@pytest.fixture(scope="module")
def plugins() -> Iterator[Plugins]:
    """The installed plugins for tests that run the service on simulators, without the OPC
    UA server and the historian (what those tests do not look at)."""
    before = os.environ.get(DISABLE_ENV)
    os.environ[DISABLE_ENV] = "opcua,historian"
    try:
        yield Plugins.load()
    finally:
        if before is None:
            os.environ.pop(DISABLE_ENV, None)
        else:
            os.environ[DISABLE_ENV] = before
