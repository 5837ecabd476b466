"""A batch dry run tells the truth: on a site where the real run fails some items — a
meter not in arrears, a protected account, a closed or pre-registered account, a hoarding
limit, a tariff the account cannot take, the mass-disconnect rate limit — the dry run
says so item by item, with the real run's reason, and writes nothing (issue 14 §3)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from openprepay.core.app.demo import anytime_policy
from openprepay.core.billing.batch import Batches
from openprepay.core.config.site import parse_site
from openprepay.core.db import schema as t
from openprepay.core.events import EventBus
from openprepay.core.ledger import RequestError
from openprepay.core.operations import NewAccount, Operations

from .conftest import MODELS, NOW, open_accounts, site_data

ROOMS = {
    "A-101": ("E-A-101", "W-A-101"),
    "A-102": ("E-A-102",),
    "A-201": ("E-A-201",),
    "B-101": ("E-B-101",),
}


def _batches(db, *, max_trips: int = 100) -> Batches:
    data = site_data()
    data["prepay"] = {
        "policy": {**anytime_policy(), "max_trips_per_minute": max_trips},
        "engine": {"default_tariffs": {"electric": "flat", "water": "water"}},
    }
    site = parse_site(data)
    ops = Operations(site, db, EventBus(), models=MODELS, clock=lambda: NOW)
    return Batches(site, MODELS, db, ops, owner="i1", lease_s=30, clock=lambda: NOW)


def _written(db) -> dict[str, int]:
    tables = (t.batch_job, t.batch_item, t.journal, t.meter_command, t.audit_log, t.account)
    with db.read() as conn:
        return {
            tbl.name: conn.execute(sa.select(sa.func.count()).select_from(tbl)).scalar()
            for tbl in tables
        }


def _agree(db, batches: Batches, action: str, params: dict, selection: dict) -> list:
    """Dry run, then the real run of the same job: the same items succeed and fail, and a
    failing item's dry run gives the real run's reason. Returns the dry run."""
    before = _written(db)
    plan = batches.plan(action, params, selection, reason="month-end round", actor="cli:alice")
    assert _written(db) == before  # the dry run wrote nothing
    job = batches.create(action, params, selection, reason="month-end round", actor="cli:alice")
    [job_id] = batches.claim(job_id=job.id)
    batches.run(job_id)
    items = batches.items(job.id)
    assert [(p.target, p.ok) for p in plan] == [(i.target, i.state != "FAILED") for i in items]
    for line, item in zip(plan, items, strict=True):
        if not line.ok:
            assert line.text == f"would fail: {item.result}"
    return plan


def _overdraft(db, account: str) -> None:
    """The account ran out: fee control put it in OVERDRAFT (its meters may be cut)."""
    with db.begin() as conn:
        conn.execute(
            t.account.update().where(t.account.c.id == account).values(fee_state="OVERDRAFT")
        )


def test_disconnect_dry_run_meets_the_policy_gate_like_the_real_run(db):
    """The office's month: "3 of 3 would succeed", then all three failed."""
    open_accounts(db, parse_site(site_data()), ROOMS)
    batches = _batches(db)
    _overdraft(db, "A-101")
    batches.ops.protect("A-201", True, actor="cli:alice")
    _overdraft(db, "A-201")
    plan = _agree(db, batches, "disconnect", {"kind": "electric"}, {"buildings": ["A"]})
    assert [(p.target, p.ok) for p in plan] == [
        ("E-A-101", True),
        ("E-A-102", False),
        ("E-A-201", False),
    ]
    assert plan[0].text.startswith("TRIP for E-A-101")
    assert "energy wallet not in arrears" in plan[1].text
    assert "protected supply (保电)" in plan[2].text


def test_the_rate_limit_defers_the_same_items_in_the_dry_run(sqlite_db):
    db = sqlite_db
    open_accounts(db, parse_site(site_data()), ROOMS)
    batches = _batches(db, max_trips=2)
    params = {"kind": "electric", "override": True}
    plan = _agree(db, batches, "disconnect", params, {"buildings": ["A"]})
    with db.read() as conn:
        trips = conn.execute(
            sa.select(t.meter_command.c.meter_id, t.meter_command.c.next_attempt_at).order_by(
                t.meter_command.c.id
            )
        ).all()
    deferred = [m for m, at in trips if at > NOW]
    assert deferred == ["E-A-201"]
    local = (NOW + dt.timedelta(minutes=1)).astimezone(batches.site.info.tz)
    assert [p.target for p in plan if " at " in p.text] == ["E-A-201"]
    assert plan[0].text == "TRIP for E-A-101 (manual override by cli:alice: month-end round)"
    assert f"at {local:%Y-%m-%d %H:%M} (rate limit" in plan[2].text


def test_account_actions_dry_run_agrees_with_the_real_run(db):
    open_accounts(db, parse_site(site_data()), ROOMS)
    batches = _batches(db)
    ops = batches.ops
    ops.close_account("B-101", actor="cli:alice")
    ops.open_account(NewAccount("C-1", "Pre-registered shop", preregister=True), actor="cli:alice")
    with db.begin() as conn:  # A-102 near its hoarding limit
        conn.execute(
            t.account.update().where(t.account.c.id == "A-102").values(hoard_limit_fen=3000)
        )
    accounts = {"accounts": ["A-101", "A-102", "B-101", "C-1"]}
    plan = _agree(db, batches, "topup", {"amount": "50.00"}, accounts)
    assert [p.ok for p in plan] == [True, False, False, False]
    assert plan[0].text == "top-up 50.00 → balance 50.00"
    assert "it is closed" in plan[2].text and "pre-registered" in plan[3].text
    # A pre-registered account may take a tariff, a closed one may not; a water tariff
    # needs a water meter (A-101 has one, A-102 only an electric one; C-1 has none yet).
    plan = _agree(db, batches, "set_tariff", {"tariff": "water"}, accounts)
    assert [p.ok for p in plan] == [True, False, False, True]
    assert "has no water meter" in plan[1].text
    plan = _agree(db, batches, "set_tariff", {"tariff": "flat"}, accounts)
    assert [p.ok for p in plan] == [True, True, False, True]
    plan = _agree(db, batches, "set_thresholds", {"alarm1": "5.00", "alarm2": "10.00"}, accounts)
    assert not any(p.ok for p in plan)  # alarm 1 below alarm 2: refused for everyone
    plan = _agree(db, batches, "set_thresholds", {"alarm1": "20.00", "alarm2": "5.00"}, accounts)
    assert [p.ok for p in plan] == [True, True, False, True]


def test_reconnect_and_meter_parameters_dry_run_agree(sqlite_db):
    db = sqlite_db
    open_accounts(db, parse_site(site_data()), ROOMS)
    batches = _batches(db)
    plan = _agree(db, batches, "reconnect", {}, {"rooms": ["A-101"]})
    assert [p.text for p in plan] == ["CLOSE for E-A-101", "VALVE_OPEN for W-A-101"]
    prices = {"sharp": "0.72", "peak": "0.60", "flat": "0.50", "valley": "0.20"}
    plan = _agree(db, batches, "set_price", prices, {"floors": ["A:1"]})
    assert all(p.ok for p in plan)
    # A reason the door refuses (too long once the item's tag is added) fails both runs.
    long = "x" * 395
    plan = batches.plan("reconnect", {}, {"meters": ["E-A-102"]}, reason=long)
    job = batches.create("reconnect", {}, {"meters": ["E-A-102"]}, reason=long, actor="a")
    [job_id] = batches.claim(job_id=job.id)
    batches.run(job_id)
    [item] = batches.items(job.id)
    assert (plan[0].ok, item.state) == (False, "FAILED")
    assert plan[0].text == f"would fail: {item.result}"


def test_an_unknown_meter_is_refused_alike_by_the_dry_run_and_the_job(sqlite_db):
    db = sqlite_db
    open_accounts(db, parse_site(site_data()), ROOMS)
    batches = _batches(db)
    before = _written(db)
    selection = {"meters": ["E-A-101", "E-X-999"]}
    with pytest.raises(RequestError, match="meter: unknown meter 'E-X-999'") as dry:
        batches.plan("disconnect", {"override": True}, selection, reason="r")
    with pytest.raises(RequestError) as real:
        batches.create("disconnect", {"override": True}, selection, reason="r", actor="a")
    assert str(dry.value) == str(real.value)
    assert _written(db) == before
