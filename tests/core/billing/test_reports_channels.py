"""Finance composition by payment channel (issue 14 §4, AcrelCloud §4.4): top-ups, bill
payments and refunds per channel and month; each channel's net is its clearing account's
postings and the top-ups add up to the top-up orders (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.db import schema as t

from .conftest import deposit, make_billing, open_accounts
from .test_reports_bases import local, reports_of

SPAN = (dt.date(2025, 1, 1), dt.date(2025, 3, 1))
CODES = {
    "WeChat": "wechat",
    "Alipay": "alipay",
    "cash": "cash",
    "bank": "bank",
    "counter": "counter",
}


def _clearing(db, channel, lo, hi):
    with db.read() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(t.posting.c.amount_fen), 0))
                .join(t.journal, t.journal.c.id == t.posting.c.journal_id)
                .where(
                    t.posting.c.ledger_account == f"asset:psp_clearing:{channel}",
                    t.journal.c.created_at >= lo,
                    t.journal.c.created_at < hi,
                )
            ).scalar()
        )


def test_payments_by_channel_reconcile_with_the_clearing_accounts(db, site, check):
    open_accounts(db, site, modes={"E-A-101": "POSTPAID"}, opened_at=local(2024, 12, 1))
    billing = make_billing()
    with db.begin() as conn:
        ledger.topup(conn, "A-102", 5000, "wx-1", channel="wechat", now=local(2025, 1, 3))
        ledger.topup(conn, "A-102", 3000, "ali-1", channel="alipay", now=local(2025, 1, 4))
        ledger.topup(conn, "A-201", 2000, "cash-1", now=local(2025, 1, 5))
        ledger.topup(conn, "A-201", 1500, "wx-2", channel="wechat", now=local(2025, 2, 1, 0, 0, 1))
        wrong = ledger.topup(conn, "A-201", 999, "bank-1", channel="bank", now=local(2025, 1, 6))
        # 4,000.00 back to A-102: 30.00 of the Alipay top-up, then 10.00 of WeChat's.
        ledger.refund(conn, "A-102", 4000, "rf-1", settle=True, now=local(2025, 1, 20))
    with db.begin() as conn:
        ledger.reverse(conn, wrong.journal_id, reason="keyed twice", now=local(2025, 1, 7))
        billing.bills.pay(
            conn, "A-101", 8800, "ctr-1", channel="counter", actor="t", now=local(2025, 1, 9)
        )
    deposit(db, "A-201", 600)  # a cash deposit (today, outside the span)
    reports = reports_of(billing)
    with db.read() as conn:
        table = reports.channels(conn, *SPAN, "month")
    assert "by posting date" in table.title and "Basis: posting date" in table.notes[0]
    rows = {(r[0], r[1]): dict(zip(table.columns, r, strict=True)) for r in table.rows}
    assert set(rows) == {
        ("2025-01", "WeChat"),
        ("2025-01", "Alipay"),
        ("2025-01", "cash"),
        ("2025-01", "bank"),
        ("2025-01", "counter"),
        ("2025-02", "WeChat"),
    }
    wechat = rows[("2025-01", "WeChat")]
    assert (wechat["top-ups"], wechat["top-ups CNY"]) == (1, Decimal("50.00"))
    assert (wechat["refunds"], wechat["refunds CNY"]) == (1, Decimal("10.00"))
    assert wechat["net CNY"] == Decimal("40.00")
    alipay = rows[("2025-01", "Alipay")]
    assert (alipay["refunds CNY"], alipay["net CNY"]) == (Decimal("30.00"), Decimal("0.00"))
    bank = rows[("2025-01", "bank")]
    assert (bank["top-ups CNY"], bank["other CNY"], bank["net CNY"]) == (
        Decimal("9.99"),
        Decimal("-9.99"),
        Decimal("0.00"),
    )
    counter = rows[("2025-01", "counter")]
    assert (counter["bill payments"], counter["bill payments CNY"]) == (1, Decimal("88.00"))
    # Each row's net is its clearing account's postings in the month.
    for (month, _), row in rows.items():
        lo = local(int(month[:4]), int(month[5:]), 1)
        hi = local(2025, int(month[5:]) + 1, 1)
        code = CODES[row["channel"]]
        assert int(row["net CNY"] * 100) == _clearing(db, code, lo, hi), (month, code)
    # The top-ups column adds up to the top-up orders of the span.
    with db.read() as conn:
        orders = conn.execute(
            sa.select(sa.func.sum(t.topup.c.amount_fen)).where(
                t.topup.c.created_at >= local(2025, 1, 1), t.topup.c.created_at < local(2025, 3, 1)
            )
        ).scalar()
    total = dict(zip(table.columns, table.total, strict=True))
    assert int(total["top-ups CNY"] * 100) == orders == 5000 + 3000 + 2000 + 1500 + 999
    assert total["top-ups"] == 5 and total["refunds CNY"] == Decimal("40.00")
    assert total["net CNY"] == sum(r["net CNY"] for r in rows.values())
    check()
