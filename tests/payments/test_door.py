"""Money through the door on SQLite and PostgreSQL: a notice credits once whatever the
number of copies and whoever brings it (callback or active query); a mismatch is a
conflict and credits nothing; a late NOTPAY after PAID changes nothing; bad input is
refused naming the field. `ledger verify` after every test."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.ledger import RequestError
from openprepay.core.operations import Operations
from openprepay.core.payments import get_order
from openprepay.core.payments.states import Action, OrderState

from .double import DoubleProvider

ACTOR = "test:payer"


def balance(db: Database, account: str = "A-101") -> int:
    with db.read() as conn:
        return ledger.balances(conn, account).energy_fen


def topups(db: Database) -> int:
    with db.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(t.topup)).scalar_one()


def opened(ops: Operations, provider: DoubleProvider, amount_fen: int = 5000) -> str:
    order = ops.open_payment("A-101", amount_fen, "test", "native", actor=ACTOR)
    assert order.state is OrderState.CREATED and order.room == "A-101"
    assert len(order.out_trade_no) <= 32 and order.out_trade_no.isalnum()
    asyncio.run(provider.create(_request(order)))
    return order.out_trade_no


def _request(order: Any) -> Any:
    from openprepay.core.contracts import PaymentRequest

    return PaymentRequest(
        order.out_trade_no,
        order.amount_fen,
        order.currency,
        "test",
        order.expires_at,
        order.method,
        "http://127.0.0.1/pay/notify/test",
    )


@pytest.fixture(autouse=True)
def _verify_after(check: Any) -> Any:
    yield
    check()


def test_a_paid_notice_credits_through_the_top_up(ops: Operations, db: Database, provider) -> None:
    no = opened(ops, provider)
    notice = provider.pay(no)
    outcome = ops.apply_notice(notice, actor=ACTOR)
    assert outcome.state is OrderState.CREDITED and outcome.credited
    assert outcome.topup.reference == notice.transaction_id and outcome.topup.channel == "test"
    assert balance(db) == 5000
    with db.read() as conn:
        order = get_order(conn, no)
        assert order.state is OrderState.CREDITED and order.transaction_id == notice.transaction_id
        assert order.notices == 1 and order.last_notice["state"] == "PAID"
        assert order.paid_at is not None and order.credited_at is not None


def test_100_concurrent_copies_credit_once(
    db: Database, ops: Operations, provider, plugins
) -> None:
    """Four doors (four writers: real concurrent transactions on PostgreSQL, the writer
    lock on SQLite) and 100 threads bringing the same notification."""
    no = opened(ops, provider)
    notice = provider.pay(no)
    doors = [ops]
    for _ in range(3):
        other = Operations(ops.site, db, models=plugins.models)
        other.use_providers([provider])
        doors.append(other)
    start = threading.Barrier(100)
    outcomes: list[Any] = []
    errors: list[BaseException] = []

    def bring(i: int) -> None:
        start.wait()
        try:
            outcomes.append(doors[i % 4].apply_notice(notice, actor=f"test:{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bring, args=(i,)) for i in range(100)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for door in doors[1:]:
        door.writer.close()
    assert not errors, errors[:3]
    assert sum(o.credited for o in outcomes) == 1
    assert all(o.state is OrderState.CREDITED for o in outcomes)
    assert balance(db) == 5000 and topups(db) == 1
    with db.read() as conn:
        assert get_order(conn, no).notices == 100


def test_a_notification_racing_the_active_query_credits_once(
    ops: Operations, db: Database, provider
) -> None:
    no = opened(ops, provider)
    notice = provider.pay(no)
    answer = asyncio.run(provider.query(no))
    results: list[Any] = []
    barrier = threading.Barrier(2)

    def callback() -> None:
        barrier.wait()
        ops.store_notice(notice, actor="web:test")
        results.append(ops.apply_notice(notice, actor="web:test"))

    def query() -> None:
        barrier.wait()
        results.append(ops.apply_notice(answer, actor="payments:query", queried=True))

    threads = [threading.Thread(target=callback), threading.Thread(target=query)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(r.credited for r in results) == 1
    assert balance(db) == 5000 and topups(db) == 1


def test_a_mismatched_amount_is_a_conflict_and_credits_nothing(
    ops: Operations, db: Database, provider
) -> None:
    no = opened(ops, provider)
    notice = provider.pay(no, amount_fen=1)
    outcome = ops.apply_notice(notice, actor=ACTOR)
    assert outcome.state is OrderState.CONFLICT and outcome.action is Action.CONFLICT
    assert not outcome.credited and balance(db) == 0 and topups(db) == 0
    with db.read() as conn:
        assert "amount 1 fen, order 5000 fen" in get_order(conn, no).conflict
    # The right notice afterwards changes nothing either: a person decides.
    right = replace(notice, amount_fen=5000)
    assert ops.apply_notice(right, actor=ACTOR).state is OrderState.CONFLICT
    assert balance(db) == 0


@pytest.mark.parametrize(
    "field,value", [("merchant_id", "M2"), ("app_id", "A2"), ("currency", "USD")]
)
def test_a_foreign_merchant_app_or_currency_is_a_conflict(ops, db, provider, field, value) -> None:
    no = opened(ops, provider)
    notice = replace(provider.pay(no), **{field: value})
    assert ops.apply_notice(notice, actor=ACTOR).state is OrderState.CONFLICT
    assert balance(db) == 0


def test_a_late_notpay_after_paid_changes_nothing(ops: Operations, db: Database, provider) -> None:
    no = opened(ops, provider)
    unpaid = asyncio.run(provider.query(no))
    paid = provider.pay(no)
    ops.store_notice(paid, actor=ACTOR)
    assert ops.apply_notice(unpaid, actor=ACTOR).state is OrderState.PAID
    closed = replace(unpaid, state="CLOSED")
    assert ops.apply_notice(closed, actor=ACTOR).state is OrderState.PAID
    assert ops.apply_notice(paid, actor=ACTOR).state is OrderState.CREDITED
    for late in (unpaid, closed):
        assert ops.apply_notice(late, actor=ACTOR).state is OrderState.CREDITED
    assert balance(db) == 5000 and topups(db) == 1


def test_stored_then_credited_once(ops: Operations, db: Database, provider) -> None:
    """What a crash between storing and crediting leaves (PAID) is credited by
    credit_order, once."""
    no = opened(ops, provider)
    ops.store_notice(provider.pay(no), actor=ACTOR)
    assert balance(db) == 0
    assert ops.credit_order(no, actor=ACTOR).credited
    assert not ops.credit_order(no, actor=ACTOR).credited
    assert balance(db) == 5000


def test_close_and_a_payment_after_close(ops: Operations, db: Database, provider) -> None:
    no = opened(ops, provider)
    assert ops.close_payment(no, "expired", actor=ACTOR).state is OrderState.CLOSED
    with pytest.raises(RequestError) as refused:
        ops.close_payment(no, "again", actor=ACTOR)
    assert refused.value.field == "out_trade_no"
    late = provider.pay(no)
    assert ops.apply_notice(late, actor=ACTOR).state is OrderState.CONFLICT
    assert balance(db) == 0


def test_a_credit_the_ledger_refuses_is_a_conflict(ops: Operations, db: Database, provider) -> None:
    """Paid, then the account's hoarding limit reached by a cash top-up meanwhile."""
    with db.begin() as conn:
        conn.execute(
            t.account.update().where(t.account.c.id == "A-101").values(hoard_limit_fen=6000)
        )
    no = opened(ops, provider)
    ops.topup("A-101", 2000, "cash-1", actor=ACTOR)
    outcome = ops.apply_notice(provider.pay(no), actor=ACTOR)
    assert outcome.state is OrderState.CONFLICT and "hoarding limit" in outcome.reason
    assert balance(db) == 2000


BAD_OPEN = [
    ("below the minimum", ("A-101", 99, "test", "native"), "amount"),
    ("unknown channel", ("A-101", 5000, "paypal", "native"), "channel"),
    ("unknown method", ("A-101", 5000, "test", "card"), "method"),
    ("unknown account", ("B-999", 5000, "test", "native"), "account"),
    ("float amount", ("A-101", 50.5, "test", "native"), "amount"),
    ("too much", ("A-101", 10**12, "test", "native"), "amount"),
]


@pytest.mark.parametrize("args,field", [b[1:] for b in BAD_OPEN], ids=[b[0] for b in BAD_OPEN])
def test_bad_orders_are_refused_naming_the_field(
    ops: Operations, db: Database, args, field
) -> None:
    with pytest.raises(RequestError) as refused:
        ops.open_payment(*args, actor=ACTOR)
    assert refused.value.field == field, refused.value
    with db.read() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(t.payment_order)).scalar_one() == 0
        )


def test_an_unknown_order_is_refused(ops: Operations, provider) -> None:
    no = opened(ops, provider)
    notice = replace(provider.pay(no), out_trade_no="OPnope")
    with pytest.raises(RequestError) as refused:
        ops.apply_notice(notice, actor=ACTOR)
    assert refused.value.field == "out_trade_no"


def test_one_transaction_paying_two_orders_is_a_conflict(
    ops: Operations, db: Database, provider
) -> None:
    first, second = opened(ops, provider), opened(ops, provider)
    paid = provider.pay(first)
    assert ops.apply_notice(paid, actor=ACTOR).state is OrderState.CREDITED
    twice = replace(paid, out_trade_no=second)
    outcome = ops.apply_notice(twice, actor=ACTOR)
    assert outcome.state is OrderState.CONFLICT and "already paid order" in outcome.reason
    assert balance(db) == 5000 and topups(db) == 1


def test_mark_conflict_needs_a_reason_and_stops_crediting(
    ops: Operations, db: Database, provider
) -> None:
    no = opened(ops, provider)
    with pytest.raises(RequestError) as refused:
        ops.mark_conflict(no, " ", actor=ACTOR)
    assert refused.value.field == "reason"
    assert ops.mark_conflict(no, "tenant disputes", actor=ACTOR).conflict == "tenant disputes"
    assert ops.apply_notice(provider.pay(no), actor=ACTOR).state is OrderState.CONFLICT
    assert balance(db) == 0


def test_a_batch_of_notices_is_applied_each_as_if_alone(
    ops: Operations, db: Database, provider
) -> None:
    """The web service hands the callbacks of one turn of its event loop to the door
    together (`apply_notices`): each is answered as `apply_notice` would answer it, in its
    own part of the shared transaction, credited once whatever the copies in the batch."""
    first, second, cheap = opened(ops, provider), opened(ops, provider), opened(ops, provider)
    paid_first, paid_second = provider.pay(first), provider.pay(second)
    wrong = replace(provider.pay(cheap), amount_fen=1)
    unknown = replace(paid_first, out_trade_no="OPnope")
    batch = [paid_first, paid_second, paid_first, unknown, wrong]
    outcomes = ops.apply_notices(batch, actor=ACTOR)
    assert len(outcomes) == len(batch)
    a, b, copy, refused, conflict = outcomes
    assert a.state is OrderState.CREDITED and a.credited
    assert b.state is OrderState.CREDITED and b.credited
    assert copy.state is OrderState.CREDITED and not copy.credited
    assert isinstance(refused, RequestError) and refused.field == "out_trade_no"
    assert conflict.state is OrderState.CONFLICT and conflict.action is Action.CONFLICT
    assert balance(db) == 2 * 5000 and topups(db) == 2
    with db.read() as conn:
        assert get_order(conn, first).notices == 2
        assert get_order(conn, cheap).state is OrderState.CONFLICT
        notices = conn.execute(
            sa.select(sa.func.count())
            .select_from(t.audit_log)
            .where(t.audit_log.c.action == "payment_notice", t.audit_log.c.ok)
        ).scalar_one()
    assert notices == 4  # one audit row each, the unknown order refused without one
    assert ops.apply_notices([], actor=ACTOR) == []
