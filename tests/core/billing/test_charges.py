"""Custom charges: by area or fixed, monthly or once, prorated by actual days or 30-day
months, from the general wallet or billed, idempotent per period, never touching the
energy wallet or supply; bad configuration is named and changes nothing."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.billing.charges import charge_once
from openprepay.core.billing.runs import ar_code
from openprepay.core.billing.settings import Mode, check_billing
from openprepay.core.config.site import parse_site
from openprepay.core.db import schema as t
from openprepay.core.ledger import RequestError

from .conftest import MODELS, NOW, TZ, deposit, make_billing, open_accounts, site_data


def _charges(**charges):
    return {"charges": charges}


def _run(db, billing, period="2025-01"):
    with db.begin() as conn:
        return billing.charges.run(conn, period, actor="test", now=NOW)


def test_property_fee_by_area_from_the_general_wallet_or_owed(db, site, check):
    open_accounts(db, site)
    deposit(db, "A-101", 20000)
    billing = make_billing(
        _charges(
            property={"type": "property", "basis": "area", "rate": "2.50", "name": "Property fee"}
        )
    )
    [result] = _run(db, billing)
    assert result.state == "POSTED"
    assert {ln.account_id: ln.amount_fen for ln in result.lines} == {
        "A-101": 11375,  # 45.5 m² × 2.50
        "A-102": 15050,  # 60.2 m² × 2.50
        "A-201": 19575,  # 78.3 m² × 2.50
    }
    with db.read() as conn:
        b = ledger.balances(conn, "A-101")
        assert (b.general_fen, b.energy_fen) == (20000 - 11375, 0)
        items = {i.account_id: i for i in conn.execute(sa.select(t.billing_item)).all()}
        owed = conn.execute(
            sa.select(sa.func.sum(t.posting.c.amount_fen)).where(
                t.posting.c.ledger_account == ar_code("A-102")
            )
        ).scalar()
        commands = conn.execute(sa.select(sa.func.count()).select_from(t.meter_command)).scalar()
    assert items["A-101"].mode == "wallet" and items["A-102"].mode == "bill"
    assert "general wallet short" in items["A-102"].description
    assert owed == 15050
    assert commands == 0  # a charge never touches supply
    assert _run(db, billing)[0].unchanged  # the same period again changes nothing
    check()


def test_move_in_is_prorated_by_actual_days_or_30_day_months(db, site, check):
    opened = dt.datetime(2025, 1, 11, 9, tzinfo=TZ)  # 21 of January's 31 days left
    open_accounts(db, site, {"A-101": ("E-A-101",)}, opened_at=opened)
    for prorate, fen in (("actual_days", 7706), ("days_30", 7963), ("none", 11375)):
        billing = make_billing(
            _charges(
                **{
                    f"p_{prorate}": {
                        "type": "property",
                        "basis": "area",
                        "rate": "2.50",
                        "prorate": prorate,
                        "mode": "bill",
                    }
                }
            )
        )
        [result] = _run(db, billing)
        assert result.lines[0].amount_fen == fen, prorate  # 113.75 × 21/31, × 21/30, whole
    with db.read() as conn:
        assert (
            conn.execute(
                sa.select(t.billing_item.c.quantity).where(
                    t.billing_item.c.source == "charge:p_actual_days"
                )
            ).scalar()
            == "45.5 m² × 21/31 days"
        )
    check()


def test_fixed_monthly_and_one_off_charges(db, site, check):
    open_accounts(db, site)
    billing = make_billing(
        _charges(
            rent={"type": "rent", "amount": "1500.00", "rooms": ["A-101"], "mode": "bill"},
            cleaning={
                "type": "service",
                "amount": "80.00",
                "cycle": "once",
                "date": dt.date(2025, 2, 10),
                "buildings": ["A"],
                "mode": "bill",
            },
        )
    )
    jan = _run(db, billing, "2025-01")
    assert [(r.source, r.amount_fen) for r in jan] == [("charge:rent", 150000)]
    feb = _run(db, billing, "2025-02")
    assert [(r.source, r.amount_fen) for r in feb] == [
        ("charge:rent", 150000),
        ("charge:cleaning", 24000),
    ]
    with db.read() as conn:
        revenue = dict(
            conn.execute(
                sa.select(t.posting.c.ledger_account, sa.func.sum(t.posting.c.amount_fen))
                .where(t.posting.c.ledger_account.like("rev:%"))
                .group_by(t.posting.c.ledger_account)
            ).all()
        )
    assert revenue == {"rev:rent": -300000, "rev:service": -24000}
    check()


def test_one_off_charge_from_the_command_line_is_idempotent(db, site, check):
    open_accounts(db, site)
    deposit(db, "A-101", 5000)

    def once(amount=3000, reference="repair-17"):
        with db.begin() as conn:
            return charge_once(
                conn,
                "A-101",
                "service",
                amount,
                reference,
                description="door lock repair",
                mode=Mode.WALLET,
                period="2025-01",
                actor="cli:alice",
                now=NOW,
            )

    first = once()
    assert not first.replayed and once().replayed
    with pytest.raises(ledger.IdempotencyConflict):
        once(amount=4000)
    with db.read() as conn:
        assert ledger.balances(conn, "A-101").general_fen == 2000
        assert conn.execute(sa.select(sa.func.count()).select_from(t.billing_item)).scalar() == 1
    with db.begin() as conn, pytest.raises(RequestError, match="unknown account 'Z'"):
        charge_once(
            conn,
            "Z",
            "service",
            100,
            "x",
            description="d",
            mode=Mode.BILL,
            period="2025-01",
            actor="a",
            now=NOW,
        )
    check()


def test_bad_charges_are_named():
    data = site_data()
    data["billing"] = {
        "charges": {
            "p": {"type": "parking", "basis": "area", "rate": "-2"},
            "r": {"type": "rent", "cycle": "once"},
            "s": {"type": "service", "amount": "1.234", "rooms": ["Z-9"]},
        }
    }
    problems = {str(e) for e in check_billing(parse_site(data), MODELS)}
    assert (
        "billing.charges.p.type: expected one of property, rent, service, custom; got 'parking'"
        in problems
    )
    assert "billing.charges.p.rate: expected more than 0, got -2" in problems
    assert 'billing.charges.r.amount: missing (required): CNY, e.g. "1500.00"' in problems
    assert (
        "billing.charges.r.date: missing (required for cycle once): the date it is charged"
        in problems
    )
    assert "billing.charges.s.amount: at most 2 decimal places, got 1.234" in problems
    assert "billing.charges.s.rooms[0]: unknown room 'Z-9'" in problems
