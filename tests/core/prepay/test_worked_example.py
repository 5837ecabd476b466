"""Worked example A (domain.md §2.3) through the engine: a thousand samples of a prepaid
meter's own registers, billed in many small batches, deduct exactly 70.70 CNY — on SQLite
and on PostgreSQL."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.app.services import operations_for
from openprepay.core.config.site import parse_site
from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.events import EventBus
from openprepay.core.model import Sample
from openprepay.core.prepay import accounts as acc
from openprepay.core.prepay.engine import PrepayEngine
from openprepay.core.rating.layout import MeterState

from .conftest import site_data

TARIFF_A = {
    "rates": {"sharp": "0.7200", "peak": "0.6000", "flat": "0.5000", "valley": "0.2000"},
    "periods": [
        {"start": "23:00", "end": "07:00", "rate": "valley"},
        {"start": "07:00", "end": "10:00", "rate": "flat"},
        {"start": "10:00", "end": "11:30", "rate": "sharp"},
        {"start": "11:30", "end": "18:30", "rate": "flat"},
        {"start": "18:30", "end": "23:00", "rate": "peak"},
    ],
    "tiers": {"cycle": "annual", "thresholds": ["2880", "4800"], "adders": ["0", "0.05", "0.30"]},
}
#: This month's energy per register (T1..T4 = sharp, peak, flat, valley), in 0.01 kWh.
MONTH = {"energy_sharp": 1000, "energy_peak": 5000, "energy_flat": 4000, "energy_valley": 5000}


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'a.db'}")
        database.upgrade()
        yield database
        database.dispose()
        return
    base = request.getfixturevalue("postgres_database")
    schema = f"e_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    database = Database(f"{base}?options=-csearch_path%3D{schema}")
    database.upgrade()
    yield database
    database.dispose()
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    engine.dispose()


def month_of_readings(n: int, seed: int = 7) -> list[dict[str, int]]:
    """`n` cumulative readings whose increments add up to MONTH, in random small steps."""
    rng = random.Random(seed)
    left = dict(MONTH)
    counts = {k: 100_000 for k in MONTH}  # the registers before this month
    out = [dict(counts)]
    for i in range(n):
        remaining = n - i
        for k in counts:
            step = left[k] if remaining == 1 else rng.randint(0, 2 * left[k] // remaining)
            step = min(step, left[k])
            counts[k] += step
            left[k] -= step
        out.append(dict(counts))
    assert all(v == 0 for v in left.values())
    return out


def test_worked_example_a_posts_exactly_70_70(db: Database, plugins) -> None:
    site = parse_site(site_data(tariffs={"residential": TARIFF_A}))
    engine = PrepayEngine(site, plugins.models, db, EventBus(), arbiter=None)
    model = plugins.models["acrel.DDSY1352"]
    opened = datetime(2025, 3, 1, tzinfo=UTC)
    with db.begin() as conn:
        acc.create_account(
            conn,
            acc.AccountSpec(
                "A-101",
                "tenant",
                (acc.resolve_meter(site, plugins.models, "E-101"),),
                tariff_id="residential",
            ),
            now=opened,
        )
        # Year-to-date before this month: 2,800 kWh of the annual tier cycle.
        cycle_start = datetime(2024, 12, 31, 16, tzinfo=UTC)  # Jan 1 00:00 Asia/Shanghai
        state = MeterState.opening(cycle_energy_units="2800", cycle_start=cycle_start)
        engine.control.upsert_meter(
            conn, "E-101", opened, account_id="A-101", rating_state=state.to_record()
        )
    operations_for(engine).topup("A-101", 20000, "pay-1", actor="test")

    readings = month_of_readings(1000)
    start = datetime(2025, 3, 2, tzinfo=UTC)
    rng = random.Random(3)
    i = 0
    while i < len(readings):
        size = rng.randint(1, 40)  # a poll or a few per flush, like the running service
        for reading in readings[i : i + size]:
            values = {k: v / 100 for k, v in reading.items()}
            values["energy_total"] = sum(reading.values()) / 100
            when = start + timedelta(minutes=40 * i)
            engine.metering.on_sample(Sample("E-101", model, when, values))
            i += 1
        engine.metering.flush(engine.metering.take())
    engine.metering.flush({}, persist_all=True)  # as at shutdown: consumption saved

    with db.read() as conn:
        posted = conn.execute(
            sa.select(sa.func.sum(t.posting.c.amount_fen), sa.func.count())
            .join(t.journal, t.journal.c.id == t.posting.c.journal_id)
            .where(
                t.journal.c.kind == "usage",
                t.posting.c.ledger_account == ledger.wallet_code("A-101"),
            )
        ).one()
        balance = ledger.balances(conn, "A-101").energy_fen
        assert ledger.verify(conn).ok
        day_energy = conn.execute(sa.select(sa.func.sum(t.meter_usage_day.c.energy))).scalar()
    assert int(posted[0]) == 7070  # 67.20 TOU + 3.50 tier-2 surcharge
    assert posted[1] > 30  # deducted in many small postings, without drift
    assert balance == 20000 - 7070
    assert Decimal(int(day_energy)) / 1000 == Decimal("150")
