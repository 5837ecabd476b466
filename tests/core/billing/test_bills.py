"""Post-paid bills: drafts from the meters' registers at the freeze instants (TOU and tiers
continuing from earlier bills — worked example A posts 70.70), billed charges, review →
confirm → issue, payments oldest first, arrears and late fees; every amount reconciles with
the ledger."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.billing.bills.paying import receivable
from openprepay.core.db import schema as t
from openprepay.core.ledger import RequestError

from .conftest import FEB, JAN, MAR, NOW, make_billing, open_accounts, read

REGS = ("energy_sharp", "energy_peak", "energy_flat", "energy_valley")


def _read(db, at, sharp, peak, flat, valley, meter="E-A-101"):
    read(
        db,
        at,
        {meter: sharp + peak + flat + valley},
        **{meter: dict(zip(REGS, (sharp, peak, flat, valley), strict=True))},
    )


@pytest.fixture
def postpaid(db, site):
    """A-101 post-paid on the residential TOU + annual tier tariff, with a property fee
    billed monthly; January 2,800 kWh, February worked example A's 150 kWh."""
    open_accounts(
        db, site, {"A-101": ("E-A-101",)}, modes={"E-A-101": "POSTPAID"}, tariff="residential"
    )
    _read(db, JAN, 0, 0, 0, 0)
    _read(db, FEB, 400, 1100, 800, 500)
    _read(db, MAR, 410, 1150, 840, 550)
    return make_billing(
        {
            "pools": {},
            "charges": {
                "property": {
                    "type": "property",
                    "name": "Property fee",
                    "basis": "area",
                    "rate": "2.50",
                    "mode": "bill",
                }
            },
        }
    )


def test_draft_confirm_issue_pay(db, postpaid, check):
    billing = postpaid
    bills = billing.bills
    steps: list[tuple[str, int]] = []
    jan_report = billing.month_end(
        db, "2025-01", actor="month-end", now=NOW, progress=lambda *s: steps.append(s)
    )
    assert jan_report.drafts == 1
    assert steps == [("apportionment", 0), ("charges", 1), ("drafts", 2), ("done", 3)]
    with db.read() as conn:
        [draft] = bills.list(conn, period="2025-01")
    assert draft.state == "DRAFT" and draft.number == "B-2025-01-A-101"
    amounts = {ln["description"]: ln["amount_fen"] for ln in draft.lines}
    assert amounts["E-A-101 sharp"] == 28800  # 400 kWh × 0.72
    assert amounts["E-A-101 peak"] == 66000
    assert amounts["E-A-101 flat"] == 40000
    assert amounts["E-A-101 valley"] == 10000
    assert amounts["Property fee 2025-01"] == 11375  # billed item, posted by the charge run
    assert draft.total_fen == 144800 + 11375
    with db.begin() as conn:
        confirmed, refused = bills.confirm(conn, period="2025-01", actor="cli:alice", now=NOW)
    assert refused == [] and [b.state for b in confirmed] == ["CONFIRMED"]
    with db.begin() as conn:
        [issued] = bills.issue(
            conn, period="2025-01", on=dt.date(2025, 2, 2), actor="cli:alice", now=NOW
        )
    assert (issued.state, issued.due_date) == ("ISSUED", "2025-02-17")

    # February: example A (2,800 kWh before, 150 this month) = 67.20 + 3.50 tier 2; the
    # January bill is overdue from 18 Feb: 11 days × 1‰ of 1,561.75 = 17.18.
    billing.month_end(db, "2025-02", actor="month-end", now=MAR + dt.timedelta(hours=9))
    with db.read() as conn:
        [feb] = bills.list(conn, period="2025-02")
    usage = sum(ln["amount_fen"] for ln in feb.lines if ln["kind"] == "electricity")
    assert usage == 7070
    tier = next(ln for ln in feb.lines if "tier 2" in ln["description"])
    assert (tier["quantity"], tier["amount_fen"]) == ("70.00 kWh", 350)
    late = next(ln for ln in feb.lines if ln["kind"] == "late_fee")
    assert late["amount_fen"] == 1718 and "11 day(s) from 2025-02-18" in late["description"]
    with db.begin() as conn:
        [feb_bill], _ = bills.confirm(conn, numbers=[feb.number], actor="cli:alice", now=NOW)
        bills.issue(conn, numbers=[feb.number], on=dt.date(2025, 3, 2), actor="cli:alice", now=NOW)
    assert feb_bill.total_fen == 7070 + 11375 + 1718

    # Payments go to the oldest bill first; the rest of a payment to the general wallet.
    with db.begin() as conn:
        first = bills.pay(conn, "A-101", 100000, "wx-1", channel="wechat", actor="wechat", now=NOW)
    assert first.allocations == {"B-2025-01-A-101": 100000} and first.to_wallet_fen == 0
    with db.begin() as conn:
        assert bills.pay(
            conn, "A-101", 100000, "wx-1", channel="wechat", actor="wechat", now=NOW
        ).replayed
        second = bills.pay(conn, "A-101", 100000, "wx-2", channel="wechat", actor="wechat", now=NOW)
    assert second.allocations == {"B-2025-01-A-101": 56175, "B-2025-02-A-101": 20163}
    assert second.to_wallet_fen == 100000 - 56175 - 20163
    with db.read() as conn:
        states = {b.number: (b.state, b.paid_fen) for b in bills.list(conn)}
        owed = receivable(conn)["A-101"]
        general = ledger.balances(conn, "A-101").general_fen
        revenue = {
            code: -int(total)
            for code, total in conn.execute(
                sa.select(t.posting.c.ledger_account, sa.func.sum(t.posting.c.amount_fen))
                .where(t.posting.c.ledger_account.like("rev:%"))
                .group_by(t.posting.c.ledger_account)
            ).all()
        }
    assert states == {"B-2025-01-A-101": ("PAID", 156175), "B-2025-02-A-101": ("PAID", 20163)}
    assert owed == 0 and general == 100000 - 56175 - 20163
    assert revenue == {
        "rev:electricity": 144800 + 7070,
        "rev:property": 2 * 11375,
        "rev:late_fee": 1718,
    }
    check()


def test_a_draft_with_a_missing_reading_is_not_confirmed(db, site, check):
    open_accounts(db, site, {"A-101": ("E-A-101",)}, modes={"E-A-101": "POSTPAID"}, tariff="flat")
    read(db, JAN, {"E-A-101": 100})
    billing = make_billing({"pools": {}})
    with db.begin() as conn:
        [draft] = billing.bills.draft(conn, "2025-01", now=NOW)
    assert draft.problems == (
        "no reading of E-A-101 at 2025-02-01 00:00 (record one: openprepay billing reading)",
    )
    with db.begin() as conn:
        confirmed, refused = billing.bills.confirm(conn, period="2025-01", actor="a", now=NOW)
    assert confirmed == [] and "no reading of E-A-101" in refused[0][1]
    read(db, FEB, {"E-A-101": 350})  # 250 kWh × 0.50 = 125.00
    with db.begin() as conn:
        confirmed, refused = billing.bills.confirm(conn, period="2025-01", actor="a", now=NOW)
    assert confirmed == [] and refused == [
        ("B-2025-01-A-101", "it changed since the draft was made: review it again")
    ]
    with db.read() as conn:
        assert billing.bills.get(conn, "B-2025-01-A-101").total_fen == 12500  # refreshed draft
    with db.begin() as conn:
        confirmed, refused = billing.bills.confirm(conn, period="2025-01", actor="a", now=NOW)
    assert [b.total_fen for b in confirmed] == [12500] and refused == []
    with db.begin() as conn:  # confirming again finds no draft: nothing posted twice
        assert billing.bills.confirm(conn, period="2025-01", actor="a", now=NOW) == ([], [])
    with db.read() as conn:
        assert receivable(conn) == {"A-101": 12500}
    check()


def test_arrears_and_bad_requests(db, postpaid, check):
    bills = postpaid.bills
    postpaid.month_end(db, "2025-01", actor="t", now=NOW)
    with db.begin() as conn:
        bills.confirm(conn, period="2025-01", actor="a", now=NOW)
        bills.issue(conn, period="2025-01", on=dt.date(2025, 2, 2), actor="a", now=NOW)
        bills.pay(conn, "A-101", 6175, "cash-1", actor="a", now=NOW)
    with db.read() as conn:
        assert bills.arrears(conn, dt.date(2025, 2, 17)) == []  # due that day: not yet overdue
        [arrear] = bills.arrears(conn, dt.date(2025, 2, 27))
    assert (arrear.outstanding_fen, arrear.days_overdue, arrear.late_fee_fen) == (150000, 10, 1500)
    with db.begin() as conn:
        with pytest.raises(RequestError, match=r"amount: expected more than 0\.00"):
            bills.pay(conn, "A-101", -5, "cash-2", actor="a", now=NOW)
        with pytest.raises(ledger.IdempotencyConflict):
            bills.pay(conn, "A-101", 100, "cash-1", actor="a", now=NOW)
        with pytest.raises(RequestError, match="unknown bill 'B-1999-01-X'"):
            bills.issue(conn, numbers=["B-1999-01-X"], actor="a", now=NOW)
        with pytest.raises(RequestError, match="expected a month such as 2025-03"):
            bills.draft(conn, "2025/01", now=NOW)
    check()


def _money(conn) -> dict[str, int]:
    """The balance of every receivable and revenue ledger account (not the zero ones)."""
    return {
        code: int(total)
        for code, total in conn.execute(
            sa.select(t.posting.c.ledger_account, sa.func.sum(t.posting.c.amount_fen))
            .where(
                sa.or_(
                    t.posting.c.ledger_account.like("asset:ar:%"),
                    t.posting.c.ledger_account.like("rev:%"),
                )
            )
            .group_by(t.posting.c.ledger_account)
        ).all()
        if int(total)
    }


def _snapshot(conn) -> tuple[Any, ...]:
    """Everything a refused void must leave as it was."""
    return (
        conn.execute(sa.select(sa.func.count()).select_from(t.journal)).scalar(),
        sorted(tuple(r) for r in conn.execute(sa.select(t.bill.c.number, t.bill.c.state)).all()),
        sorted(
            tuple(r)
            for r in conn.execute(
                sa.select(t.billing_item.c.id, t.billing_item.c.bill_id, t.billing_item.c.void)
            ).all()
        ),
    )


def test_void_an_issued_bill_and_bill_again(db, postpaid, check):
    bills = postpaid.bills
    postpaid.month_end(db, "2025-01", actor="month-end", now=NOW)
    with db.read() as conn:
        before = _money(conn)  # the property fee run is posted, the bill not yet
    with db.begin() as conn:
        bills.confirm(conn, period="2025-01", actor="cli:alice", now=NOW)
        bills.issue(conn, period="2025-01", on=dt.date(2025, 2, 2), actor="cli:alice", now=NOW)
    with db.read() as conn:
        assert _money(conn)["asset:ar:A-101"] == before["asset:ar:A-101"] + 144800
    later = NOW + dt.timedelta(days=3)
    with db.begin() as conn:
        result = bills.void(
            conn, "B-2025-01-A-101", reason="wrong reading", actor="cli:alice", now=later
        )
    assert (result.reversed_fen, result.released_items, result.replayed) == (144800, 1, False)
    with db.read() as conn:
        assert _money(conn) == before  # to the fen
        void = bills.get(conn, "B-2025-01-A-101")
        journals = conn.execute(sa.select(sa.func.count()).select_from(t.journal)).scalar()
        usage_items = (
            conn.execute(
                sa.select(t.billing_item.c.void).where(
                    t.billing_item.c.source == "bill:B-2025-01-A-101"
                )
            )
            .scalars()
            .all()
        )
        assert bills.arrears(conn, dt.date(2025, 3, 30)) == []
    assert (void.state, void.void_reason, void.voided_by, void.voided_at) == (
        "VOID",
        "wrong reading",
        "cli:alice",
        later,
    )
    assert void.void_journal_id == result.journal_id and void.outstanding_fen == 0
    assert len(void.lines) > 0 and void.total_fen == 144800 + 11375  # kept for audit
    assert usage_items and all(usage_items)  # its usage is reversed, never billed again

    # The same void again posts nothing and returns the first result.
    with db.begin() as conn:
        again = bills.void(
            conn, "B-2025-01-A-101", reason="wrong reading", actor="cli:alice", now=later
        )
    assert again.replayed and again.journal_id == result.journal_id
    assert again.reversed_fen == result.reversed_fen
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.journal)).scalar() == journals
    check()

    # The next draft bills the account again, the property fee exactly once.
    with db.begin() as conn:
        [redraft] = bills.draft(conn, "2025-01", now=later)
        assert redraft.number == "B-2025-01-A-101-R2"
        lines = bills.get(conn, redraft.number).lines
    fees = [ln for ln in lines if ln["kind"] == "property"]
    assert [ln["amount_fen"] for ln in fees] == [11375]
    assert redraft.total_fen == 144800 + 11375
    with db.begin() as conn:
        confirmed, refused = bills.confirm(conn, period="2025-01", actor="cli:bob", now=later)
    assert refused == [] and [(b.number, b.state) for b in confirmed] == [
        ("B-2025-01-A-101-R2", "CONFIRMED")
    ]
    with db.begin() as conn:  # nothing left to draft: the period is billed
        assert bills.draft(conn, "2025-01", now=later) == []
        states = {b.number: b.state for b in bills.list(conn, period="2025-01")}
        assert _money(conn)["asset:ar:A-101"] == before["asset:ar:A-101"] + 144800
        items = conn.execute(
            sa.select(t.billing_item.c.bill_id, t.bill.c.number)
            .join(t.bill, t.bill.c.id == t.billing_item.c.bill_id)
            .where(t.billing_item.c.kind == "property")
        ).all()
    assert states == {"B-2025-01-A-101": "VOID", "B-2025-01-A-101-R2": "CONFIRMED"}
    assert [r.number for r in items] == ["B-2025-01-A-101-R2"]
    check()


def test_void_refusals_change_nothing(db, postpaid, check):
    bills = postpaid.bills
    postpaid.month_end(db, "2025-01", actor="month-end", now=NOW)
    with db.begin() as conn:
        with pytest.raises(RequestError, match="bill: bill B-2025-01-A-101 is a draft"):
            bills.void(conn, "B-2025-01-A-101", reason="typo", actor="a", now=NOW)
        bills.confirm(conn, period="2025-01", actor="a", now=NOW)
        bills.issue(conn, period="2025-01", on=dt.date(2025, 2, 2), actor="a", now=NOW)
    with db.read() as conn:
        unpaid = _snapshot(conn)
    with db.begin() as conn:
        with pytest.raises(RequestError, match="bill: unknown bill 'B-1999-01-X'"):
            bills.void(conn, "B-1999-01-X", reason="typo", actor="a", now=NOW)
        for empty in ("", "  "):
            with pytest.raises(RequestError, match="reason: required"):
                bills.void(conn, "B-2025-01-A-101", reason=empty, actor="a", now=NOW)
        with pytest.raises(RequestError, match="actor: required"):
            bills.void(conn, "B-2025-01-A-101", reason="typo", actor="", now=NOW)
    with db.read() as conn:
        assert _snapshot(conn) == unpaid
    with db.begin() as conn:
        bills.pay(conn, "A-101", 100, "cash-1", actor="a", now=NOW)
    with db.read() as conn:
        paid = _snapshot(conn)
    with (
        db.begin() as conn,
        pytest.raises(RequestError, match=r"1\.00 paid on it: refund or move the payment"),
    ):
        bills.void(conn, "B-2025-01-A-101", reason="typo", actor="a", now=NOW)
    with db.read() as conn:
        assert _snapshot(conn) == paid
    check()


def test_a_late_fee_keeps_its_bill_until_the_later_bill_is_void(db, postpaid, check):
    bills = postpaid.bills
    postpaid.month_end(db, "2025-01", actor="t", now=NOW)
    with db.begin() as conn:
        bills.confirm(conn, period="2025-01", actor="a", now=NOW)
        bills.issue(conn, period="2025-01", on=dt.date(2025, 2, 2), actor="a", now=NOW)
    postpaid.month_end(db, "2025-02", actor="t", now=MAR + dt.timedelta(hours=9))
    with db.begin() as conn:
        bills.confirm(conn, period="2025-02", actor="a", now=NOW)
    with db.read() as conn:
        state = _snapshot(conn)
    with (
        db.begin() as conn,
        pytest.raises(RequestError, match="bill B-2025-02-A-101 charged a late fee on"),
    ):
        bills.void(conn, "B-2025-01-A-101", reason="typo", actor="a", now=NOW)
    with db.read() as conn:
        assert _snapshot(conn) == state
    with db.begin() as conn:
        feb = bills.void(conn, "B-2025-02-A-101", reason="late fee", actor="a", now=NOW)
        jan = bills.void(conn, "B-2025-01-A-101", reason="typo", actor="a", now=NOW)
        with pytest.raises(RequestError, match="already void"):
            bills.void(conn, "B-2025-01-A-101", reason="other", actor="a", now=NOW)
    assert feb.reversed_fen == 7070 + 1718 and jan.reversed_fen == 144800
    with db.read() as conn:
        assert receivable(conn)["A-101"] == 2 * 11375  # the property fees, still owed
    check()
