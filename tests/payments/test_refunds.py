"""Refunds of online payments through the door, on SQLite and PostgreSQL: the wallet is
debited with the refund row in one transaction; the provider's word settles the ledger
refund (SUCCESS), gives the money back (CLOSED) or leaves it for a person (ABNORMAL);
terminal refunds never move; more than was paid, or than the wallet holds (unless forced),
is refused naming the field; the same refund number twice refunds once. `ledger verify`
after every test."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.events import PaymentDiscrepancy
from openprepay.core.ledger import RequestError
from openprepay.core.operations import Operations
from openprepay.core.payments import get_order
from openprepay.core.payments.refunds import RefundState, can_move
from openprepay.core.payments.states import OrderState

from .double import DoubleProvider
from .test_door import ACTOR, balance, opened

ADMIN = "test:admin"


@pytest.fixture(autouse=True)
def _verify_after(check: Any) -> Any:
    yield
    check()


def credited(ops: Operations, provider: DoubleProvider, amount_fen: int = 5000) -> str:
    no = opened(ops, provider, amount_fen)
    assert ops.apply_notice(provider.pay(no), actor=ACTOR).credited
    return no


def ledger_refund_state(db: Database, reference: str) -> str:
    with db.read() as conn:
        return ledger.refund_result(conn, reference, replayed=True).state


def refund_notice(provider: DoubleProvider, out_refund_no: str, state: str) -> Any:
    return provider.finish_refund(out_refund_no, state)


async def _send(provider: DoubleProvider, ops: Operations, refund: Any) -> Any:
    order = ops.payment_order(refund.out_trade_no)
    return await provider.refund(
        refund.out_trade_no, refund.out_refund_no, refund.amount_fen, order.amount_fen, "r"
    )


def sent(ops: Operations, provider: DoubleProvider, refund: Any) -> Any:
    import asyncio

    answer = asyncio.run(_send(provider, ops, refund))
    return ops.apply_refund_notice(answer, actor=ACTOR)


def test_the_state_machine_never_goes_back() -> None:
    assert can_move(RefundState.REQUESTED, RefundState.PROCESSING)
    assert can_move(RefundState.REQUESTED, RefundState.SUCCESS)
    assert can_move(RefundState.PROCESSING, RefundState.CLOSED)
    assert not can_move(RefundState.PROCESSING, RefundState.REQUESTED)
    for end in (RefundState.SUCCESS, RefundState.ABNORMAL, RefundState.CLOSED):
        assert not any(can_move(end, to) for to in RefundState)


def test_a_partial_refund_debits_then_settles(ops: Operations, db: Database, provider) -> None:
    no = credited(ops, provider)
    outcome = ops.request_refund(no, 2000, "moved out", actor=ADMIN, out_refund_no=no + "R1")
    refund = outcome.refund
    assert refund.state is RefundState.REQUESTED and outcome.balance_fen == 3000
    assert balance(db) == 3000 and ledger_refund_state(db, no + "R1") == "REQUESTED"
    # the same number again: nothing more
    again = ops.request_refund(no, 2000, "moved out", actor=ADMIN, out_refund_no=no + "R1")
    assert again.replayed and balance(db) == 3000
    # accepted, then paid back
    assert sent(ops, provider, refund).refund.state is RefundState.PROCESSING
    done = ops.apply_refund_notice(refund_notice(provider, no + "R1", "REFUNDED"), actor=ACTOR)
    assert done.refund.state is RefundState.SUCCESS and done.refund.finished_at is not None
    assert ledger_refund_state(db, no + "R1") == "SETTLED" and balance(db) == 3000
    with db.read() as conn:
        order = get_order(conn, no)
    assert order.state is OrderState.CREDITED and order.refunded_fen == 2000
    # a late failure changes nothing
    late = replace(provider.refunds[no + "R1"], state="REFUND_FAILED")
    kept = ops.apply_refund_notice(late, actor=ACTOR)
    assert kept.replayed and kept.refund.state is RefundState.SUCCESS and balance(db) == 3000


def test_a_full_refund_makes_the_order_refunded(ops: Operations, db: Database, provider) -> None:
    no = credited(ops, provider)
    refund = ops.request_refund(no, 5000, "wrong room", actor=ADMIN).refund
    assert refund.out_refund_no.startswith(no) and len(refund.out_refund_no) <= 64
    sent(ops, provider, refund)
    ops.apply_refund_notice(refund_notice(provider, refund.out_refund_no, "REFUNDED"), actor=ACTOR)
    with db.read() as conn:
        order = get_order(conn, no)
    assert order.state is OrderState.REFUNDED and order.refunded_fen == 5000
    assert balance(db) == 0
    with pytest.raises(RequestError) as refused:
        ops.request_refund(no, 1, "again", actor=ADMIN)
    assert refused.value.field == "out_trade_no" and "REFUNDED" in str(refused.value)
    # a late PAID notice of the order changes nothing either
    assert ops.apply_notice(provider.orders[no], actor=ACTOR).state is OrderState.REFUNDED


def test_more_than_paid_less_earlier_refunds_is_refused(
    ops: Operations, db: Database, provider
) -> None:
    no = credited(ops, provider)
    ops.topup("A-101", 10000, "cash-1", actor=ADMIN)
    ops.request_refund(no, 3000, "part", actor=ADMIN)
    with pytest.raises(RequestError) as refused:
        ops.request_refund(no, 2001, "rest and more", actor=ADMIN)
    assert refused.value.field == "amount" and "20.00" in str(refused.value)
    assert balance(db) == 12000
    with db.read() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(t.payment_refund)).scalar()
    assert count == 1


def test_a_wallet_short_of_the_money_is_refused_unless_forced(
    ops: Operations, db: Database, provider
) -> None:
    no = credited(ops, provider)
    with db.begin() as conn:  # the tenant used 40.00 of it
        ledger.post_usage(conn, "A-101", "E-101", 4000, "2026-12-01T10:00")
    assert balance(db) == 1000
    with pytest.raises(RequestError) as refused:
        ops.request_refund(no, 5000, "moved out", actor=ADMIN)
    assert refused.value.field == "amount" and "--force" in str(refused.value)
    assert "10.00" in str(refused.value) and balance(db) == 1000
    forced = ops.request_refund(no, 5000, "moved out", actor=ADMIN, force=True)
    assert forced.refund.forced and balance(db) == -4000


def test_a_closed_refund_gives_the_money_back(ops: Operations, db: Database, provider) -> None:
    no = credited(ops, provider)
    refund = ops.request_refund(no, 1500, "r", actor=ADMIN).refund
    sent(ops, provider, refund)
    assert balance(db) == 3500
    closed = ops.apply_refund_notice(
        refund_notice(provider, refund.out_refund_no, "REFUND_FAILED"), actor=ACTOR
    )
    assert closed.refund.state is RefundState.CLOSED and balance(db) == 5000
    assert ledger_refund_state(db, refund.out_refund_no) == "FAILED"
    # closed refunds do not count against the order: all of it can be refunded now
    ops.request_refund(no, 5000, "all", actor=ADMIN)
    assert balance(db) == 0


def test_a_final_refusal_closes_it(ops: Operations, db: Database, provider) -> None:
    no = credited(ops, provider)
    refund = ops.request_refund(no, 1500, "r", actor=ADMIN).refund
    out = ops.refund_refused(refund.out_refund_no, "NOT_ENOUGH: merchant balance", actor=ACTOR)
    assert out.refund.state is RefundState.CLOSED and balance(db) == 5000
    assert "merchant balance" in out.refund.failure
    assert ops.refund_refused(refund.out_refund_no, "again", actor=ACTOR).replayed


def test_abnormal_keeps_the_money_out_and_is_reported(
    ops: Operations, db: Database, provider
) -> None:
    seen: list[Any] = []
    ops.bus.subscribe(PaymentDiscrepancy, seen.append)
    no = credited(ops, provider)
    refund = ops.request_refund(no, 1500, "r", actor=ADMIN).refund
    sent(ops, provider, refund)
    out = ops.apply_refund_notice(
        refund_notice(provider, refund.out_refund_no, "REFUND_ABNORMAL"), actor=ACTOR
    )
    assert out.refund.state is RefundState.ABNORMAL and balance(db) == 3500
    assert ledger_refund_state(db, refund.out_refund_no) == "REQUESTED"
    found = [e for e in seen if isinstance(e, PaymentDiscrepancy)]
    assert found and found[0].kind == "refund_abnormal" and found[0].out_trade_no == no


def test_a_notice_that_does_not_fit_changes_nothing(
    ops: Operations, db: Database, provider
) -> None:
    no = credited(ops, provider)
    refund = ops.request_refund(no, 1500, "r", actor=ADMIN).refund
    answer = sent(ops, provider, refund)
    wrong = replace(provider.finish_refund(refund.out_refund_no), refund_fen=1600)
    out = ops.apply_refund_notice(wrong, actor=ACTOR)
    assert out.refund.state is RefundState.PROCESSING and "1600" in out.reason
    assert answer.refund.state is RefundState.PROCESSING and balance(db) == 3500


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("nope", 100, "r"), "out_trade_no"),
        ((None, 0, "r"), "amount"),
        ((None, 1.5, "r"), "amount"),
        ((None, 100, ""), "reason"),
    ],
)
def test_bad_input_names_the_field(
    ops: Operations, db: Database, provider, args: tuple[Any, ...], field: str
) -> None:
    no = credited(ops, provider)
    call = (args[0] or no, *args[1:])
    with pytest.raises(RequestError) as refused:
        ops.request_refund(*call, actor=ADMIN)
    assert refused.value.field == field
    with pytest.raises(RequestError) as refused:
        ops.request_refund(no, 100, "r", actor=ADMIN, out_refund_no="bad number!")
    assert refused.value.field == "out_refund_no"
    assert balance(db) == 5000


def test_an_unpaid_order_is_not_refunded(ops: Operations, db: Database, provider) -> None:
    no = opened(ops, provider)
    with pytest.raises(RequestError) as refused:
        ops.request_refund(no, 100, "r", actor=ADMIN)
    assert refused.value.field == "out_trade_no" and "CREATED" in str(refused.value)


def _together(n: int, call: Any) -> tuple[list[Any], list[BaseException]]:
    import threading

    start = threading.Barrier(n)
    outcomes: list[Any] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            outcomes.append(call(i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return outcomes, errors


def test_concurrent_copies_of_a_request_and_of_its_notice_move_money_once(
    ops: Operations, db: Database, provider, plugins: Any
) -> None:
    """Four doors (real concurrent transactions on PostgreSQL) and 40 threads: the same
    refund number requested 40 times debits once; its SUCCESS notice 40 times settles once."""
    no = credited(ops, provider)
    doors = [ops] + [Operations(ops.site, db, models=plugins.models) for _ in range(3)]
    for door in doors[1:]:
        door.use_providers([provider])
    number = no + "Rc"
    outcomes, errors = _together(
        40,
        lambda i: doors[i % 4].request_refund(
            no, 1700, "moved out", actor=f"test:{i}", out_refund_no=number
        ),
    )
    assert not errors, errors[:3]
    assert sum(not o.replayed for o in outcomes) == 1 and balance(db) == 3300
    refund = ops.payment_refund(number)
    sent(ops, provider, refund)
    done = provider.finish_refund(number)
    outcomes, errors = _together(
        40, lambda i: doors[i % 4].apply_refund_notice(done, actor=f"test:{i}")
    )
    for door in doors[1:]:
        door.writer.close()
    assert not errors, errors[:3]
    assert sum(not o.replayed for o in outcomes) == 1
    assert all(o.refund.state is RefundState.SUCCESS for o in outcomes)
    assert ledger_refund_state(db, number) == "SETTLED" and balance(db) == 3300
    with db.read() as conn:
        assert get_order(conn, no).refunded_fen == 1700


def test_ledger_verify_sees_a_refund_out_of_step(ops: Operations, db: Database, provider) -> None:
    no = credited(ops, provider)
    refund = ops.request_refund(no, 1000, "r", actor=ADMIN).refund
    with db.begin() as conn:  # as a bad hand in the database would
        conn.execute(
            t.payment_refund.update()
            .where(t.payment_refund.c.id == refund.id)
            .values(state="SUCCESS")
        )
    with db.read() as conn:
        report = ledger.verify(conn)
    names = {b.invariant for b in report.breaks}
    assert "payment refunds match their ledger refunds" in names
    assert "payment orders' refunded amounts match their SUCCESS refunds" in names
    with db.begin() as conn:  # put back, for the check after the test
        conn.execute(
            t.payment_refund.update()
            .where(t.payment_refund.c.id == refund.id)
            .values(state="REQUESTED")
        )
