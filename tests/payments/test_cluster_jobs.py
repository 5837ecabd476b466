"""[cluster]: the payment service's sweeps (active queries, closing expired orders) and the
daily reconciliation run on the jobs leader only; once the leader's lease is lost the next
leader does them, and each payment is credited once, each day reconciled once. Two services
on the real PostgreSQL (the door shared: the instances' own doors would write the same
rows); `ledger verify` after."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from datetime import time, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from openprepay.core import ledger
from openprepay.core.cluster.manager import JOBS_LEADER
from openprepay.core.config.site import load_site
from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.events import utcnow
from openprepay.core.operations import Operations
from openprepay.core.payments.service import PaymentService
from openprepay.core.payments.states import OrderState
from tests.conftest import until
from tests.core.cluster.conftest import expire, pg_url
from tests.core.cluster.instances import CLUSTER
from tests.core.cluster.relay import Relay
from tests.core.cluster.test_leader_jobs import Leadership

from .conftest import PAYMENTS, WEB, open_account, payment_site
from .double import DoubleProvider
from .test_service import _open, balance, state

__all__ = ["pg_url"]  # the fixture: a schema of its own on the real PostgreSQL


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
    ops: Operations, db: Database, provider: DoubleProvider, check: Any
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
    check()


def test_crediting_and_refunds_are_run_again_after_a_commit_lost_on_the_wire(
    pg_url: str, tmp_path: Path, plugins: Any, provider: DoubleProvider
) -> None:
    """The connection drops after COMMIT left (the server committed, the door never heard):
    a payment notice, a refund request (its number made up by the door) and a refund's
    closing are run again by the group commit and come back as stored — the payment
    credited once, the wallet debited and given back once."""
    url = make_url(pg_url)
    loop = asyncio.new_event_loop()
    relay = Relay((url.host or "127.0.0.1", url.port or 5432), "pg")
    port = loop.run_until_complete(relay.start())
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    db = Database(url.set(port=port).render_as_string(hide_password=False))
    try:
        db.upgrade()
        ops = Operations(
            load_site(payment_site(tmp_path, web=dict(WEB))), db, models=plugins.models
        )
        ops.use_providers([provider])
        open_account(ops, db)
        service = PaymentService(ops, {provider.channel: provider})
        order, _ = asyncio.run(
            service.start_payment(
                "A-101", 3000, "test", "native", actor="test:payer", description="x"
            )
        )
        notice = provider.pay(order.out_trade_no)

        relay.lose_next_commit = True
        ops.apply_notice(notice, actor="test:notify")
        assert (relay.commits_lost, ops.writer.rerun) == (1, 1)
        assert state(db, order.out_trade_no) is OrderState.CREDITED and balance(db) == 3000

        relay.lose_next_commit = True
        refund = ops.request_refund(order.out_trade_no, 1000, "moved out", actor="test:op")
        assert (relay.commits_lost, ops.writer.rerun) == (2, 2)
        assert refund.replayed  # the first run had stored it: the same number found it
        assert balance(db) == 2000

        relay.lose_next_commit = True
        closed = ops.refund_refused(refund.refund.out_refund_no, "refused", actor="test:op")
        assert (relay.commits_lost, ops.writer.rerun) == (3, 3)
        assert closed.replayed and balance(db) == 3000
        with db.read() as conn:
            assert ledger.verify(conn).ok
            topups = conn.execute(sa.select(sa.func.count()).select_from(t.topup)).scalar()
            refunds = conn.execute(
                sa.select(sa.func.count()).select_from(t.payment_refund)
            ).scalar()
        assert (topups, refunds) == (1, 1)
        ops.writer.close()
    finally:
        db.dispose()
        asyncio.run_coroutine_threadsafe(relay.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)


async def test_the_running_service_hands_the_leader_fence_to_every_job(
    running: Any, pg_url: str
) -> None:
    """With [cluster], the runtime gives the jobs leader's fence to the billing service
    (month-end, batch jobs), the payment service and the outbox tail."""
    r = await running(
        payments={**PAYMENTS, "test": {}},
        database={"url": pg_url},
        cluster={"instance_id": "solo", **CLUSTER},
    )
    runtime = r.runtime
    assert runtime.cluster is not None and runtime.payments is not None
    await until(lambda: runtime.cluster.leader_fence() is not None, 30)
    fence = runtime.cluster.leader_fence
    outbox = next(s for s in runtime.services if s.name == "event-outbox")
    assert runtime.billing.leader == fence
    assert runtime.payments.leader == fence and runtime.payments.leading()
    assert outbox.leader == fence
