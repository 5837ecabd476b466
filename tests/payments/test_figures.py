"""Payment figures and conflict events on SQLite and PostgreSQL: orders by state, credited
today by channel, the last notification, the reconciliation seam; a mismatch raises one
`PaymentConflict` after commit (and through the outbox to other processes)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.events import (
    Event,
    PaymentConflict,
    event_from_record,
    event_record,
)
from openprepay.core.operations import Operations
from openprepay.core.payments.figures import RECONCILIATION_TABLE, latest_reconciliation
from openprepay.core.payments.states import OrderState

from .test_door import ACTOR, opened


@pytest.fixture(autouse=True)
def _verify_after(check: Any) -> Any:
    yield
    check()


def _events(ops: Operations) -> list[Event]:
    seen: list[Event] = []
    ops.bus.subscribe(Event, seen.append)
    return seen


def test_figures_count_orders_by_state_and_today_by_channel(
    ops: Operations, db: Database, provider
) -> None:
    empty = ops.payment_figures()
    assert empty.by_state == {s.value: 0 for s in OrderState}
    assert list(empty.channels) == ["test"] and empty.credited_today_fen == 0
    assert empty.last_notification_at is None and empty.reconciliation is None

    paid = [opened(ops, provider, 1000), opened(ops, provider, 2500)]
    for no in paid:
        ops.store_notice(provider.pay(no), actor="web:test")
        ops.credit_order(no, actor="web:test")
    left_open = opened(ops, provider, 700)
    conflict = opened(ops, provider, 900)
    ops.apply_notice(provider.pay(conflict, amount_fen=1), actor="web:test")
    queried = opened(ops, provider, 300)
    ops.apply_notice(provider.pay(queried), actor="payments:service", queried=True)

    figures = ops.payment_figures()
    assert figures.by_state["CREDITED"] == 3
    assert figures.by_state["CREATED"] == 1 and figures.by_state["CONFLICT"] == 1
    assert figures.conflicts == 1
    today = figures.channels["test"]
    assert (today.credited_today, today.credited_today_fen) == (3, 3800)
    assert figures.credited_today_fen == 3800
    assert figures.last_notification_at is not None
    assert abs(figures.last_notification_at - datetime.now(UTC)) < timedelta(minutes=5)
    assert left_open not in paid

    # Tomorrow, nothing is "today" any more; the counts by state stay.
    later = ops.payment_figures(now=datetime.now(UTC) + timedelta(days=2))
    assert later.channels["test"].credited_today == 0 and later.by_state["CREDITED"] == 3


def test_a_mismatch_raises_one_payment_conflict(ops: Operations, db: Database, provider) -> None:
    seen = _events(ops)
    no = opened(ops, provider)
    notice = provider.pay(no, amount_fen=1)
    assert ops.apply_notice(notice, actor="web:test").state is OrderState.CONFLICT
    # Again, and the right amount: still in conflict, no second event.
    ops.apply_notice(replace(notice, amount_fen=5000), actor="web:test")
    conflicts = [e for e in seen if isinstance(e, PaymentConflict)]
    assert len(conflicts) == 1
    event = conflicts[0]
    assert (event.out_trade_no, event.channel, event.account_id) == (no, "test", "A-101")
    assert event.amount_fen == 5000 and "amount 1 fen" in event.reason
    assert event.actor == "web:test"
    # It travels through the outbox like every event.
    assert event_from_record(event_record(event)) == event


def test_a_refused_credit_and_an_operator_raise_payment_conflict(
    ops: Operations, db: Database, provider
) -> None:
    seen = _events(ops)
    first = opened(ops, provider)
    ops.mark_conflict(first, "tenant disputes", actor=ACTOR)
    ops.mark_conflict(first, "tenant disputes, still", actor=ACTOR)
    with db.begin() as conn:
        conn.execute(
            t.account.update().where(t.account.c.id == "A-101").values(hoard_limit_fen=6000)
        )
    second = opened(ops, provider)
    ops.store_notice(provider.pay(second), actor="web:test")
    ops.topup("A-101", 2000, "cash-1", actor=ACTOR)
    assert ops.credit_order(second, actor="web:test").state is OrderState.CONFLICT
    reasons = [e.reason for e in seen if isinstance(e, PaymentConflict)]
    assert reasons[0] == "tenant disputes" and len(reasons) == 2
    assert "top-up was refused" in reasons[1]


def test_the_reconciliation_seam_reads_the_newest_row(db: Database) -> None:
    with db.read() as conn:
        assert latest_reconciliation(conn) is None  # no table on this branch yet
    meta = sa.MetaData()
    table = sa.Table(
        RECONCILIATION_TABLE,
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("day", sa.String(10)),
        sa.Column("channel", sa.String(32)),
        sa.Column("state", sa.String(16)),
        sa.Column("differences", sa.JSON),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    with db.begin() as conn:
        meta.create_all(conn)
    try:
        with db.read() as conn:
            assert latest_reconciliation(conn) is None  # no row yet
        at = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
        with db.begin() as conn:
            conn.execute(
                table.insert(),
                [
                    {"day": "2026-11-30", "channel": "wechat", "state": "OK",
                     "differences": [], "finished_at": at - timedelta(days=1)},
                    {"day": "2026-12-01", "channel": "wechat", "state": "DIFFERENCES",
                     "differences": [{"out_trade_no": "X"}, {"out_trade_no": "Y"}],
                     "finished_at": at},
                ],
            )  # fmt: skip
        with db.read() as conn:
            latest = latest_reconciliation(conn)
        assert latest is not None
        assert latest.at == at and latest.result == "DIFFERENCES" and latest.differences == 2
    finally:
        with db.begin() as conn:
            meta.drop_all(conn)
