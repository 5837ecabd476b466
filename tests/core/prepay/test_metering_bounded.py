"""A billing flush in bounded transactions: meters are written a part at a time; a part
that finds the database locked is billed with the next flush, nothing twice, nothing lost."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.config.site import parse_site
from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.events import EventBus
from openprepay.core.model import Sample
from openprepay.core.prepay import accounts as acc
from openprepay.core.prepay import metering as metering_module
from openprepay.core.prepay.engine import PrepayEngine

from .conftest import site_data

START = datetime(2025, 3, 2, tzinfo=UTC)


def samples(engine: PrepayEngine, models: Any, meter: str, kwh: list[float]) -> None:
    model = models[engine.site.devices[meter].model]
    for i, value in enumerate(kwh):
        values = {
            "energy_total": value,
            "energy_sharp": 0.0,
            "energy_peak": 0.0,
            "energy_flat": value,
            "energy_valley": 0.0,
        }
        engine.metering.on_sample(Sample(meter, model, START + timedelta(minutes=i), values))


def usage(db: Database) -> dict[str, int]:
    with db.read() as conn:
        assert ledger.verify(conn).ok
        rows = conn.execute(
            sa.select(t.journal.c.meter_id, sa.func.count())
            .where(t.journal.c.kind == "usage")
            .group_by(t.journal.c.meter_id)
        ).all()
    return {r[0]: r[1] for r in rows}


def test_a_part_that_finds_the_database_locked_is_billed_with_the_next_flush(
    tmp_path: Path, plugins: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metering_module, "METERING_METERS", 1)  # one meter a transaction
    db_file = tmp_path / "m.db"
    db = Database(f"sqlite:///{db_file}", busy_timeout_ms=50)
    db.upgrade()
    site = parse_site(site_data())
    engine = PrepayEngine(site, plugins.models, db, EventBus(), arbiter=None)
    opened = START - timedelta(days=1)
    with db.begin() as conn:
        for account, meter in (("A-101", "E-101"), ("A-102", "E-102")):
            spec = acc.AccountSpec(
                account, "t", (acc.resolve_meter(site, plugins.models, meter, "REMOTE"),)
            )
            acc.create_account(conn, spec, now=opened)
            ledger.topup(conn, account, 100_000, f"pay-{account}", channel="cash")

    writes: list[str] = []
    holder = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)

    def before_begin(conn: Any) -> None:
        if conn.get_execution_options().get("sqlite_begin", "IMMEDIATE") != "IMMEDIATE":
            return
        writes.append("begin")
        if len(writes) == 2:  # the flush's second part: another process holds the lock
            holder.execute("BEGIN IMMEDIATE")

    sa.event.listen(db.engine, "begin", before_begin, insert=True)
    samples(engine, plugins.models, "E-101", [100.0, 100.1, 100.2])
    samples(engine, plugins.models, "E-102", [200.0, 200.1, 200.3])
    batch = engine.metering.take()
    report = engine.metering.flush(batch)
    if holder.in_transaction:
        holder.execute("ROLLBACK")
    holder.close()
    sa.event.remove(db.engine, "begin", before_begin)

    (unwritten,) = report.unwritten
    written = ({"E-101", "E-102"} - {unwritten}).pop()
    assert usage(db) == {written: 1}  # the first part committed alone
    assert report.postings == 1
    # The service puts the unwritten meter's samples back (run_flushes); the next flush
    # bills them from the saved baseline, and the written meter's are not billed again.
    again = engine.metering.flush(batch)
    assert not again.unwritten
    assert usage(db) == {"E-101": 1, "E-102": 1}
    with db.read() as conn:
        spent = {a: 100_000 - ledger.balances(conn, a).energy_fen for a in ("A-101", "A-102")}
    assert spent == {"A-101": 10, "A-102": 15}  # 0.2 and 0.3 kWh at 0.50
    db.dispose()
