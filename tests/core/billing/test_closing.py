"""A period is closed only after its freeze instant and with every billed meter's reading at
it: month-end, apportionment, charges and bill drafting refuse otherwise (naming the end or
the meters, changing nothing) unless an operator overrides with a reason, which is audited;
the service holds its automatic month-end until the readings are there."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
import sqlalchemy as sa

from openprepay.core.billing.service import BillingService
from openprepay.core.config.site import parse_site
from openprepay.core.db import schema as t
from openprepay.core.errors import RequestError
from openprepay.core.events import EventBus, MonthEndHeld, set_wall_clock
from openprepay.core.operations import Operations

from .conftest import FEB, JAN, MODELS, make_billing, open_accounts, read, site_data
from .test_cli import _count as _cli_count
from .test_cli import run, site_file  # noqa: F401 (fixtures: the CLI on a site file)

ALL = {"M-A": 10000, "P-A": 0, "E-A-101": 1000, "E-A-102": 2000, "E-A-201": 3000}
LATER = {"M-A": 11000, "P-A": 10, "E-A-101": 1300, "E-A-102": 2500, "E-A-201": 3150}


def _counts(conn) -> dict[str, int]:
    def n(table) -> int:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()

    return {
        "journals": n(t.journal),
        "runs": n(t.billing_run),
        "bills": n(t.bill),
        "audit": n(t.audit_log),
    }


@pytest.fixture
def january(sqlite_db, site):
    """January of building A: accounts (A-101 post-paid) and readings at both instants."""
    open_accounts(sqlite_db, site, modes={"E-A-101": "POSTPAID"})
    read(sqlite_db, JAN, ALL)
    return sqlite_db


def test_a_period_that_has_not_ended_cannot_be_closed(january):
    db, billing = january, make_billing()
    read(db, FEB, LATER)  # provisional: the "last reading so far" saved for 1 Feb
    with db.read() as conn:
        before = _counts(conn)
    late_on_the_31st = FEB - dt.timedelta(minutes=20)
    with pytest.raises(RequestError, match=r"2025-01 has not ended.*2025-02-01 00:00") as refused:
        billing.month_end(db, "2025-01", actor="cli:alice", now=late_on_the_31st)
    assert refused.value.field == "period" and "--override" in refused.value.message
    with db.read() as conn:
        assert _counts(conn) == before  # nothing posted, drafted or recorded
        check = billing.period_check(conn, "2025-01", now=late_on_the_31st)
    assert not check.closable and not check.missing

    report = billing.month_end(
        db, "2025-01", actor="cli:alice", now=late_on_the_31st, override="tenant moves out today"
    )
    assert report.drafts == 3 and report.pools[0].state == "POSTED"
    with db.read() as conn:
        audit = conn.execute(
            sa.select(t.audit_log).where(t.audit_log.c.action == "period_override")
        ).one()
    assert (audit.actor, audit.target) == ("cli:alice", "2025-01")
    assert "month-end although 2025-01 has not ended" in audit.detail
    assert audit.detail.endswith("reason: tenant moves out today")


def test_missing_and_stale_freeze_readings_are_named(january):
    db, billing = january, make_billing()
    after = FEB + dt.timedelta(hours=30)
    read(db, FEB, {m: v for m, v in LATER.items() if m != "E-A-102"})
    with pytest.raises(RequestError, match=r"no reading at the freeze instant .* for E-A-102"):
        billing.month_end(db, "2025-01", actor="month-end", now=after)
    # A reading saved hours before the instant: the meter went silent, its usage is short.
    with db.begin() as conn:
        conn.execute(
            t.billing_reading.insert(),
            {
                "meter_id": "E-A-102",
                "at": FEB,
                "read_at": FEB - dt.timedelta(hours=5),
                "energy": 2_400_000,
                "registers": {},
                "source": "meter",
                "recorded_by": "capture",
                "updated_at": FEB,
            },
        )
    with db.read() as conn:
        check = billing.period_check(conn, "2025-01", now=after)
    assert check.stale and check.stale[0][0] == "E-A-102"
    assert "E-A-102 (read 2025-01-31 19:00)" in check.describe()
    # Drafting bills looks at the post-paid meters only; E-A-101 has its reading.
    with db.read() as conn:
        assert billing.period_check(conn, "2025-01", now=after, pools=()).closable


def test_bill_drafting_through_the_door_is_refused_before_the_end(january, site):
    db = january
    read(db, FEB, LATER)
    ops = Operations(site, db, EventBus(), models=MODELS)
    early = FEB - dt.timedelta(hours=1)
    ops.clock = lambda: early
    with pytest.raises(RequestError, match="bill drafting refused: 2025-01 has not ended"):
        ops.draft_bills("2025-01", actor="cli:bob")
    with db.read() as conn:
        refused = conn.execute(sa.select(t.bill)).all()
    assert refused == []
    ops.clock = lambda: FEB + dt.timedelta(hours=2)
    assert [d.account_id for d in ops.draft_bills("2025-01", actor="cli:bob")] == ["A-101"]


async def test_the_service_holds_its_month_end_until_the_readings_are_there(january):
    db = january
    read(db, FEB, {m: v for m, v in LATER.items() if m != "M-A"})
    data = site_data()
    data["billing"] = {**data["billing"], "month_end_poll_s": 0.05, "run_delay_h": 1}
    site = parse_site(data)
    bus = EventBus()
    now = [dt.datetime(2025, 1, 20, tzinfo=dt.UTC)]
    service = BillingService(
        site, MODELS, db, bus, Operations(site, db, bus, models=MODELS), clock=lambda: now[0]
    )
    held: list[MonthEndHeld] = []
    bus.subscribe(MonthEndHeld, held.append)
    await service.start()
    try:
        await asyncio.sleep(0.2)  # January seen
        now[0] = FEB + dt.timedelta(hours=2)
        await asyncio.sleep(0.5)  # several looks: held, said once
        for _ in range(100):  # between two looks (each claims the period a moment)
            with db.read() as conn:
                cycle = conn.execute(
                    sa.select(t.billing_cycle).where(t.billing_cycle.c.period == "2025-01")
                ).one()
            if cycle.state == "HELD":
                break
            await asyncio.sleep(0.01)
        assert cycle.state == "HELD" and "M-A" in cycle.summary["held"]
        assert [(h.period, "M-A" in h.reason) for h in held] == [("2025-01", True)]
        read(db, FEB, {"M-A": LATER["M-A"]})  # the operator records the reading
        for _ in range(100):
            if service.month_ends:
                break
            await asyncio.sleep(0.05)
    finally:
        await service.stop()
    assert [r.period for r in service.month_ends] == ["2025-01"]


@pytest.fixture
def december_2nd():
    """The CLI's clock on 2 Dec 2026, 10:00 Shanghai (a process-wide wall clock)."""
    set_wall_clock(dt.datetime(2026, 12, 2, 2, tzinfo=dt.UTC))
    yield
    set_wall_clock(None)


def test_the_cli_refuses_a_future_month_end_and_says_provisional(
    run,  # noqa: F811 (the fixture imported above)
    site_file,  # noqa: F811
    december_2nd,
):
    """The incident: on 2 Dec, `billing month-end --period 2027-03` posted property fees
    and drafted bills; an apportionment dry run showed figures of provisional readings."""
    refused = run("billing", "month-end", "SITE", "--period", "2027-03", ok=False)
    assert "2027-03 has not ended" in refused.output and "--override" in refused.output
    assert _cli_count(site_file, t.journal) == 0 and _cli_count(site_file, t.bill) == 0
    run("billing", "charge", "SITE", "--period", "2026-11", "--dry-run")  # ended: fine
    for at, main, a101, a102 in (("2026-11-01 00:00", 10, 1, 2), ("2026-12-01 00:00", 42, 11, 22)):
        run("billing", "reading", "SITE", "M-A", "--at", at, "--value", str(main))
        run("billing", "reading", "SITE", "E-A-101", "--at", at, "--value", str(a101))
        run("billing", "reading", "SITE", "E-A-102", "--at", at, "--value", str(a102))
    run("billing", "reading", "SITE", "M-A", "--at", "2027-01-01 00:00", "--value", "60")
    dry = run("billing", "apportion", "SITE", "--period", "2026-12", "--dry-run").output
    assert dry.startswith("PROVISIONAL: 2026-12 has not ended")
    assert "no reading at the freeze instant 2027-01-01 00:00 Asia/Shanghai for E-A-101" in dry
    final = run("billing", "apportion", "SITE", "--period", "2026-11", "--dry-run").output
    assert "PROVISIONAL" not in final and "would post" in final
    forced = run(
        "billing", "charge", "SITE", "--period", "2026-12", "--override", "owner asked for it"
    )
    assert "charge:property 2026-12: POSTED" in forced.output
    assert _cli_count(site_file, t.audit_log) >= 1
