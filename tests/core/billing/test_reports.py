"""Finance and energy reports reconcile with the ledger exactly (SQLite and PostgreSQL):
orders and revenue by day, month, year and range with their composition, the monthly
comprehensive report per room with 尖/峰/平/谷 energy and cost and the same month a year
before, energy per meter (main meters from their registers); CSV and XLSX with charts;
and the loss and tamper analysis that points at a bypassed room."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa
from openpyxl import load_workbook

from openprepay.core import ledger
from openprepay.core.billing.export import write_csv, write_xlsx
from openprepay.core.billing.loss import LossAnalysis
from openprepay.core.billing.reports import Reports
from openprepay.core.db import schema as t
from openprepay.core.ledger import RequestError

from .conftest import FEB, JAN, MODELS, NOW, TZ, make_billing, open_accounts, read


def local(*args):
    return dt.datetime(*args, tzinfo=TZ).astimezone(dt.UTC)


def _reports(billing):
    return Reports(
        billing.site,
        MODELS,
        billing.catalogue,
        calendar=billing.calendar,
        register_rates=billing.prepay.register_rates,
        default_tariffs={"electric": "flat", "water": "water"},
    )


def _usage_day(db, meter, account, day, total, **by_rate):
    with db.begin() as conn:
        conn.execute(
            t.meter_usage_day.insert(),
            {
                "meter_id": meter,
                "day": day,
                "account_id": account,
                "energy": total,
                "by_rate": by_rate or {"all": total},
                "updated_at": NOW,
            },
        )


@pytest.fixture
def activity(db, site):
    """A month of money: top-ups, usage, a refund, property fee, a common-area share, a
    payment — some of it just outside January in site-local time."""
    open_accounts(
        db,
        site,
        {"A-101": ("E-A-101", "W-A-101"), "A-102": ("E-A-102",), "A-201": ("E-A-201",)},
        tariff="residential",
    )
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 20000, "pay-1", channel="wechat", now=local(2025, 1, 3, 10))
        ledger.topup(conn, "A-102", 5000, "pay-2", now=local(2025, 1, 1, 0, 0, 1))
        ledger.topup(conn, "A-201", 7000, "pay-late", now=local(2025, 2, 1, 0, 0, 0))  # February
        ledger.topup(conn, "A-201", 3000, "pay-early", now=local(2024, 12, 31, 23, 59))  # December
        for day, fen in ((5, 123), (5, 77), (6, 450), (31, 999)):
            ledger.post_usage(
                conn, "A-101", "E-A-101", fen, f"{day}-{fen}", now=local(2025, 1, day, 12)
            )
        ledger.post_usage(conn, "A-101", "W-A-101", 330, "w1", now=local(2025, 1, 6, 8))
        ledger.refund(conn, "A-101", 1000, "rf-1", settle=True, now=local(2025, 1, 20, 9))
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
    read(db, JAN, {"M-A": 10000, "E-A-101": 1000, "E-A-102": 2000, "E-A-201": 3000})
    read(db, FEB, {"M-A": 11000, "E-A-101": 1300, "E-A-102": 2500, "E-A-201": 3150})
    with db.begin() as conn:
        billing.apportionment.run(conn, "2025-01", actor="t", now=local(2025, 1, 31, 20))
        billing.charges.run(conn, "2025-01", actor="t", now=local(2025, 1, 31, 21))
    with db.begin() as conn:
        billing.bills.draft(conn, "2025-01", now=local(2025, 1, 31, 22))
        billing.bills.confirm(conn, period="2025-01", actor="t", now=local(2025, 1, 31, 22))
        billing.bills.pay(conn, "A-102", 20000, "bp-1", actor="t", now=local(2025, 1, 31, 23))
    return billing


def _ledger_sum(db, like, lo, hi):
    with db.read() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(t.posting.c.amount_fen), 0))
                .join(t.journal, t.journal.c.id == t.posting.c.journal_id)
                .where(
                    t.posting.c.ledger_account.like(like),
                    t.journal.c.created_at >= lo,
                    t.journal.c.created_at < hi,
                )
            ).scalar()
        )


def fen(d: Decimal) -> int:
    return int(d * 100)


def test_revenue_reconciles_by_day_month_year_and_range(db, activity, check):
    reports = _reports(activity)
    jan = (dt.date(2025, 1, 1), dt.date(2025, 2, 1))
    expected = -_ledger_sum(db, "rev:%", local(2025, 1, 1), local(2025, 2, 1))
    with db.read() as conn:
        tables = {by: reports.revenue(conn, *jan, by) for by in ("day", "month", "year", "range")}
    for by, table in tables.items():
        assert fen(table.total[-1]) == expected, by
        assert sum(fen(r[-1]) for r in table.rows) == expected, by
    assert len(tables["day"].rows) == 31 and len(tables["month"].rows) == 1
    composition = dict(zip(tables["range"].columns, tables["range"].total, strict=True))
    assert fen(composition["electricity"]) == 123 + 77 + 450 + 999
    assert fen(composition["water"]) == 330
    assert fen(composition["common area"]) == 3000  # example G's loss
    assert fen(composition["property"]) == 11375 + 15050 + 19575
    day5 = next(r for r in tables["day"].rows if r[0] == "2025-01-05")
    assert fen(day5[1]) == 200
    check()


def test_orders_reconcile_with_the_wallets_and_what_is_owed(db, activity, check):
    reports = _reports(activity)
    lo, hi = local(2025, 1, 1), local(2025, 2, 1)
    with db.read() as conn:
        table = reports.orders(conn, dt.date(2025, 1, 1), dt.date(2025, 2, 1))
    cols = table.columns
    energy_col, general_col, owed_col = (
        cols.index(c) for c in ("energy wallet", "general wallet", "owed")
    )
    assert sum(fen(r[energy_col]) for r in table.rows) == -_ledger_sum(
        db, "liab:wallet:%:energy", lo, hi
    )
    assert sum(fen(r[general_col]) for r in table.rows) == -_ledger_sum(
        db, "liab:wallet:%:general", lo, hi
    )
    assert sum(fen(r[owed_col]) for r in table.rows) == _ledger_sum(db, "asset:ar:%", lo, hi)
    assert fen(table.total[energy_col]) == -_ledger_sum(db, "liab:wallet:%:energy", lo, hi)
    assert table.notes[0].startswith("Basis: posting date")
    refs = [r[3] for r in table.rows]
    assert "topup:pay-1" in refs and "topup:pay-2" in refs
    assert "topup:pay-late" not in refs and "topup:pay-early" not in refs  # outside January
    usage = [r for r in table.rows if r[1] == "usage electricity"]
    assert [(r[0], fen(r[energy_col])) for r in usage] == [
        ("2025-01-05 (day)", -200),
        ("2025-01-06 (day)", -450),
        ("2025-01-31 (day)", -999),
    ]
    with db.read() as conn:
        mine = reports.orders(conn, dt.date(2025, 1, 1), dt.date(2025, 2, 1), account="A-102")
    assert {r[2] for r in mine.rows} == {"A-102"}
    with (
        db.read() as conn,
        pytest.raises(RequestError, match="expected one of day, month, year, range"),
    ):
        reports.revenue(conn, *(dt.date(2025, 1, 1), dt.date(2025, 2, 1)), "week")
    check()


def test_monthly_report_per_room_reconciles_and_compares_with_last_year(db, activity, check):
    reports = _reports(activity)
    # January 2025: A-101 used sharp 1, peak 2, flat 3, valley 4 kWh; a year before 5 kWh.
    _usage_day(
        db, "E-A-101", "A-101", "2025-01-05", 4000, sharp=1000, peak=1000, flat=1000, valley=1000
    )
    _usage_day(db, "E-A-101", "A-101", "2025-01-06", 6000, peak=1000, flat=2000, valley=3000)
    _usage_day(db, "E-A-101", "A-101", "2024-01-20", 5000, flat=5000)
    _usage_day(db, "E-A-102", "A-102", "2025-01-07", 2500, flat=2500)
    with db.read() as conn:
        table = reports.monthly(conn, "2025-01")
    rows = {r[0]: dict(zip(table.columns, r, strict=True)) for r in table.rows}
    a101 = rows["A-101"]
    assert a101["total kWh"] == Decimal("10") and a101["valley kWh"] == Decimal("4")
    assert a101["2024-01 kWh"] == Decimal("5") and a101["YoY %"] == Decimal("100.0")
    ledger_cost = _ledger_sum(db, "liab:wallet:%", local(2025, 1, 1), local(2025, 2, 1))
    with db.read() as conn:
        usage_cost = int(
            conn.execute(
                sa.select(sa.func.sum(t.posting.c.amount_fen))
                .join(t.journal, t.journal.c.id == t.posting.c.journal_id)
                .where(
                    t.journal.c.kind == "usage",
                    t.journal.c.meter_id == "E-A-101",
                    t.posting.c.ledger_account.like("liab:wallet:%"),
                )
            ).scalar()
        )
    del ledger_cost
    assert fen(a101["total CNY"]) == usage_cost == 1649
    parts = [fen(a101[f"{r} CNY"]) for r in ("sharp", "peak", "flat", "valley")] + [
        fen(a101["tier surcharge CNY"])
    ]
    assert sum(parts) == usage_cost  # the split adds up to the ledger's amount exactly
    # exact amounts: 0.72 + 1.20 + 1.50 + 0.80 = 4.22 → the 16.49 split in that proportion
    assert parts == [281, 469, 586, 313, 0]
    assert fen(table.total[table.columns.index("total CNY")]) == usage_cost
    check()


def test_energy_per_meter_and_exports(db, activity, tmp_path):
    reports = _reports(activity)
    _usage_day(
        db, "E-A-101", "A-101", "2025-01-05", 4000, sharp=1000, peak=1000, flat=1000, valley=1000
    )
    _usage_day(db, "E-A-101", "A-101", "2025-01-06", 6000, peak=1000, flat=2000, valley=3000)
    read(db, JAN + dt.timedelta(days=1), {"M-A": 10030})
    with db.read() as conn:
        daily = reports.meter_energy(conn, dt.date(2025, 1, 1), dt.date(2025, 2, 1), "day")
        monthly = reports.meter_energy(conn, dt.date(2025, 1, 1), dt.date(2025, 2, 1), "month")
        revenue = reports.revenue(conn, dt.date(2025, 1, 1), dt.date(2025, 2, 1), "day")
    assert daily.notes[0].startswith("Basis: reading time")
    by = {(r[0], r[3]): r for r in daily.rows}
    assert by[("E-A-101", "2025-01-05")][4] == Decimal("4")
    assert by[("M-A", "2025-01-01")][4] == Decimal("30")  # from the main meter's registers
    assert by[("M-A", "2025-01-01")][2] == "main meter, pool A"
    assert {(r[0], r[3], r[4]) for r in monthly.rows} >= {("E-A-101", "2025-01", Decimal("10"))}
    path = write_xlsx([revenue, reports.energy_by_bucket(daily), daily], tmp_path / "r.xlsx")
    wb = load_workbook(path)
    assert wb.sheetnames == ["Revenue", "total by day", "electricity by day"]
    assert len(wb["Revenue"]._charts) == 1 and len(wb["total by day"]._charts) == 1
    ws = wb["Revenue"]
    header = next(i for i, row in enumerate(ws.iter_rows(values_only=True), 1) if row[0] == "day")
    assert ws.cell(header + 5, 1).value == "2025-01-05" and ws.cell(header + 5, 2).value == 2
    text = write_csv(revenue, tmp_path / "r.csv").read_text(encoding="utf-8")
    assert text.startswith("\ufeffday,electricity,water,common area")
    assert "2025-01-05,2.00,0.00" in text


def test_loss_series_and_a_bypassed_room(sqlite_db, site):
    """28 days of building A: 3 % loss, until A-102's meter stops counting on day 15 while
    its supply stays on and the main meter keeps seeing its load (a bypass); A-201 was cut
    by fee control at the same time, so it consumes nothing for a good reason."""
    db = sqlite_db
    open_accounts(db, site)
    billing = make_billing({"pools": {"A": {"main": "M-A", "price": "0.6", "method": "equal"}}})
    start = dt.date(2025, 1, 1)
    totals = {"M-A": 0, "E-A-101": 0, "E-A-102": 0, "E-A-201": 0}
    for day in range(29):
        read(
            db,
            billing.calendar.capture_on(start + dt.timedelta(days=day)),
            {m: Decimal(v) / 1000 for m, v in totals.items()},
        )
        room = {"E-A-101": 4000, "E-A-102": 6000, "E-A-201": 5000}
        bypassed = day >= 14
        if bypassed:
            room["E-A-201"] = 0
        metered = dict(room)
        if bypassed:
            metered["E-A-102"] = 0
        for m in ("E-A-101", "E-A-102", "E-A-201"):
            totals[m] += metered[m]
        totals["M-A"] += round(sum(room.values()) / 0.97)
    with db.begin() as conn:
        conn.execute(
            t.meter_command.insert(),
            {
                "meter_id": "E-A-201",
                "kind": "TRIP",
                "params": {},
                "reason": "balance -0.10 <= 0",
                "requested_by": "fee-control",
                "state": "CONFIRMED",
                "attempts": 1,
                "next_attempt_at": local(2025, 1, 15, 9),
                "created_at": local(2025, 1, 15, 9),
                "updated_at": local(2025, 1, 15, 9),
                "finished_at": local(2025, 1, 15, 9),
            },
        )
    analysis = LossAnalysis(billing.site, MODELS, billing.settings)
    with db.read() as conn:
        series = analysis.series(
            conn, billing.settings.pools["A"], start, start + dt.timedelta(days=28)
        )
        [suspect] = analysis.suspects(conn, start + dt.timedelta(days=28), days=14)
        table = analysis.suspects_table(conn, start + dt.timedelta(days=28), days=14)
        loss = analysis.series_table(conn, start, start + dt.timedelta(days=28))
    assert len(series) == 28 and all(d.rate is not None for d in series)
    assert f"{float(series[0].rate):.3f}" == "0.030" and f"{float(series[-1].rate):.3f}" > "0.4"
    assert (suspect.room, suspect.account) == ("A-102", "A-102")
    assert suspect.recent_per_day == 0 and suspect.before_per_day == 6000
    assert suspect.score == 1
    assert "6.000 → 0.000 kWh/day with supply on" in suspect.evidence
    assert table.rows[0][1] == "A-102" and loss.rows[0][7] == "3.00"
    with (
        db.read() as conn,
        pytest.raises(RequestError, match="no common-area pool for building 'Z'"),
    ):
        analysis.suspects(conn, start, building="Z")
