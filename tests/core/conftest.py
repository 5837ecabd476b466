"""Fixtures for the ledger tests: a migrated database on SQLite and on PostgreSQL.

`db` is parametrised: every test that uses it runs once on a SQLite file and once on the
real PostgreSQL server (a fresh schema of the session's throwaway database per test, so
tests stay isolated and fast). `check` runs `ledger.verify` and fails on any break:
tests call it after every operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from openprepay.core.config.site import ControlMode, Site, parse_site
from openprepay.core.db import Database
from openprepay.core.model import DeviceModel, MeterKind, PointSpec
from openprepay.core.prepay import accounts as acc

ELECTRIC = DeviceModel(
    name="test.ELECTRIC",
    vendor="test",
    product="electric meter",
    kind=MeterKind.ELECTRIC,
    description="",
    points=(PointSpec("energy_total", "kWh", "total energy"),),
)
WATER = DeviceModel(
    name="test.WATER",
    vendor="test",
    product="water meter",
    kind=MeterKind.WATER,
    description="",
    points=(PointSpec("volume", "m3", "volume"),),
)
MODELS = {ELECTRIC.name: ELECTRIC, WATER.name: WATER}

SITE_DATA: dict[str, Any] = {
    "site": {"id": "test-site", "timezone": "Asia/Shanghai"},
    "links": {"gw1": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 15999}},
    "buildings": {"A": {"floors": ["1", "2"]}},
    "rooms": {
        "A-101": {"building": "A", "floor": "1", "area_m2": 45.5},
        "A-102": {"building": "A", "floor": "1", "area_m2": 60.2},
        "A-201": {"building": "A", "floor": "2", "area_m2": 78.3},
    },
    "devices": {
        "E-101": {"model": ELECTRIC.name, "link": "gw1", "unit_id": 1, "room": "A-101"},
        "W-101": {"model": WATER.name, "link": "gw1", "unit_id": 2, "room": "A-101"},
        "E-102": {
            "model": ELECTRIC.name,
            "link": "gw1",
            "unit_id": 3,
            "room": "A-102",
            "control_mode": "LOCAL",
        },
        "E-201": {"model": ELECTRIC.name, "link": "gw1", "unit_id": 4, "room": "A-201"},
        "W-201": {"model": WATER.name, "link": "gw1", "unit_id": 5, "room": "A-201"},
        "M-A": {
            "model": ELECTRIC.name,
            "link": "gw1",
            "unit_id": 6,
            "building": "A",
            "control_mode": "POSTPAID",
        },
    },
}


@pytest.fixture
def models() -> dict[str, DeviceModel]:
    """The device models of the test site: one electric, one water."""
    return MODELS


@pytest.fixture
def site() -> Site:
    return parse_site(SITE_DATA)


def _make_account(
    db: Database,
    account_id: str = "A-101",
    meters: tuple[tuple[str, MeterKind, ControlMode], ...] = (
        ("E-101", MeterKind.ELECTRIC, ControlMode.REMOTE),
    ),
    **spec: Any,
) -> acc.Account:
    from openprepay.core.prepay.purchase_count import set_meter_buy_count

    with db.begin() as conn:
        account = acc.create_account(
            conn,
            acc.AccountSpec(
                account_id,
                spec.pop("name", f"tenant of {account_id}"),
                tuple(acc.MeterAssignment(*m) for m in meters),
                **spec,
            ),
        )
        for m in account.meters:
            if m.control_mode == ControlMode.LOCAL and m.confirmed_buy_count == 0:
                # The service would read a fresh meter's purchase count (0) at attach.
                set_meter_buy_count(conn, m.meter_id, 0)
        return account


@pytest.fixture
def make_account(db: Database) -> Callable[..., acc.Account]:
    """`make_account("A-102", meters=(("E-102", MeterKind.ELECTRIC, ControlMode.LOCAL),),
    hoard_limit...)`: create an open account (keyword arguments go to AccountSpec)."""
    return lambda *args, **kwargs: _make_account(db, *args, **kwargs)


@pytest.fixture
def account(db: Database) -> acc.Account:
    """An open account A-101 with one REMOTE electric meter E-101."""
    return _make_account(db)


@pytest.fixture
def snapshot(db: Database) -> Callable[[], dict[str, Any]]:
    """Everything money-related in the database, to prove that a refused request changed
    nothing."""

    def take() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with db.read() as conn:
            for table in (
                "journal",
                "posting",
                "wallet",
                "topup",
                "refund",
                "refund_allocation",
                "meter_command",
                "meter",
                "account",
                "account_meter",
                "ledger_account",
            ):
                rows = conn.execute(sa.text(f"SELECT * FROM {table}")).all()
                out[table] = sorted(tuple(str(v) for v in r) for r in rows)
        return out

    return take
