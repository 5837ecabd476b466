"""[cluster]: the payment service's sweeps (active queries, closing expired orders) and the
daily reconciliation run on the jobs leader only; once the leader's lease is lost the next
leader does them, and each payment is credited once, each day reconciled once. Two services
on the real PostgreSQL (the door shared: the instances' own doors would write the same
rows); `ledger verify` after."""

from __future__ import annotations

import dataclasses
from datetime import time, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from openprepay.core.cluster.manager import JOBS_LEADER
from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.events import utcnow
from openprepay.core.operations import Operations
from openprepay.core.payments.service import PaymentService
from openprepay.core.payments.states import OrderState
from tests.core.cluster.conftest import expire
from tests.core.cluster.test_leader_jobs import Leadership

from .double import DoubleProvider
from .test_service import _open, balance, state


@pytest.fixture(autouse=True)
def _verify_after(check: Any) -> Any:
    yield
    check()


def _service(
    ops: Operations, provider: DoubleProvider, later: timedelta, leader: Leadership
) -> PaymentService:
    service = PaymentService(ops, {provider.channel: provider}, clock=lambda: utcnow() + later)
    # Reconciliation due at any hour of the day (the test does not depend on the clock).
    service.settings = dataclasses.replace(service.settings, reconcile_at=time(0, 0))
    service.leader = leader
    return service


def _reconciled(db: Database) -> int:
    with db.read() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(t.payment_reconciliation)
        ).scalar_one()


async def test_only_the_leader_sweeps_and_reconciles_and_the_next_leader_takes_over(
    ops: Operations, db: Database, provider: DoubleProvider
) -> None:
    if db.engine.dialect.name != "postgresql":
        pytest.skip("leases need the PostgreSQL clock and row locks")
    lead_a, lead_b = Leadership(db, "a"), Leadership(db, "b")
    lead_a.take()
    minute = timedelta(seconds=61)
    a = _service(ops, provider, minute, lead_a)
    b = _service(ops, provider, minute, lead_b)
    first = await _open(ops, provider, _service(ops, provider, timedelta(0), lead_a))
    provider.pay(first)  # ...and the notification is lost: only a query finds it
    assert await b.tick() is False  # not the leader: asks nothing, reconciles nothing
    assert provider.queries == 0 and state(db, first) is OrderState.CREATED
    assert _reconciled(db) == 0
    assert await a.tick() is True
    assert provider.queries == 1 and state(db, first) is OrderState.CREDITED
    assert (a.counters.reconciliations, _reconciled(db)) == (1, 1)
    # a loses the lease (its local deadline passed: its fence is gone); b becomes leader.
    second = await _open(ops, provider, _service(ops, provider, timedelta(0), lead_a))
    provider.pay(second)
    expire(db, JOBS_LEADER)
    lead_a.fence = None
    lead_b.take()
    assert await a.tick() is False
    assert state(db, second) is OrderState.CREATED
    assert await b.tick() is True
    assert state(db, second) is OrderState.CREDITED
    # The day a reconciled is not reconciled again; each payment credited once.
    assert (b.counters.reconciliations, _reconciled(db)) == (0, 1)
    assert await b.tick() is True
    assert provider.queries == 2 and balance(db) == 6000
