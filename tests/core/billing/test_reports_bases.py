"""Revenue by posting date and by service period (issue 14 §4): December's property fee,
common-area share and post-paid bill are posted at month-end in January, and a prepaid
reading taken just before midnight is posted just after it. By posting date they land in
January; by service period in December — where the monthly energy report puts them too.
Over a span holding both, the two bases have the same total, and the reconciliation table
says, month by month, what moved (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.billing.reports import Reports
from openprepay.core.db import schema as t
from openprepay.core.ledger import RequestError

from .conftest import JAN, MODELS, TZ, make_billing, open_accounts, read

DEC = dt.datetime(2024, 12, 1, tzinfo=TZ).astimezone(dt.UTC)
SPAN = (dt.date(2024, 12, 1), dt.date(2025, 2, 1))


def local(*args):
    return dt.datetime(*args, tzinfo=TZ).astimezone(dt.UTC)


def fen(d: Decimal) -> int:
    return int(d * 100)


def reports_of(billing):
    return Reports(
        billing.site,
        MODELS,
        billing.catalogue,
        calendar=billing.calendar,
        register_rates=billing.prepay.register_rates,
        default_tariffs={"electric": "flat", "water": "water"},
    )


def _usage(conn, meter, fen_, read_at, posted_at):
    """Prepaid usage as metering posts it: the period key is the reading's epoch time."""
    ledger.post_usage(
        conn, meter.replace("E-", ""), meter, fen_, f"{int(read_at.timestamp())}", now=posted_at
    )


@pytest.fixture
def december(db, site):
    """December 2024 billed at January's month-end: A-101 post-paid, A-102 and A-201
    prepaid (one reading at 23:59:58 on 31 December posted at 00:00:03 on 1 January)."""
    open_accounts(
        db, site, modes={"E-A-101": "POSTPAID"}, tariff="flat", opened_at=local(2024, 11, 1)
    )
    with db.begin() as conn:
        _usage(conn, "E-A-102", 450, local(2024, 12, 10, 12), local(2024, 12, 10, 12, 0, 1))
        _usage(conn, "E-A-102", 123, local(2024, 12, 31, 23, 59, 58), local(2025, 1, 1, 0, 0, 3))
        _usage(conn, "E-A-201", 777, local(2025, 1, 15, 8), local(2025, 1, 15, 8, 0, 1))
    billing = make_billing(
        {
            "pools": {
                "A": {"main": "M-A", "price": "0.6000", "method": "consumption", "mode": "bill"}
            },
            "charges": {
                "property": {"type": "property", "basis": "area", "rate": "2.50", "mode": "bill"}
            },
        },
    )
    read(db, DEC, {"M-A": 10000, "E-A-101": 1000, "E-A-102": 2000, "E-A-201": 3000})
    read(db, JAN, {"M-A": 11000, "E-A-101": 1300, "E-A-102": 2500, "E-A-201": 3150})
    at = local(2025, 1, 2, 9)  # month-end, D+1
    with db.begin() as conn:
        billing.apportionment.run(conn, "2024-12", actor="t", now=at)
        billing.charges.run(conn, "2024-12", actor="t", now=at)
    with db.begin() as conn:
        billing.bills.draft(conn, "2024-12", now=at)
        billing.bills.confirm(conn, period="2024-12", actor="t", now=at)
    return billing


def _rev(db, lo, hi, stream="%"):
    """The ledger's net revenue (credits positive) posted in [lo, hi)."""
    with db.read() as conn:
        return -int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(t.posting.c.amount_fen), 0))
                .join(t.journal, t.journal.c.id == t.posting.c.journal_id)
                .where(
                    t.posting.c.ledger_account.like(f"rev:{stream}"),
                    t.journal.c.created_at >= lo,
                    t.journal.c.created_at < hi,
                )
            ).scalar()
        )


def _cells(table, label):
    row = next(r for r in table.rows if r[0] == label)
    return {c: fen(v) for c, v in zip(table.columns[1:], row[1:], strict=True)}


def test_service_period_puts_month_end_postings_in_the_month_they_pay_for(db, december, check):
    reports = reports_of(december)
    with db.read() as conn:
        posting = reports.revenue(conn, *SPAN, "month")
        service = reports.revenue(conn, *SPAN, "month", basis="service")
        monthly = reports.monthly(conn, "2024-12")
    assert "by posting date" in posting.title and "Basis: posting date" in posting.notes[0]
    assert "by service period" in service.title and "Basis: service period" in service.notes[0]
    dec_p, jan_p = _cells(posting, "2024-12"), _cells(posting, "2025-01")
    dec_s, jan_s = _cells(service, "2024-12"), _cells(service, "2025-01")
    # By posting date: exactly the ledger's postings of each month.
    assert dec_p["total"] == _rev(db, local(2024, 12, 1), local(2025, 1, 1)) == 450
    assert jan_p["total"] == _rev(db, local(2025, 1, 1), local(2025, 2, 1))
    # By service period: December holds its reading of 23:59:58, its bill, its property fee
    # and its common-area share; January only what was read in January.
    property_fee = 11375 + 15050 + 19575  # 2.50 × 45.5, 60.2, 78.3 m²
    bill_usage = 300 * 50  # E-A-101: 300 kWh × 0.50 (flat), post-paid
    assert dec_s["property"] == property_fee and jan_s["property"] == 0
    assert dec_s["common area"] == _rev(db, local(2025, 1, 2), local(2025, 1, 3), "public_energy")
    assert dec_s["common area"] > 0 and jan_s["common area"] == 0
    assert dec_s["electricity"] == 450 + 123 + bill_usage
    assert jan_s["electricity"] == 777
    assert dec_p["electricity"] == 450 and jan_p["electricity"] == 123 + bill_usage + 777
    # The same total over a span that holds both the postings and what they pay for.
    assert fen(posting.total[-1]) == fen(service.total[-1]) == _rev(db, DEC, local(2025, 2, 1))
    # The monthly energy report's cost is on the service basis: it agrees with the revenue.
    cost = fen(monthly.total[monthly.columns.index("total CNY")])
    assert cost == dec_s["electricity"]
    assert any("service period" in n for n in monthly.notes)
    check()


def test_the_two_bases_reconcile_month_by_month_with_what_moved(db, december):
    reports = reports_of(december)
    with db.read() as conn:
        table = reports.revenue_bases(conn, *SPAN, "month")
        by_day = reports.revenue_bases(conn, dt.date(2024, 12, 31), dt.date(2025, 1, 2), "day")
    rows = {r[0]: dict(zip(table.columns, r, strict=True)) for r in table.rows}
    dec, jan = rows["2024-12"], rows["2025-01"]
    for row in (dec, jan):
        assert row["by service period"] == row["by posting date"] + row["in"] - row["out"]
    assert dec["out"] == 0 and jan["in"] == 0 and dec["in"] == jan["out"] > 0
    assert "property for 2024-12 posted 2025-01-02 (charge:property)" in dec["what moved"]
    assert "common area for 2024-12 posted 2025-01-02 (pool:A)" in dec["what moved"]
    assert "electricity for 2024-12 posted 2025-01-02 (bills)" in dec["what moved"]
    assert "+1.23 electricity for 2024-12-31 posted 2025-01-01 (usage)" in dec["what moved"]
    assert "−1.23 electricity for 2024-12-31 posted 2025-01-01 (usage)" in jan["what moved"]
    total = dict(zip(table.columns, table.total, strict=True))
    assert total["by posting date"] == total["by service period"]
    assert total["in"] == total["out"]
    # By day the reading of 23:59:58 moves from 1 January back to 31 December.
    days = {r[0]: dict(zip(by_day.columns, r, strict=True)) for r in by_day.rows}
    assert days["2024-12-31"]["in"] == Decimal("1.23")
    assert days["2025-01-01"]["out"] == Decimal("1.23")


def test_a_reversed_run_stays_in_its_period_and_a_bad_basis_is_refused(db, december):
    reports = reports_of(december)
    with db.begin() as conn:  # a corrected main-meter reading: pool A re-run in February
        conn.execute(
            t.billing_reading.update()
            .where(t.billing_reading.c.meter_id == "M-A", t.billing_reading.c.at == JAN)
            .values(energy=10_900_000, source="manual")
        )
    with db.begin() as conn:
        december.apportionment.run(conn, "2024-12", actor="t", now=local(2025, 2, 3, 9))
        # The reading of 23:59:58 on 31 December was wrong: its usage reversed in February.
        late = int(local(2024, 12, 31, 23, 59, 58).timestamp())
        usage = conn.execute(
            sa.select(t.journal.c.id).where(t.journal.c.idempotency_key == f"usage:E-A-102:{late}")
        ).scalar_one()
        ledger.reverse(conn, usage, reason="bad reading", now=local(2025, 2, 4, 9))
    with db.read() as conn:
        service = reports.revenue(conn, dt.date(2024, 12, 1), dt.date(2025, 3, 1), basis="service")
        posting = reports.revenue(conn, dt.date(2024, 12, 1), dt.date(2025, 3, 1))
        # Four years by day: as many boundaries as the database takes in one query, and more.
        years = reports.revenue(conn, dt.date(2022, 1, 1), dt.date(2026, 1, 1), "day", "service")
    assert len(years.rows) == 1461 and years.total[-1] == service.total[-1]
    feb_p, feb_s = _cells(posting, "2025-02"), _cells(service, "2025-02")
    assert feb_p["common area"] < 0 and feb_s["common area"] == 0  # back in December
    assert feb_p["electricity"] == -123 and feb_s["electricity"] == 0
    assert _cells(service, "2024-12")["electricity"] == 450 + 15000  # without the 1.23
    assert fen(service.total[-1]) == fen(posting.total[-1])
    with db.read() as conn, pytest.raises(RequestError, match="basis: expected one of posting"):
        reports.revenue(conn, *SPAN, basis="accrual")
