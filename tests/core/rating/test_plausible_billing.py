"""Billing holds readings to the meter's physical limits, against the baseline it saves
(issue 9 §2), on SQLite and PostgreSQL.

The link arbiter flags implausible samples before they reach billing; these tests feed
Good samples straight into metering, as after a restart (the arbiter then has no
reference yet, billing has its saved baseline). `[prepay.rating] max_per_hour` used to be
off by default, so +2,000 kWh was charged and moved the baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.app.demo import anytime_policy
from openprepay.core.app.plugins import Plugins
from openprepay.core.app.services import operations_for
from openprepay.core.config.site import parse_site
from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.events import EventBus, ImplausibleReading
from openprepay.core.model import Sample
from openprepay.core.prepay import accounts as acc
from openprepay.core.prepay.engine import PrepayEngine

OPENED = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def plugins() -> Plugins:
    return Plugins.load()


def site(rating: dict[str, Any] | None = None, **poll: Any) -> Any:
    return parse_site(
        {
            "site": {"id": "t", "timezone": "Asia/Shanghai"},
            "poll": poll,
            "links": {"gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 1}},
            "buildings": {"A": {"floors": ["1"]}},
            "rooms": {"A-101": {"building": "A", "floor": "1"}},
            "devices": {
                "E-101": {"model": "acrel.DDSY1352", "link": "gw", "unit_id": 1, "room": "A-101"}
            },
            "tariffs": {"flat": {"price": "0.5000"}},
            "prepay": {
                "policy": anytime_policy(),
                "engine": {"default_tariffs": {"electric": "flat"}, "persist_s": 0},
                "rating": rating or {},
            },
        }
    )


class Billing:
    """The prepayment engine's metering on a real database, fed samples by hand."""

    def __init__(self, db: Database, plugins: Plugins, balance_fen: int = 2000) -> None:
        self.db = db
        self.engine = PrepayEngine(site(), plugins.models, db, EventBus(), arbiter=None)
        self.model = plugins.models["acrel.DDSY1352"]
        self.events: list[object] = []
        with db.begin() as conn:
            spec = acc.AccountSpec(
                "A-101", "tenant", (acc.resolve_meter(self.engine.site, plugins.models, "E-101"),)
            )
            acc.create_account(conn, spec, now=OPENED)
        operations_for(self.engine).topup("A-101", balance_fen, "pay-1", actor="test")

    def read(self, minutes: float, kwh: float) -> None:
        """A Good sample `minutes` after opening with the total register at `kwh`."""
        values = {
            "energy_total": kwh,
            "energy_sharp": 0.0,
            "energy_peak": 0.0,
            "energy_flat": kwh,
            "energy_valley": 0.0,
        }
        when = OPENED + timedelta(minutes=minutes)
        self.engine.metering.on_sample(Sample("E-101", self.model, when, values))
        report = self.engine.metering.flush(self.engine.metering.take())
        self.events.extend(report.effects.events)

    @property
    def balance_fen(self) -> int:
        with self.db.read() as conn:
            return ledger.balances(conn, "A-101").energy_fen

    def implausible(self) -> list[ImplausibleReading]:
        return [e for e in self.events if isinstance(e, ImplausibleReading)]

    def trips(self) -> int:
        with self.db.read() as conn:
            return conn.execute(
                sa.select(sa.func.count()).where(t.meter_command.c.kind == "TRIP")
            ).scalar_one()


def test_the_bound_comes_from_the_meter_unless_the_site_sets_one(plugins: Plugins) -> None:
    def bound(data_site: Any) -> Decimal | None:
        engine = PrepayEngine(data_site, plugins.models, None, EventBus(), arbiter=None)  # type: ignore[arg-type]
        return engine.metering.max_per_hour["E-101"]

    # 220 V × 60 A × 1 phase × 1.25 margin
    assert bound(site()) == Decimal("16.500")
    assert bound(site(time_scale=60)) == Decimal("990.000")  # a demo at 60×
    assert bound(site({"max_per_hour": "30"})) == Decimal("30.000")


def test_a_jump_is_not_billed_and_does_not_move_the_baseline(
    db: Database, plugins: Plugins, check: Callable[[], Any]
) -> None:
    b = Billing(db, plugins)
    b.read(0, 1000.00)  # the baseline
    b.read(10, 1000.20)  # 0.20 kWh: 10 fen
    assert b.balance_fen == 2000 - 10
    b.read(11, 3000.20)  # +2,000 kWh in a minute: a 13.2 kW meter cannot
    assert b.balance_fen == 2000 - 10 and b.trips() == 0
    [event] = b.implausible()
    assert (event.meter_id, event.point, event.value, event.source) == (
        "E-101",
        "energy_total",
        3000.2,
        "billing",
    )
    assert "16.500 kWh per hour" in event.limit
    b.read(12, 3000.30)  # still the garbled level: refused, no second event
    assert len(b.implausible()) == 1 and b.balance_fen == 2000 - 10
    # The real register again: billed from the last good baseline (1000.20), exactly.
    b.read(20, 1000.60)
    assert b.balance_fen == 2000 - 30
    check()


def test_a_register_going_backwards_is_not_negative_usage(
    db: Database, plugins: Plugins, check: Callable[[], Any]
) -> None:
    b = Billing(db, plugins)
    b.read(0, 1000.00)
    b.read(10, 990.00)
    assert b.balance_fen == 2000 and b.trips() == 0
    [event] = b.implausible()
    assert "not below the last billed reading 1000.00 kWh" in event.limit
    b.read(20, 1000.40)
    assert b.balance_fen == 2000 - 20
    check()


def test_a_genuine_step_is_billed_when_possible_in_the_elapsed_time(
    db: Database, plugins: Plugins, check: Callable[[], Any]
) -> None:
    b = Billing(db, plugins, balance_fen=10000)
    b.read(0, 1000.00)
    b.read(10 * 60, 1300.00)  # 300 kWh in ten hours: at most 165 — refused
    assert b.balance_fen == 10000 and len(b.implausible()) == 1
    b.read(10 * 60 + 1, 1100.00)  # 100 kWh in ten hours from the baseline: billed
    assert b.balance_fen == 10000 - 5000 and b.trips() == 0
    check()
