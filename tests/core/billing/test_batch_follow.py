"""Batch items follow their device commands to the end (issue 14 §3): an item that queued a
TRIP waits for it; once the meter confirmed it (or it failed) the item says so, with the
site's time, and the job's counts and progress count the final outcome — and `batch show`
reads as a clerk expects (names and rooms beside ids, site time, who created the job,
succeeded / failed / pending)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from openprepay.core.app.demo import anytime_policy
from openprepay.core.billing.batch import Batches
from openprepay.core.billing.batch.model import BATCH_MODEL
from openprepay.core.config.site import parse_site
from openprepay.core.db import schema as t
from openprepay.core.events import EventBus
from openprepay.core.model import Sample
from openprepay.core.operations import Operations
from openprepay.core.prepay import commands as cmds
from openprepay.core.prepay.failed_commands import retry_failed

from .conftest import MODELS, NOW, open_accounts, site_data

ROOMS = {"A-101": ("E-A-101",), "A-102": ("E-A-102",), "A-201": ("E-A-201",)}
CONFIRMED_AT = NOW + dt.timedelta(minutes=3, seconds=4)  # 09:03:04 in Shanghai


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _batches(db, clock, bus) -> Batches:
    data = site_data()
    data["prepay"] = {
        "policy": anytime_policy(),
        "engine": {"default_tariffs": {"electric": "flat", "water": "water"}},
    }
    site = parse_site(data)
    ops = Operations(site, db, bus, models=MODELS, clock=clock)
    return Batches(site, MODELS, db, ops, owner="i1", lease_s=30, clock=clock, publish=bus.publish)


def _execute(db, meter: str, *, ok: bool, at: dt.datetime, error: str = "") -> int:
    """What the executor does with the meter's command: claim, send, then confirm it by
    read-back or give up on it."""
    with db.begin() as conn:
        [command] = cmds.claim_due(conn, 1, owner="executor", meters=[meter], now=at)
        cmds.mark_sent(conn, command.id, owner="executor", now=at)
        if ok:
            cmds.mark_confirmed(conn, command.id, readback={"relay_closed": False}, now=at)
        else:
            cmds.mark_failed(conn, command.id, error, final=True, owner="executor", now=at)
    return command.id


def _disconnect(batches: Batches, meters: list[str]) -> int:
    job = batches.create(
        "disconnect",
        {"override": True},
        {"meters": meters},
        reason="unpaid service charge",
        actor="cli:alice",
    )
    [job_id] = batches.claim(job_id=job.id)
    batches.run(job_id)
    return job.id


def test_an_item_shows_its_command_confirmed_or_failed(sqlite_db, clock):
    db = sqlite_db
    open_accounts(db, parse_site(site_data()), ROOMS)
    bus = EventBus()
    progress: list[Sample] = []
    bus.subscribe(Sample, lambda s: progress.append(s) if s.model is BATCH_MODEL else None)
    batches = _batches(db, clock, bus)
    job_id = _disconnect(batches, ["E-A-101", "E-A-102"])
    queued = batches.items(job_id)
    assert [(i.state, i.result) for i in queued] == [
        ("WAITING", f"TRIP #{queued[0].command_ids[0]} queued"),
        ("WAITING", f"TRIP #{queued[1].command_ids[0]} queued"),
    ]
    job = batches.get(job_id)
    assert (job.state, job.done, job.failed, job.total) == ("DONE", 0, 0, 2)
    assert progress[-1].values["pending"] == 2

    first = _execute(db, "E-A-101", ok=True, at=CONFIRMED_AT)
    second = _execute(db, "E-A-102", ok=False, at=CONFIRMED_AT, error="no read-back after 3 tries")
    # `batch show` is right at once, before the service has looked ...
    shown = batches.items(job_id)
    assert [(i.state, i.result) for i in shown] == [
        ("DONE", f"TRIP #{first} confirmed 2025-02-02 09:03:04"),
        ("FAILED", f"TRIP #{second} failed: no read-back after 3 tries"),
    ]
    # ... and the service's next look records it: the job counts final outcomes.
    clock.now = CONFIRMED_AT
    batches.run_due()
    job = batches.get(job_id)
    assert (job.done, job.failed, job.total) == (1, 1, 2)
    assert progress[-1].source == f"batch-{job_id}"
    assert progress[-1].values == {
        "total": 2,
        "done": 1,
        "failed": 1,
        "pending": 0,
        "state": 2,
        "run_no": 1,
    }
    with db.read() as conn:
        stored = conn.execute(
            sa.select(t.batch_item.c.state, t.batch_item.c.result)
            .where(t.batch_item.c.job_id == job_id)
            .order_by(t.batch_item.c.seq)
        ).all()
    assert [tuple(r) for r in stored] == [(i.state, i.result) for i in shown]
    assert batches.follow() == []  # recorded once: nothing more to follow


def test_a_failed_command_sent_again_is_followed_to_its_retry(sqlite_db, clock):
    db = sqlite_db
    open_accounts(db, parse_site(site_data()), ROOMS)
    batches = _batches(db, clock, EventBus())
    job_id = _disconnect(batches, ["E-A-201"])
    failed = _execute(db, "E-A-201", ok=False, at=NOW, error="meter busy")
    with db.begin() as conn:  # the operator sends it again before the service looked
        _, again = retry_failed(conn, failed, "meter was busy", requested_by="cli:bob", now=NOW)
    assert batches.follow() == []  # still waiting: for the retry now
    [item] = batches.items(job_id)
    assert item.state == "WAITING"
    assert item.result == f"TRIP #{failed} failed: meter busy; retried as #{again.id}: " + (
        f"TRIP #{again.id} queued"
    )
    _execute(db, "E-A-201", ok=True, at=CONFIRMED_AT)
    assert batches.follow() == [job_id]
    [item] = batches.items(job_id)
    assert item.state == "DONE" and item.result.endswith(
        f"TRIP #{again.id} confirmed 2025-02-02 09:03:04"
    )
    assert batches.get(job_id).done == 1


def test_batch_show_reads_as_a_clerk_expects(cli, tmp_path):
    """Names and rooms beside ids, the site's time, who created it, the counts."""
    group, obj = cli
    site_file = tmp_path / "site.toml"
    site_file.write_text(_SITE.replace("{db}", str(tmp_path / "op.db")), encoding="utf-8")

    def run(*args: str) -> str:
        argv = [a if a != "SITE" else str(site_file) for a in args]
        result = CliRunner().invoke(group, argv, obj=obj, catch_exceptions=False)
        assert result.exit_code in (0, 1), result.output
        return result.output

    run("db", "upgrade", "SITE")
    run("account", "open", "SITE", "A-101", "--name", "Alice Wang", "--room", "A-101")
    run("account", "open", "SITE", "A-102", "--name", "Bob Li", "--room", "A-102")
    run("account", "close", "SITE", "A-102")
    dry = run(
        "batch", "create", "SITE", "topup", "--account", "A-101", "--account", "A-102",
        "--amount", "20.00", "--reason", "gift", "--dry-run",
    )  # fmt: skip
    assert "would fail: account: account 'A-102' cannot take this: it is closed" in dry
    assert "dry run: 1 of 2 item(s) would succeed" in dry
    run(
        "batch", "create", "SITE", "topup", "--account", "A-101", "--account", "A-102",
        "--amount", "20.00", "--reason", "gift",
    )  # fmt: skip
    shown = run("batch", "show", "SITE", "1")
    print(dry)
    print(shown)
    print(run("batch", "list", "SITE"))
    assert "batch job 1: topup, top-up 20.00 via cash; on accounts A-101, A-102" in shown
    assert "reason: gift" in shown
    assert "created by " in shown and "(times: Asia/Shanghai)" in shown
    assert "1 succeeded, 1 failed, 0 pending of 2" in shown
    assert "Alice Wang, room A-101" in shown and "Bob Li, room A-102" in shown
    assert "amount_fen" not in shown and "+00:00" not in shown


_SITE = """
[site]
id = "batch-show"
timezone = "Asia/Shanghai"

[links.gw]
type = "rtu_over_tcp"
host = "127.0.0.1"
port = 15996

[buildings.A]
floors = ["1"]

[rooms.A-101]
building = "A"
floor = "1"

[rooms.A-102]
building = "A"
floor = "1"

[tariffs.flat]
price = "0.5000"

[prepay.engine]
default_tariffs = { electric = "flat" }

[database]
url = "sqlite:///{db}"
"""
