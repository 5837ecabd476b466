"""Refunds (domain.md §5.3) on SQLite and PostgreSQL: at most the energy wallet and the
unrefunded top-ups of the last 365 days, allocated newest first; paid out per channel;
a failure reverses the request; the same refund number refunds once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from openprepay.core import ledger
from openprepay.core.config.site import ControlMode
from openprepay.core.ledger import IdempotencyConflict, Posting, RequestError
from openprepay.core.model import MeterKind
from openprepay.core.prepay import accounts as acc
from openprepay.core.prepay.local_money import LOCAL_MONEY

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_refund_request_then_settle_moves_money_per_channel(db, account, check):
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 3000, "wx-1", channel="wechat", now=NOW - timedelta(days=3))
        ledger.topup(conn, "A-101", 2000, "ali-1", channel="alipay", now=NOW - timedelta(days=2))
        r = ledger.refund(conn, "A-101", 4000, "rf-1", now=NOW)
    assert (r.state, r.balance_fen) == ("REQUESTED", 1000)
    # Newest first: all of the Alipay top-up, then 20.00 of the WeChat one.
    assert [(a.topup_reference, a.channel, a.amount_fen) for a in r.allocations] == [
        ("ali-1", "alipay", 2000),
        ("wx-1", "wechat", 2000),
    ]
    check()
    with db.begin() as conn:
        settled = ledger.settle_refund(conn, "rf-1", now=NOW)
        again = ledger.settle_refund(conn, "rf-1", now=NOW)
        journal = ledger.load_journal(conn, "refund_settle:rf-1")
    assert settled.state == "SETTLED" and again.replayed
    assert set(journal.postings) == {
        Posting("liab:refund_payable", 4000),
        Posting("asset:psp_clearing:alipay", -2000),
        Posting("asset:psp_clearing:wechat", -2000),
    }
    check()


def test_refund_is_limited_by_the_energy_wallet(db, account, snapshot):
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 5000, "p1", now=NOW)
        ledger.post_usage(conn, "A-101", "E-101", 3000, "t1", now=NOW)
    before = snapshot()
    with pytest.raises(RequestError) as info, db.begin() as conn:
        ledger.refund(conn, "A-101", 2001, "rf-1", now=NOW)
    assert info.value.field == "amount"
    assert "at most 20.00 can be refunded: energy wallet 20.00" in info.value.message
    assert snapshot() == before
    with db.begin() as conn:
        assert ledger.refund(conn, "A-101", 2000, "rf-1", now=NOW).balance_fen == 0


def test_topups_older_than_365_days_are_not_refundable(db, account, check):
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 5000, "old", now=NOW - timedelta(days=366))
        ledger.topup(conn, "A-101", 1000, "new", now=NOW - timedelta(days=10))
        assert ledger.refundable(conn, "A-101", now=NOW) == 1000
    with pytest.raises(RequestError, match=r"top-ups of the last 365 days 10\.00"), db.begin() as c:
        ledger.refund(c, "A-101", 1500, "rf-1", now=NOW)
    with db.begin() as conn:
        r = ledger.refund(conn, "A-101", 1000, "rf-1", now=NOW, settle=True)
    assert [a.topup_reference for a in r.allocations] == ["new"]
    assert r.balance_fen == 5000  # the old money stays (refund by bank transfer)
    check()


def test_refund_number_refunds_once_and_conflicts_on_other_amount(db, account, check):
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 5000, "p1", now=NOW)
        first = ledger.refund(conn, "A-101", 1000, "rf-1", now=NOW)
    for _ in range(5):
        with db.begin() as conn:
            again = ledger.refund(conn, "A-101", 1000, "rf-1", now=NOW)
        assert again.replayed and again.balance_fen == first.balance_fen == 4000
    with pytest.raises(IdempotencyConflict), db.begin() as conn:
        ledger.refund(conn, "A-101", 1500, "rf-1", now=NOW)
    assert check().journals == 2


def test_a_failed_refund_is_reversed_and_can_be_retried(db, account, check):
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 5000, "p1", now=NOW)
        ledger.refund(conn, "A-101", 5000, "rf-1", now=NOW)
        assert ledger.refundable(conn, "A-101", now=NOW) == 0
        failed = ledger.fail_refund(conn, "rf-1", "channel: account frozen", now=NOW)
        assert (failed.state, failed.balance_fen) == ("FAILED", 5000)
        assert ledger.refundable(conn, "A-101", now=NOW) == 5000
        assert ledger.fail_refund(conn, "rf-1", "again", now=NOW).replayed
    check()
    with pytest.raises(RequestError, match="FAILED"), db.begin() as conn:
        ledger.settle_refund(conn, "rf-1")
    with db.begin() as conn:
        retried = ledger.refund(conn, "A-101", 5000, "rf-2", now=NOW, settle=True)
    assert (retried.state, retried.balance_fen) == ("SETTLED", 0)
    with pytest.raises(RequestError, match="SETTLED"), db.begin() as conn:
        ledger.fail_refund(conn, "rf-2", "too late")
    check()


def test_emergency_credit_is_not_refundable(db, account, check):
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 1000, "p1", now=NOW)
        ledger.post_usage(conn, "A-101", "E-101", 1000, "t1", now=NOW)
        ledger.grant_emergency_credit(conn, "A-101", 500, "ec1", now=NOW)
        assert ledger.refundable(conn, "A-101", now=NOW) == 0
    with pytest.raises(RequestError, match=r"5\.00 emergency credit"), db.begin() as conn:
        ledger.refund(conn, "A-101", 100, "rf-1", now=NOW)
    check()


@pytest.mark.parametrize(
    ("amount", "field"), [(0, "amount"), (-100, "amount"), (100_000_000, "amount")]
)
def test_bad_refund_amounts(db, account, snapshot, amount, field):
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 1000, "p1")
    before = snapshot()
    with pytest.raises(RequestError) as info, db.begin() as conn:
        ledger.refund(conn, "A-101", amount, "rf-1")
    assert info.value.field == field
    assert snapshot() == before


def test_a_local_meter_is_debited_before_the_refund_posts(db, make_account, check, snapshot):
    from openprepay.core.prepay import commands as cmds

    make_account("A-102", meters=(("E-102", MeterKind.ELECTRIC, ControlMode.LOCAL),))
    with db.begin() as conn:
        ledger.topup(conn, "A-102", 5000, "p1", now=NOW, local=LOCAL_MONEY)
        (recharge,) = cmds.claim_due(conn, 5, now=NOW)
        cmds.mark_confirmed(conn, recharge.id, now=NOW)
    before = snapshot()
    with db.begin() as conn:
        r = ledger.refund(
            conn,
            "A-102",
            2000,
            "rf-1",
            settle=True,
            requested_by="cashier",
            now=NOW,
            local=LOCAL_MONEY,
        )
    assert (r.state, r.balance_fen, r.meter_id) == ("AWAITING_METER", 5000, "E-102")
    with db.read() as conn:
        command = cmds.get_command(conn, r.command_id)
        assert (command.kind, command.params["buy_count"], command.params["amount_fen"]) == (
            "REFUND",
            1,  # equal to the meter's purchase count (domain.md §1.5)
            2000,
        )
        assert ledger.balances(conn, "A-102").energy_fen == 5000  # nothing posted yet ...
        assert ledger.refundable(conn, "A-102", now=NOW) == 3000  # ... but 20.00 is reserved
    with pytest.raises(RequestError, match=r"at most 30\.00"), db.begin() as conn:
        ledger.refund(conn, "A-102", 3001, "rf-x", now=NOW, local=LOCAL_MONEY)
    with db.begin() as conn:
        assert ledger.refund(
            conn, "A-102", 2000, "rf-1", settle=True, now=NOW, local=LOCAL_MONEY
        ).replayed
    check()
    assert snapshot() != before
    with db.begin() as conn:
        (claimed,) = cmds.claim_due(conn, 5, now=NOW)
        cmds.mark_sent(conn, claimed.id, now=NOW)
        cmds.mark_confirmed(conn, claimed.id, readback={"balance": 30.0}, now=NOW)
        done = ledger.refund_result(conn, "rf-1", replayed=False)
    assert (done.state, done.balance_fen) == ("SETTLED", 3000)
    check()


def test_a_meter_that_refuses_the_refund_fails_it_and_releases_the_topups(db, make_account, check):
    from openprepay.core.prepay import commands as cmds

    make_account("A-102", meters=(("E-102", MeterKind.ELECTRIC, ControlMode.LOCAL),))
    with db.begin() as conn:
        ledger.topup(conn, "A-102", 5000, "p1", now=NOW, local=LOCAL_MONEY)
        r1 = ledger.refund(conn, "A-102", 1000, "rf-1", now=NOW, local=LOCAL_MONEY)
        r2 = ledger.refund(conn, "A-102", 500, "rf-2", now=NOW, local=LOCAL_MONEY)
        assert ledger.refundable(conn, "A-102", now=NOW) == 3500
    check()
    with db.begin() as conn:
        (recharge,) = cmds.claim_due(conn, 5, now=NOW)  # per-meter order: RECHARGE first
        assert recharge.kind == "RECHARGE"
        cmds.mark_confirmed(conn, recharge.id, now=NOW)
        (first,) = cmds.claim_due(conn, 5, now=NOW)
        assert first.id == r1.command_id
        cmds.mark_failed(conn, first.id, "meter answered: buy count mismatch", final=True)
        cmds.cancel(conn, r2.command_id, "tenant changed their mind")
    with db.read() as conn:
        failed = ledger.refund_result(conn, "rf-1", replayed=False)
        cancelled = ledger.refund_result(conn, "rf-2", replayed=False)
        assert (failed.state, failed.balance_fen) == ("FAILED", 5000)
        assert cancelled.state == "FAILED"
        assert ledger.balances(conn, "A-102").energy_fen == 5000
        assert ledger.refundable(conn, "A-102", now=NOW) == 5000
    check()


def test_refund_to_zero_then_close(db, account, check):
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 1234, "p1")
    with pytest.raises(RequestError, match="refund or settle"), db.begin() as conn:
        acc.close_account(conn, "A-101")
    with db.begin() as conn:
        ledger.refund(conn, "A-101", 1234, "rf-1", settle=True)
        closed = acc.close_account(conn, "A-101")
    assert closed.state == "CLOSED"
    check()
