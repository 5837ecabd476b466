"""Accounts on SQLite and PostgreSQL: open and close, pre-registered accounts opened with one
action, one or several meters, settings, fee state, and bulk opening from CSV with a
per-row report where a bad row changes nothing."""

from __future__ import annotations

from fractions import Fraction

import pytest

from openprepay.core import ledger
from openprepay.core.config.site import ControlMode
from openprepay.core.ledger import RequestError
from openprepay.core.model import MeterKind
from openprepay.core.prepay import accounts as acc
from openprepay.core.prepay.account_import import import_accounts
from openprepay.core.prepay.feecontrol import FeeThresholds
from openprepay.core.prepay.local_money import LOCAL_MONEY
from openprepay.core.rating.rounding import Accrual


def test_one_account_with_electric_and_water_meters(db, site, models, check):
    meters = (
        acc.resolve_meter(site, models, "E-101"),
        acc.resolve_meter(site, models, "W-101", "local"),
    )
    assert [(m.kind, m.control_mode) for m in meters] == [
        (MeterKind.ELECTRIC, ControlMode.REMOTE),
        (MeterKind.WATER, ControlMode.LOCAL),
    ]
    with db.begin() as conn:
        a = acc.create_account(
            conn,
            acc.AccountSpec(
                "A-101",
                "Alice",
                meters,
                room="A-101",
                tariff_id="residential",
                protected=True,
                notify=("email:alice@example.com", "sms:+8613800000000"),
            ),
        )
    assert a.state == acc.AccountState.OPEN and a.protected and a.fee_state == "NORMAL"
    assert [(m.meter_id, m.kind, m.control_mode) for m in a.meters] == [
        ("E-101", "electric", "REMOTE"),
        ("W-101", "water", "LOCAL"),
    ]
    assert a.thresholds == FeeThresholds()
    with db.read() as conn:
        assert acc.account_for_meter(conn, "W-101") == "A-101"
        assert [x.id for x in acc.list_accounts(conn, room="A-101")] == ["A-101"]
    check()


def test_resolve_meter_names_the_problem(site, models):
    with pytest.raises(RequestError, match="unknown meter 'E-999'"):
        acc.resolve_meter(site, models, "E-999")
    with pytest.raises(RequestError, match="expected REMOTE, LOCAL or POSTPAID"):
        acc.resolve_meter(site, models, "E-101", "SOMETIMES")
    with pytest.raises(RequestError, match="not installed"):
        acc.resolve_meter(site, {}, "E-101")


def test_preregistered_account_is_opened_with_one_action(db, check):
    with db.begin() as conn:
        pre = acc.create_account(conn, acc.AccountSpec("A-9", "next tenant"), open_now=False)
        assert pre.state == "PREREGISTERED" and pre.opened_at is None
        opened = acc.open_account(conn, "A-9")
        assert opened.state == "OPEN" and opened.opened_at is not None
        assert acc.open_account(conn, "A-9").opened_at == opened.opened_at  # no-op
    check()


def test_a_meter_belongs_to_one_live_account(db, account, snapshot):
    before = snapshot()
    spec = acc.AccountSpec("A-999", "squatter", (acc.MeterAssignment("E-101", MeterKind.ELECTRIC),))
    with pytest.raises(RequestError) as info, db.begin() as conn:
        acc.create_account(conn, spec)
    assert info.value.field == "meters" and "belongs to account 'A-101'" in info.value.message
    with pytest.raises(RequestError) as info, db.begin() as conn:
        acc.create_account(conn, acc.AccountSpec("A-101", "duplicate"))
    assert info.value.field == "id"
    assert snapshot() == before


def test_closing_frees_the_meters_and_keeps_the_purchase_counter(db, make_account, check):
    make_account("A-102", meters=(("E-102", MeterKind.ELECTRIC, ControlMode.LOCAL),))
    with db.begin() as conn:
        ledger.topup(conn, "A-102", 1000, "p1", local=LOCAL_MONEY)
    with pytest.raises(RequestError, match="refund or settle"), db.begin() as conn:
        acc.close_account(conn, "A-102")
    with db.begin() as conn:
        ledger.post_usage(conn, "A-102", "E-102", 1000, "final")
    with pytest.raises(RequestError, match="unfinished money command"), db.begin() as conn:
        acc.close_account(conn, "A-102")
    with db.begin() as conn:
        from openprepay.core.prepay import commands as cmds

        (c,) = cmds.claim_due(conn, 1)
        cmds.mark_confirmed(conn, c.id)
        closed = acc.close_account(conn, "A-102")
    assert closed.state == "CLOSED" and [m.meter_id for m in closed.meters] == ["E-102"]
    make_account("A-102b", meters=(("E-102", MeterKind.ELECTRIC, ControlMode.LOCAL),))
    with db.begin() as conn:
        r = ledger.topup(conn, "A-102b", 500, "p2", local=LOCAL_MONEY)
    assert r.buy_count == 2  # the meter's counter carries on across tenants
    check()


def test_update_account_validates(db, account):
    with db.begin() as conn:
        a = acc.update_account(
            conn,
            "A-101",
            thresholds=FeeThresholds(3000, 1000, 1000, 500, 0),
            protected=True,
            tariff_id="tou-2025",
        )
    assert (a.thresholds.alarm1_fen, a.protected, a.tariff_id) == (3000, True, "tou-2025")
    with pytest.raises(RequestError) as info, db.begin() as conn:
        acc.update_account(conn, "A-101", thresholds=FeeThresholds(100, 500))
    assert info.value.field == "alarm1"
    with pytest.raises(RequestError) as info, db.begin() as conn:
        acc.update_account(conn, "A-101", notify=["not a channel"])
    assert info.value.field == "notify"


def test_fee_state_is_stored_with_an_optimistic_check(db, account):
    with db.begin() as conn:
        assert acc.set_fee_state(conn, "A-101", "OVERDRAFT", expected="NORMAL")
        assert not acc.set_fee_state(conn, "A-101", "NORMAL", expected="ALARM1")
        assert acc.get_account(conn, "A-101").fee_state == "OVERDRAFT"
    with pytest.raises(RequestError) as info, db.begin() as conn:
        acc.set_fee_state(conn, "A-101", "SORT_OF_OK")
    assert info.value.field == "fee_state"


def test_usage_accrual_is_saved_with_the_posting(db, account, check):
    accrual = Accrual()
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 10000, "p1")
        for i in range(100):
            post = accrual.add(Fraction(707, 10))  # 0.707 yuan = 70.7 fen per reading
            ledger.post_usage(
                conn, "A-101", "E-101", post, f"r{i}", accrual=accrual.to_record(), cycle="2025"
            )
        saved = ledger.load_accrual(conn, "E-101", "2025")
        # A replay of the last (zero or not) period changes nothing.
        again = ledger.post_usage(
            conn, "A-101", "E-101", 0, "r99", accrual=accrual.to_record(), cycle="2025"
        )
    assert again.replayed
    restored = Accrual.from_record(saved)
    assert (restored.cum_exact_fen, restored.posted_fen) == (Fraction(7070), 7070)
    with db.read() as conn:
        assert ledger.balances(conn, "A-101").energy_fen == 10000 - 7070
    with pytest.raises(RequestError) as info, db.begin() as conn:
        ledger.post_usage(conn, "A-101", "E-101", 1, "x", accrual=accrual.to_record())
    assert info.value.field == "cycle"
    check()


def test_zero_fen_periods_still_advance_the_accrual(db, account):
    accrual = Accrual()
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 1000, "p1")
        for i in range(3):
            post = accrual.add(Fraction(1, 10))
            assert post == 0
            ledger.post_usage(
                conn, "A-101", "E-101", post, f"r{i}", accrual=accrual.to_record(), cycle="2025-03"
            )
        saved = ledger.load_accrual(conn, "E-101", "2025-03")
    assert Fraction(saved["cum_exact_fen"]) == Fraction(3, 10) and saved["period_key"] == "r2"


CSV_HEADER = (
    "id,name,room,meters,tariff,alarm1,alarm2,overdraft_limit,close_limit,hoard_limit,"
    "protected,notify,state,opening_balance\n"
)


def import_csv(db, site, text, **kw):
    from openprepay.core.model import DeviceModel, MeterKind, PointSpec

    models = {
        name: DeviceModel(name, "test", name, kind, "", (PointSpec("x", "", ""),))
        for name, kind in (("test.ELECTRIC", MeterKind.ELECTRIC), ("test.WATER", MeterKind.WATER))
    }
    with db.begin() as conn:
        return import_accounts(conn, site, models, text, **kw)


def test_import_creates_good_rows_and_reports_bad_rows_by_line_and_field(db, site, check, snapshot):
    text = CSV_HEADER + (
        "A-101,Alice,A-101,E-101;W-101:LOCAL,res,30.00,10,,,,yes,email:a@example.com,,12.50\n"
        "A-102,Bob,A-102,E-102,,,,,,,no,,PREREGISTERED,\n"
        "A-201,Carol,Z-9,E-201,,,,,,,,,,\n"  # line 4: unknown room
        "A-202,Dave,A-201,E-999,,,,,,,,,,\n"  # line 5: unknown meter
        "A-203,Eve,A-201,,,-5,,,,,,,,\n"  # line 6: negative amount
        "A-204,Frank,A-201,,,5,10,,,,,,,\n"  # line 7: alarm1 < alarm2
        "A-205,Grace,A-201,E-101,,,,,,,,,,\n"  # line 8: meter already on line 2
        "A-101,Heidi,A-201,,,,,,,,,,,\n"  # line 9: id already on line 2
        "A-206,Ivan,A-201,,,,,,,,maybe,,,\n"  # line 10: bad flag
        "A-207,Judy,A-201,,,,,,,1.234,,,,\n"  # line 11: 3 decimals
        "A-208,Ken,A-201\n"  # line 12: too few fields
        "A-209,Leo,A-201,E-201,,,,,,,,,OPEN,-1\n"  # line 13: negative opening balance
    )
    report = import_csv(db, site, text)
    assert sorted(report.created) == ["A-101", "A-102"]
    assert [(p.line, p.field) for p in report.problems] == [
        (4, "room"),
        (5, "meters"),
        (6, "alarm1"),
        (7, "alarm1"),
        (8, "meters"),
        (9, "id"),
        (10, "protected"),
        (11, "hoard_limit"),
        (12, "row"),
        (13, "opening_balance"),
    ]
    assert "unknown room 'Z-9'" in str(report.problems[0])
    with db.read() as conn:
        alice = acc.get_account(conn, "A-101")
        assert alice.energy_fen == 1250 and alice.protected and alice.tariff_id == "res"
        assert alice.thresholds.alarm1_fen == 3000
        assert [m.control_mode for m in alice.meters] == ["REMOTE", "LOCAL"]
        assert acc.get_account(conn, "A-102").state == "PREREGISTERED"
        assert acc.find_account(conn, "A-209") is None  # bad rows changed nothing
        assert acc.account_for_meter(conn, "E-201") is None
    check()
    # Importing the same file again changes nothing: good rows are unchanged now.
    before = snapshot()
    again = import_csv(db, site, text)
    assert again.created == [] and sorted(again.unchanged) == ["A-101", "A-102"]
    assert snapshot() == before


def test_import_all_or_nothing(db, site, snapshot):
    text = CSV_HEADER + "A-101,Alice,A-101,E-101,,,,,,,,,,\nA-102,Bob,NOPE,,,,,,,,,,,\n"
    before = snapshot()
    report = import_csv(db, site, text, all_or_nothing=True)
    assert report.rolled_back and report.created == []
    assert [(p.line, p.field) for p in report.problems] == [(3, "room")]
    assert snapshot() == before


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("", 1, "header"),
        ("id,name,colour\nA,B,red\n", 1, "colour"),
        ("name\nAlice\n", 1, "id"),
        ('id,name\n"A-1,Alice\n', 2, "row"),
    ],
)
def test_import_malformed_csv(db, site, snapshot, text, line, field):
    before = snapshot()
    report = import_csv(db, site, text)
    assert (report.problems[0].line, report.problems[0].field) == (line, field)
    assert report.created == []
    assert snapshot() == before


def test_import_uses_site_threshold_defaults_and_reports_progress(db, site):
    seen = []
    text = "id,name\n" + "".join(f"A-{i},tenant {i}\n" for i in range(5))
    report = import_csv(
        db,
        site,
        text,
        defaults=FeeThresholds(alarm1_fen=5000, alarm2_fen=1000),
        progress=lambda phase, n: seen.append((phase, n)),
    )
    assert len(report.created) == 5
    assert ("checked", 5) in seen and ("created", 5) in seen
    with db.read() as conn:
        assert acc.get_account(conn, "A-3").thresholds.alarm1_fen == 5000
