"""Batch and scheduled operations: one result per item, a dry run that writes nothing, bad
input refused with the field named, control items through the policy gate and the
mass-disconnect rate limit, meter parameters as durable commands, recurring jobs, progress
samples — and a scheduled job that survives a restart of the service and never runs twice,
also with two instances."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import pytest
import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.app.demo import anytime_policy
from openprepay.core.billing.batch import Batches
from openprepay.core.billing.batch.model import BATCH_MODEL
from openprepay.core.billing.batch.selection import read_csv_rows
from openprepay.core.billing.service import BillingService
from openprepay.core.config.site import parse_site
from openprepay.core.db import schema as t
from openprepay.core.events import EventBus
from openprepay.core.ledger import RequestError
from openprepay.core.model import Sample
from openprepay.core.operations import Operations
from openprepay.core.prepay import commands as cmds

from .conftest import MODELS, NOW, open_accounts, site_data

ROOMS = {
    "A-101": ("E-A-101", "W-A-101"),
    "A-102": ("E-A-102",),
    "A-201": ("E-A-201",),
    "B-101": ("E-B-101",),
}


class Clock:
    def __init__(self, now: dt.datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _site(max_trips: int = 100):
    data = site_data()
    data["prepay"] = {
        "policy": {**anytime_policy(), "max_trips_per_minute": max_trips},
        "engine": {"default_tariffs": {"electric": "flat", "water": "water"}},
    }
    return parse_site(data)


def _batches(db, clock, *, owner="i1", max_trips=100, bus=None):
    site = _site(max_trips)
    bus = bus or EventBus()
    ops = Operations(site, db, bus, models=MODELS, clock=clock)
    return Batches(site, MODELS, db, ops, owner=owner, lease_s=30, clock=clock, publish=bus.publish)


def _count(db, table):
    with db.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def _topups(db):
    with db.read() as conn:
        return sorted(conn.execute(sa.select(t.topup.c.account_id, t.topup.c.reference)).all())


def test_topup_a_building_one_result_per_item(sqlite_db, site, clock):
    db = sqlite_db
    open_accounts(db, site, ROOMS)
    bus = EventBus()
    progress: list[Sample] = []
    bus.subscribe(Sample, lambda s: progress.append(s) if s.model is BATCH_MODEL else None)
    batches = _batches(db, clock, bus=bus)
    job = batches.create(
        "topup",
        {"amount": "50.00"},
        {"buildings": ["A"]},
        reason="welcome credit",
        actor="cli:alice",
    )
    assert job.state == "SCHEDULED" and job.run_no == 0
    [claimed] = batches.claim()
    done = batches.run(claimed)
    assert (done.state, done.total, done.done, done.failed) == ("DONE", 3, 3, 0)
    items = batches.items(job.id)
    assert [(i.target, i.state) for i in items] == [
        ("A-101", "DONE"),
        ("A-102", "DONE"),
        ("A-201", "DONE"),
    ]
    assert items[0].result == "top-up 50.00, balance 50.00"
    assert _topups(db) == [
        ("A-101", f"batch-{job.id}-1-1"),
        ("A-102", f"batch-{job.id}-1-2"),
        ("A-201", f"batch-{job.id}-1-3"),
    ]
    assert progress[-1].source == f"batch-{job.id}"
    assert progress[-1].values == {
        "total": 3,
        "done": 3,
        "failed": 0,
        "pending": 0,
        "state": 2,
        "run_no": 1,
    }
    assert batches.claim() == []  # done: nothing runs again


def test_dry_run_writes_nothing_and_bad_input_changes_nothing(sqlite_db, site, clock):
    db = sqlite_db
    open_accounts(db, site, ROOMS)
    batches = _batches(db, clock)
    with db.begin() as conn:  # A-102 near its hoarding limit
        conn.execute(
            t.account.update().where(t.account.c.id == "A-102").values(hoard_limit_fen=3000)
        )
    before = {tbl.name: _count(db, tbl) for tbl in (t.batch_job, t.batch_item, t.journal)}
    plan = batches.plan("topup", {"amount": "50.00"}, {"rooms": ["A-101", "A-102"]})
    assert [(p.target, p.ok) for p in plan] == [("A-101", True), ("A-102", False)]
    assert "would exceed the account's hoarding limit 30.00" in plan[1].text
    rows = read_csv_rows("room,amount\nA-101,10.00\nA-999,5.00\n", "topups.csv")
    with pytest.raises(
        RequestError, match=re.escape("topups.csv:line 3: room: unknown room 'A-999'")
    ):
        batches.create("topup", {}, {"rows": rows, "source": "topups.csv"}, reason="r", actor="a")
    with pytest.raises(
        RequestError,
        match=re.escape("topups.csv:line 2: amount: expected more than 0.00, got -5"),
    ):
        batches.create(
            "topup",
            {},
            {"rows": read_csv_rows("account,amount\nA-101,-5\n"), "source": "topups.csv"},
            reason="r",
            actor="a",
        )
    with pytest.raises(RequestError, match="at: 2025-02-01 09:00 is in the past"):
        batches.create(
            "set_tariff",
            {"tariff": "flat"},
            {"site": True},
            reason="r",
            actor="a",
            at=NOW - dt.timedelta(days=1),
        )
    with pytest.raises(RequestError, match="tariff: unknown tariff 'gold'"):
        batches.create("set_tariff", {"tariff": "gold"}, {"site": True}, reason="r", actor="a")
    with pytest.raises(RequestError, match="unknown column 'colour'"):
        read_csv_rows("room,colour\nA-101,red\n")
    assert {tbl.name: _count(db, tbl) for tbl in (t.batch_job, t.batch_item, t.journal)} == before


def test_csv_rows_carry_their_own_amounts(sqlite_db, site, clock):
    db = sqlite_db
    open_accounts(db, site, ROOMS)
    batches = _batches(db, clock)
    rows = read_csv_rows("\ufeffroom,amount\nA-101,10.00\n\nB-101,25.50\n")
    job = batches.create("topup", {}, {"rows": rows}, reason="monthly subsidy", actor="a")
    [job_id] = batches.claim()
    assert batches.run(job_id).done == 2
    with db.read() as conn:
        assert ledger.balances(conn, "A-101").energy_fen == 1000
        assert ledger.balances(conn, "B-101").energy_fen == 2550
    del job


def test_control_batch_goes_through_the_gate_and_the_rate_limit(sqlite_db, site, clock):
    db = sqlite_db
    open_accounts(db, site, ROOMS)
    # Through the policy gate, accounts that are not in arrears are not cut.
    batches = _batches(db, clock, max_trips=2)
    job = batches.create(
        "disconnect",
        {"kind": "electric"},
        {"buildings": ["A"]},
        reason="maintenance",
        actor="cli:bob",
    )
    [job_id] = batches.claim()
    done = batches.run(job_id)
    assert (done.done, done.failed) == (0, 3)
    assert "may not be disconnected" in batches.items(job.id)[0].result
    assert _count(db, t.meter_command) == 0
    # An operator's override: every meter is cut, at most 2 per minute (the rest deferred).
    job = batches.create(
        "disconnect",
        {"kind": "electric", "override": True},
        {"buildings": ["A"]},
        reason="maintenance",
        actor="cli:bob",
    )
    [job_id] = batches.claim()
    view = batches.run(job_id)  # queued, not done: each item waits for its meter
    assert (view.state, view.done, view.failed, view.total) == ("DONE", 0, 0, 3)
    assert [i.state for i in batches.items(job.id)] == ["WAITING"] * 3
    with db.read() as conn:
        trips = conn.execute(
            sa.select(
                t.meter_command.c.meter_id,
                t.meter_command.c.next_attempt_at,
                t.meter_command.c.reason,
            )
            .where(t.meter_command.c.kind == "TRIP")
            .order_by(t.meter_command.c.id)
        ).all()
        audit = conn.execute(
            sa.select(sa.func.count()).where(t.audit_log.c.action == "disconnect")
        ).scalar()
    assert [m for m, _, _ in trips] == ["E-A-101", "E-A-102", "E-A-201"]
    deferred = [m for m, at, _ in trips if at > NOW]
    assert deferred == ["E-A-201"]  # the site's mass-disconnect rate limit
    assert all(f"[batch {job.id} #1." in reason for _, _, reason in trips)
    assert audit >= 3


def test_meter_parameters_are_durable_commands(sqlite_db, site, clock):
    db = sqlite_db
    open_accounts(db, site, ROOMS)
    batches = _batches(db, clock)
    prices = {"sharp": "0.72", "peak": "0.60", "flat": "0.50", "valley": "0.20"}
    plan = batches.plan("set_price", prices, {"floors": ["A:1"]})
    assert [p.target for p in plan] == ["E-A-101", "E-A-102"]  # the water meter has no prices
    with pytest.raises(RequestError, match=re.escape("test.water has no command 'SET_PRICES'")):
        batches.plan("set_price", prices, {"meters": ["W-A-101"]})
    job = batches.create("set_price", prices, {"floors": ["A:1"]}, reason="new tariff", actor="a")
    [job_id] = batches.claim()
    batches.run(job_id)
    with db.read() as conn:
        commands = cmds.list_commands(conn)
    assert sorted(c.meter_id for c in commands) == ["E-A-101", "E-A-102"]
    assert all(c.kind == "SET_PARAMS" and c.params["command"] == "SET_PRICES" for c in commands)
    assert commands[0].params["sharp"] == 0.72
    from openprepay.core.prepay.executor import _device_command

    device = _device_command(commands[0])
    assert device.name == "SET_PRICES" and "command" not in device.params
    del job


def test_recurring_job_runs_each_occurrence_once(sqlite_db, site, clock):
    db = sqlite_db
    open_accounts(db, site, ROOMS)
    batches = _batches(db, clock)
    first = NOW + dt.timedelta(hours=1)
    job = batches.create(
        "topup",
        {"amount": "1.00"},
        {"accounts": ["A-101"]},
        reason="daily",
        actor="a",
        at=first,
        every="day",
    )
    assert batches.claim() == []  # not due yet
    clock.now = first + dt.timedelta(minutes=5)
    batches.run_due()
    view = batches.get(job.id)
    assert (view.state, view.run_no, view.next_run_at) == (
        "SCHEDULED",
        1,
        first + dt.timedelta(days=1),
    )
    assert batches.run_due() == []
    clock.now = first + dt.timedelta(days=3)  # the service was down two days: one catch-up run
    batches.run_due()
    view = batches.get(job.id)
    assert view.run_no == 2 and view.next_run_at == first + dt.timedelta(days=4)
    assert len(_topups(db)) == 2
    batches.cancel(job.id, actor="a")
    clock.now = first + dt.timedelta(days=5)
    assert batches.run_due() == [] and batches.get(job.id).state == "CANCELLED"


def test_a_dead_instance_is_resumed_without_repeating_items(sqlite_db, site, clock):
    db = sqlite_db
    open_accounts(db, site, ROOMS)
    one = _batches(db, clock, owner="one")
    job = one.create("topup", {"amount": "5.00"}, {"site": True}, reason="r", actor="a")
    [job_id] = one.claim()
    stop_after = iter([False, True])
    one.run(job_id, stop=lambda: next(stop_after))  # carries out one item, then "dies"
    assert len(_topups(db)) == 1
    two = _batches(db, clock, owner="two")
    assert two.claim() == []  # its lease still holds
    clock.now = NOW + dt.timedelta(seconds=31)
    [resumed] = two.claim()
    assert two.run(resumed).done == 4
    assert one.run(job_id).state == "DONE"  # the dead one lost its claim: it does nothing
    assert [a for a, _ in _topups(db)] == ["A-101", "A-102", "A-201", "B-101"]
    assert batches_total(db, job.id) == 4


def batches_total(db, job_id):
    with db.read() as conn:
        return conn.execute(
            sa.select(sa.func.count()).where(
                t.batch_item.c.job_id == job_id, t.batch_item.c.state == "DONE"
            )
        ).scalar()


async def test_scheduled_job_survives_a_restart_and_runs_once(sqlite_db, site, clock):
    """The service is stopped before the job is due and started again (twice, as two
    instances at once) after: the job runs exactly once."""
    db = sqlite_db
    open_accounts(db, site, ROOMS)
    data = site_data()
    data["billing"] = {"batch_poll_s": 0.05, "month_end_poll_s": 3600}
    site = parse_site(data)

    def service(name):
        bus = EventBus()
        ops = Operations(site, db, bus, models=MODELS, clock=clock)
        return BillingService(site, MODELS, db, bus, ops, instance=name, clock=clock)

    first = service("first")
    await first.start()
    job = first.batches.create(
        "topup",
        {"amount": "2.00"},
        {"buildings": ["A"]},
        reason="r",
        actor="a",
        at=NOW + dt.timedelta(hours=1),
    )
    await asyncio.sleep(0.3)
    await first.stop()
    assert _topups(db) == []
    clock.now = NOW + dt.timedelta(hours=2)
    a, b = service("a"), service("b")
    await a.start()
    await b.start()
    for _ in range(200):
        if a.batches.get(job.id).state == "DONE":
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    await a.stop()
    await b.stop()
    view = a.batches.get(job.id)
    assert (view.state, view.run_no, view.done) == ("DONE", 1, 3)
    assert [acct for acct, _ in _topups(db)] == ["A-101", "A-102", "A-201"]
    assert _count(db, t.batch_item) == 3
