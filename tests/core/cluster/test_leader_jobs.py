"""The other jobs that must run once, under the jobs leader's lease ([cluster]): scheduled
batch jobs, the payment service's sweep and reconciliation, outbox pruning. Two instances on
the real PostgreSQL: only the leader runs a job; once its lease is lost the other, now
leader, runs it, and the work is done once in effect."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from openprepay.core.billing.service import BillingService
from openprepay.core.cluster import lease
from openprepay.core.cluster.lease import Fence
from openprepay.core.cluster.manager import JOBS_LEADER
from openprepay.core.config.site import parse_site
from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.events import EventBus
from openprepay.core.operations import Operations
from openprepay.core.operations.outbox import OutboxTail
from tests.core.billing.conftest import MODELS, NOW, open_accounts, site_data

from .conftest import expire

ROOMS = {"A-101": ("E-A-101",), "A-102": ("E-A-102",), "A-201": ("E-A-201",)}


class Clock:
    def __init__(self, now: dt.datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


class Leadership:
    """What an instance's `LinkLeases.leader_fence` answers: its fence while it believes
    it holds the jobs lease (a paused instance still believes so: the database fences it)."""

    def __init__(self, db: Database, instance: str) -> None:
        self.db = db
        self.instance = instance
        self.fence: Fence | None = None

    def take(self) -> None:
        with self.db.begin() as conn:
            lease.ensure(conn, [JOBS_LEADER])
            got = lease.acquire(conn, JOBS_LEADER, self.instance, 30)
        assert got is not None, f"{self.instance} did not become leader"
        self.fence = Fence(JOBS_LEADER, self.instance, got.epoch)

    def __call__(self) -> Fence | None:
        return self.fence


def _topups(db: Database) -> list[str]:
    with db.read() as conn:
        return sorted(r.account_id for r in conn.execute(sa.select(t.topup.c.account_id)))


def _billing(db: Database, clock: Clock, name: str) -> tuple[BillingService, Leadership]:
    data = site_data()
    data["billing"] = {"batch_poll_s": 0.05, "month_end_poll_s": 3600, "batch_lease_s": 30}
    site = parse_site(data)
    bus = EventBus()
    ops = Operations(site, db, bus, models=MODELS, clock=clock)
    service = BillingService(site, MODELS, db, bus, ops, instance=name, clock=clock)
    leadership = Leadership(db, name)
    service.leader = leadership
    return service, leadership


def test_a_scheduled_batch_runs_on_the_leader_and_is_resumed_by_the_next(pg: Database) -> None:
    clock = Clock()
    data = site_data()
    open_accounts(pg, parse_site(data), ROOMS)
    a, lead_a = _billing(pg, clock, "a")
    b, lead_b = _billing(pg, clock, "b")
    lead_a.take()
    job = a.batches.create(
        "topup",
        {"amount": "2.00"},
        {"site": True},
        reason="rent subsidy",
        actor="op",
        at=NOW + dt.timedelta(hours=1),
    )
    clock.now = NOW + dt.timedelta(hours=2)
    # Not the leader: b runs nothing, even with the job due.
    assert b.run_batches() == []
    assert b.batches.get(job.id).state == "SCHEDULED"
    # a, the leader, carries out one item, then is paused past its lease: b takes over.
    stops = iter([False, True])
    [claimed] = a.batches.claim()
    a.batches.run(claimed, stop=lambda: next(stops))
    assert _topups(pg) == ["A-101"]
    expire(pg, JOBS_LEADER)
    lead_b.take()
    # a wakes up still believing it leads: the database refuses its renewals and claims.
    assert a.batches.run(claimed).state == "RUNNING"
    assert a.run_batches() == []
    assert _topups(pg) == ["A-101"]
    # b resumes the job once a's claim on it passed, at the first item not done.
    clock.now += dt.timedelta(seconds=31)
    [view] = b.run_batches()
    assert (view.state, view.done) == ("DONE", 3)
    assert _topups(pg) == ["A-101", "A-102", "A-201"]
    assert a.run_batches() == [] and b.run_batches() == []
    assert _topups(pg) == ["A-101", "A-102", "A-201"]


def test_only_the_leader_prunes_the_outbox(pg: Database) -> None:
    """Every instance reads the outbox; the leader alone deletes what is older than
    `keep_s` (the others had that long to read it), and after a failover the next one."""
    clock = Clock(NOW + dt.timedelta(days=2))
    with pg.begin() as conn:
        conn.execute(
            t.event_outbox.insert(),
            [
                {"origin": "x", "created_at": NOW, "payload": {}},
                {"origin": "x", "created_at": NOW + dt.timedelta(days=1, hours=12), "payload": {}},
            ],
        )

    def tail(name: str) -> tuple[OutboxTail, Leadership]:
        outbox = OutboxTail(pg, name, lambda effects, at: None, keep_s=86400.0, clock=clock)
        leadership = Leadership(pg, name)
        outbox.leader = leadership
        return outbox, leadership

    (a, lead_a), (b, lead_b) = tail("a"), tail("b")
    lead_a.take()
    assert b.prune() is None
    assert a.prune() == 1  # the entry older than a day
    clock.now += dt.timedelta(days=1)
    expire(pg, JOBS_LEADER)
    lead_a.fence = None  # a's local deadline passed
    lead_b.take()
    assert a.prune() is None
    assert b.prune() == 1
    with pg.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.event_outbox)).scalar() == 0
