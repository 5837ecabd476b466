"""Energy reports that say what they do not know (issue 14 §4): year-on-year and
month-on-month show "no data" — an empty cell and a note — where there was none, never
0.000 or a %, and keep a real zero; the pools' main and public meters are listed and marked;
a meter without a figure says why (no readings, not read since, replaced, a register that
went backwards)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from openprepay.core.db import schema as t

from .conftest import FEB, JAN, NOW, make_billing, open_accounts, read
from .test_reports_bases import local, reports_of

JANUARY = (dt.date(2025, 1, 1), dt.date(2025, 2, 1))
DAY = dt.timedelta(days=1)


def _usage_day(db, meter, account, day, total):
    with db.begin() as conn:
        conn.execute(
            t.meter_usage_day.insert(),
            {
                "meter_id": meter,
                "day": day,
                "account_id": account,
                "energy": total,
                "by_rate": {"all": total},
                "updated_at": NOW,
            },
        )


def _last_read(db, meter, account, at):
    """The engine's rating state of a meter: its last rated reading at `at`."""
    with db.begin() as conn:
        conn.execute(
            t.prepay_meter.insert(),
            {
                "meter_id": meter,
                "account_id": account,
                "rating_state": {"last_t": int(at.timestamp())},
                "updated_at": at,
            },
        )


def _rows(table):
    return {r[0]: dict(zip(table.columns, r, strict=True)) for r in table.rows}


def test_comparisons_show_no_data_apart_from_a_real_zero(db, site):
    # have tenants since December 2024; A-201 is vacant and never read.
    open_accounts(
        db, site, {"A-101": ("E-A-101",), "A-102": ("E-A-102",)}, opened_at=local(2024, 12, 1)
    )
    _usage_day(db, "E-A-101", "A-101", "2025-01-05", 10000)
    _usage_day(db, "E-A-101", "A-101", "2024-12-05", 4000)
    _usage_day(db, "E-A-101", None, "2024-01-20", 5000)  # a previous tenant a year ago
    _usage_day(db, "E-A-102", "A-102", "2025-01-07", 2500)  # nothing in December: a real 0
    _last_read(db, "E-A-102", "A-102", local(2025, 1, 31, 23))  # (the engine reads it)
    read(db, JAN, {"M-A": 10000})
    read(db, FEB, {"M-A": 10800})
    reports = reports_of(make_billing())
    with db.read() as conn:
        table = reports.monthly(conn, "2025-01")
    rows = _rows(table)
    a101, a102, a201 = rows["A-101"], rows["A-102"], rows["A-201"]
    assert (a101["2024-01 kWh"], a101["YoY %"]) == (Decimal("5"), Decimal("100.0"))
    assert (a101["2024-12 kWh"], a101["MoM %"]) == (Decimal("4"), Decimal("150.0"))
    # A-102 was nobody's a year ago: no data, not 0.000 and no %.
    assert (a102["2024-01 kWh"], a102["YoY %"]) == (None, None)
    # In December it was on its account and used nothing: a real zero, and no % from 0.
    assert (a102["2024-12 kWh"], a102["MoM %"]) == (Decimal("0.000"), None)
    # no data this month either, and the note says why.
    assert a201["total kWh"] is None and a201["2024-01 kWh"] is None
    assert a201["note"].startswith("no data: E-A-201 no readings in range")
    assert any("An empty energy cell is no data" in n for n in table.notes)
    # The pools' main and public meters follow, marked, from their registers.
    main, public = rows["M-A (main meter, pool A)"], rows["P-A (public meter, pool A)"]
    assert main["total kWh"] == Decimal("800") and main["2024-01 kWh"] is None
    assert main["note"] == "common area: not in the total"
    assert public["total kWh"] is None and public["note"].startswith("no data: no readings")
    total = dict(zip(table.columns, table.total, strict=True))
    assert total["total kWh"] == Decimal("12.5")  # rooms only


def test_every_meter_is_listed_with_its_figure_or_why_it_has_none(db, site):
    open_accounts(db, site, opened_at=local(2024, 12, 1))
    _usage_day(db, "E-A-101", "A-101", "2025-01-05", 4000)
    _last_read(db, "E-A-102", "A-102", local(2025, 1, 20, 10))  # read, used nothing
    # Main meter A: read on the 1st, 2nd, 4th and 5th only.
    for day, kwh in ((0, 1000), (1, 1030), (3, 1100), (4, 1150)):
        read(db, JAN + day * DAY, {"M-A": kwh})
    read(db, local(2024, 12, 20), {"M-B": 500})  # silent since December
    read(db, JAN, {"E-B-102": 300})
    read(db, JAN + DAY, {"E-B-102": 290})  # a bad reading: the register went backwards
    with db.begin() as conn:
        conn.execute(
            t.meter_replacement.insert(),
            {
                "meter_id": "E-B-101",
                "at": local(2025, 1, 10, 15),
                "old_serial": "1",
                "new_serial": "2",
                "final_reading": {"energy_total": "100"},
                "initial_reading": {"energy_total": "0"},
                "account_id": None,
                "reason": "broken display",
                "recorded_by": "t",
                "created_at": local(2025, 1, 10, 15),
            },
        )
    reports = reports_of(make_billing())
    with db.read() as conn:
        table = reports.meter_energy(conn, *JANUARY, "day")
        summary = reports.energy_by_bucket(table)
    listed = {r[0] for r in table.rows}
    assert listed == set(reports.scope.meters("electricity"))  # none left out
    by = {(r[0], r[3]): dict(zip(table.columns, r, strict=True)) for r in table.rows}
    day1 = by[("M-A", "2025-01-01")]
    assert day1["role"] == "main meter, pool A" and day1["total"] == Decimal("30")
    assert "no figure on 2025-01-02" in day1["note"]
    assert by[("M-A", "2025-01-04")]["total"] == Decimal("50")

    def only(meter):
        [row] = [dict(zip(table.columns, r, strict=True)) for r in table.rows if r[0] == meter]
        return row

    assert only("E-A-102")["total"] == Decimal("0") and only("E-A-102")["note"] == (
        "read, nothing used"
    )
    assert only("P-A")["role"] == "public meter, pool A" and only("P-A")["total"] is None
    assert only("P-A")["note"] == (
        "no figure: no readings in range (no account, and no reading captured or entered)"
    )
    assert only("M-B")["note"] == "no figure: not read since 2024-12-19 23:59"
    assert only("E-B-101")["note"].startswith("no figure: meter replaced 2025-01-10 15:00")
    assert "register went backwards 2025-01-01 00:00 → 2025-01-02 00:00" in only("E-B-102")["note"]
    # On an account, but the engine never read it: no data, not "nothing used".
    assert only("E-A-201")["total"] is None and only("E-A-201")["note"] == (
        "no figure: no readings in range (on an account, but not read by the engine)"
    )
    # The total and the chart leave the main meters out (their energy holds the rooms').
    assert table.total[4] == Decimal("4")
    assert dict((r[0], r[1]) for r in summary.rows)["2025-01-05"] == Decimal("4")
