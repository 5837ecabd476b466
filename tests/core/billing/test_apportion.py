"""Common-area apportionment: worked examples D, E, F and G of domain.md §4 to the fen, the
sum of every allocation equals its total, re-running a period changes nothing, a corrected
reading reverses and re-posts, negative loss is a fault with nothing allocated, a loss
above the cap is held for approval, and the whole thing can be switched off per site."""

from __future__ import annotations

import random
import re
from fractions import Fraction

import pytest
import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.billing.apportion import allocate
from openprepay.core.billing.runs import ar_code
from openprepay.core.config.site import parse_site
from openprepay.core.db import schema as t
from openprepay.core.errors import ConfigError
from openprepay.core.ledger import RequestError

from .conftest import FEB, JAN, NOW, deposit, make_billing, open_accounts, read

# -- the allocation itself ------------------------------------------------------------------


def test_example_d_area_split_to_the_fen():
    shares = allocate(100000, [("A", "45.5"), ("B", "60.2"), ("C", "78.3")])
    assert shares == {"A": 24728, "B": 32718, "C": 42554}  # 247.28 / 327.18 / 425.54
    assert sum(shares.values()) == 100000  # naive half-up would give 999.99


def test_example_e_equal_split_extra_fen_to_the_lowest_room_id():
    assert allocate(100000, [("C", 1), ("B", 1), ("A", 1)]) == {"A": 33334, "B": 33333, "C": 33333}


def test_example_f_loss_over_100_households():
    shares = allocate(8250, [(f"R{i:03d}", 1) for i in range(100)])
    assert sum(shares.values()) == 8250  # naive 0.83 each would collect 83.00
    assert sorted(shares.values()).count(83) == 50 and sorted(shares.values()).count(82) == 50
    assert all(shares[f"R{i:03d}"] == 83 for i in range(50))  # ties: lowest room ids first


def test_example_g_loss_by_consumption():
    assert allocate(3000, [("A", 300), ("B", 500), ("C", 150)]) == {"A": 947, "B": 1579, "C": 474}


def test_ties_go_to_the_larger_weight_then_the_lower_room_id():
    # 10 fen over weights 1, 1, 2, 2 → exact 1.67 1.67 3.33 3.33: floors 8, 2 fen left to
    # the largest remainders (the 1-weights, .67); then 1 fen over 3 equal: the lowest id.
    assert allocate(10, [("d", 2), ("a", 1), ("c", 2), ("b", 1)]) == {
        "a": 2,
        "b": 2,
        "c": 3,
        "d": 3,
    }
    assert allocate(1, [("z", 1), ("y", 2)]) == {"y": 1, "z": 0}  # larger weight first


def test_negative_total_is_split_as_its_absolute_value():
    assert allocate(-100000, [("A", "45.5"), ("B", "60.2"), ("C", "78.3")]) == {
        "A": -24728,
        "B": -32718,
        "C": -42554,
    }


def test_every_allocation_adds_up_and_ignores_input_order():
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 40)
        weights = [
            (f"R{i:03d}", Fraction(rng.randint(0, 9999), rng.randint(1, 100))) for i in range(n)
        ]
        if not any(w for _, w in weights):
            continue
        total = rng.randint(-(10**7), 10**7)
        shares = allocate(total, weights)
        assert sum(shares.values()) == total
        shuffled = list(weights)
        rng.shuffle(shuffled)
        assert allocate(total, shuffled) == shares
        exact_w = sum(w for _, w in weights)
        for room, w in weights:  # each share within one fen of its exact value
            assert abs(Fraction(abs(total)) * w / exact_w - abs(shares[room])) < 1


def test_bad_weights_are_refused():
    with pytest.raises(RequestError, match="add up to 0"):
        allocate(100, [("A", 0), ("B", 0)])
    with pytest.raises(RequestError, match="negative"):
        allocate(100, [("A", -1), ("B", 2)])


# -- pools on the database ------------------------------------------------------------------


def _pool(**changes):
    pool = {"main": "M-A", "price": "0.6000", "method": "consumption", "public": []}
    pool.update(changes)
    return {"pools": {"A": pool}}


def _postings(db, key):
    with db.read() as conn:
        journal = conn.execute(
            sa.select(t.journal.c.id).where(t.journal.c.idempotency_key == key)
        ).scalar()
        return dict(
            conn.execute(
                sa.select(t.posting.c.ledger_account, t.posting.c.amount_fen).where(
                    t.posting.c.journal_id == journal
                )
            ).all()
        )


def test_example_g_through_the_meters(db, site, check):
    """Main 1000 kWh, subs 300/500/150, loss 50 kWh × 0.60 = 30.00 by consumption."""
    open_accounts(db, site)
    read(db, JAN, {"M-A": 10000, "E-A-101": 1000, "E-A-102": 2000, "E-A-201": 3000})
    read(db, FEB, {"M-A": 11000, "E-A-101": 1300, "E-A-102": 2500, "E-A-201": 3150})
    billing = make_billing(_pool(mode="bill"))
    with db.begin() as conn:
        [result] = billing.apportionment.run(conn, "2025-01", actor="test", now=NOW)
    assert result.state == "POSTED" and result.amount_fen == 3000
    assert result.detail["loss_energy"] == 50_000 and result.detail["loss_rate"] == "5.00%"
    assert {ln.account_id: ln.amount_fen for ln in result.lines} == {
        "A-101": 947,
        "A-102": 1579,
        "A-201": 474,
    }
    assert _postings(db, "pool:A:2025-01") == {
        ar_code("A-101"): 947,
        ar_code("A-102"): 1579,
        ar_code("A-201"): 474,
        "rev:public_energy": -3000,
    }
    with db.read() as conn:
        items = conn.execute(sa.select(t.billing_item)).all()
    assert len(items) == 3 and all(i.kind == "public_energy" and i.mode == "bill" for i in items)
    assert "line loss 50.00 kWh × 0.6000 = 30.00, by consumption: 300.00 of 950.00 kWh" in next(
        i.description for i in items if i.account_id == "A-101"
    )
    check()


def test_example_d_public_meter_by_area_from_the_general_wallet(db, site, check):
    """A public meter of 1666.67 kWh × 0.60 = 1000.00, shared by area (example D); the
    main meter shows no loss. Tenants with money in their general wallet pay from it; a
    wallet that is short owes its whole share (AR)."""
    open_accounts(db, site)
    deposit(db, "A-101", 50000)
    deposit(db, "A-102", 100)
    read(db, JAN, {"M-A": 0, "P-A": 0, "E-A-101": 0, "E-A-102": 0, "E-A-201": 0})
    read(
        db, FEB, {"M-A": "1766.667", "P-A": "1666.667", "E-A-101": 30, "E-A-102": 50, "E-A-201": 20}
    )
    billing = make_billing(_pool(public=["P-A"], public_method="area"))
    with db.begin() as conn:
        [result] = billing.apportionment.run(conn, "2025-01", actor="test", now=NOW)
    assert result.state == "POSTED"
    assert {ln.room: ln.amount_fen for ln in result.lines} == {
        "A-101": 24728,
        "A-102": 32718,
        "A-201": 42554,
    }
    assert sum(ln.amount_fen for ln in result.lines) == 100000
    postings = _postings(db, "pool:A:2025-01")
    assert postings[ledger.wallet_code("A-101", "general")] == 24728  # paid from the wallet
    assert postings[ar_code("A-102")] == 32718  # 1.00 in the wallet: the whole share owed
    assert postings[ar_code("A-201")] == 42554
    with db.read() as conn:
        assert ledger.balances(conn, "A-101").general_fen == 50000 - 24728
        assert ledger.balances(conn, "A-102").general_fen == 100
    check()


def test_example_e_equal_split_through_the_meters(db, site, check):
    open_accounts(db, site)
    read(db, JAN, {"M-A": 0, "E-A-101": 0, "E-A-102": 0, "E-A-201": 0})
    read(db, FEB, {"M-A": 1000, "E-A-101": 0, "E-A-102": 0, "E-A-201": 0})  # all loss
    billing = make_billing(_pool(price="1.0000", method="equal", loss_cap_pct=100, mode="bill"))
    with db.begin() as conn:
        [result] = billing.apportionment.run(conn, "2025-01", actor="test", now=NOW)
    assert {ln.room: ln.amount_fen for ln in result.lines} == {
        "A-101": 33334,
        "A-102": 33333,
        "A-201": 33333,
    }
    check()


def test_rerun_changes_nothing_and_a_correction_reverses_and_reposts(db, site, check):
    open_accounts(db, site)
    read(db, JAN, {"M-A": 10000, "E-A-101": 1000, "E-A-102": 2000, "E-A-201": 3000})
    read(db, FEB, {"M-A": 11000, "E-A-101": 1300, "E-A-102": 2500, "E-A-201": 3150})
    billing = make_billing(_pool(mode="bill"))

    def run():
        with db.begin() as conn:
            return billing.apportionment.run(conn, "2025-01", actor="test", now=NOW)[0]

    def state():
        with db.read() as conn:
            return (
                conn.execute(sa.select(sa.func.count()).select_from(t.journal)).scalar(),
                conn.execute(sa.select(sa.func.count()).select_from(t.posting)).scalar(),
                conn.execute(sa.select(sa.func.count()).select_from(t.billing_item)).scalar(),
                conn.execute(sa.select(sa.func.count()).select_from(t.billing_run)).scalar(),
            )

    first = run()
    before = state()
    again = run()
    assert again.unchanged and again.revision == first.revision == 1
    assert state() == before  # re-running the period changes nothing
    # The main meter was misread: 1010 kWh used, not 1000 → loss 60 kWh = 36.00.
    from openprepay.core.billing.readings import record_reading

    with db.begin() as conn:  # an operator records the right reading
        record_reading(conn, "M-A", FEB, "11010", recorded_by="cli:alice")
    corrected = run()
    assert corrected.revision == 2 and corrected.reversed_revision == 1
    assert corrected.amount_fen == 3600
    with db.read() as conn:
        receivable = {
            code: int(total)
            for code, total in conn.execute(
                sa.select(t.posting.c.ledger_account, sa.func.sum(t.posting.c.amount_fen))
                .where(t.posting.c.ledger_account.like("asset:ar:%"))
                .group_by(t.posting.c.ledger_account)
            ).all()
        }
        revenue = -conn.execute(
            sa.select(sa.func.sum(t.posting.c.amount_fen)).where(
                t.posting.c.ledger_account == "rev:public_energy"
            )
        ).scalar()
        live = conn.execute(
            sa.select(sa.func.sum(t.billing_item.c.amount_fen)).where(
                t.billing_item.c.void.is_(False)
            )
        ).scalar()
        runs = conn.execute(sa.select(t.billing_run.c.revision, t.billing_run.c.state)).all()
    assert sum(receivable.values()) == revenue == live == 3600  # the old one is reversed
    assert sorted(runs) == [(1, "REVERSED"), (2, "POSTED")]
    assert run().unchanged
    check()


def test_negative_loss_is_a_meter_fault_and_nothing_is_allocated(db, site, check):
    open_accounts(db, site)
    read(db, JAN, {"M-A": 10000, "E-A-101": 1000, "E-A-102": 2000, "E-A-201": 3000})
    read(db, FEB, {"M-A": 10900, "E-A-101": 1300, "E-A-102": 2500, "E-A-201": 3150})  # 900 < 950
    billing = make_billing(_pool())
    with db.begin() as conn:
        [result] = billing.apportionment.run(conn, "2025-01", actor="test", now=NOW)
    assert result.state == "FAULT" and "negative loss" in result.reason
    assert result.journal_id is None and not result.lines
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.journal)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(t.billing_item)).scalar() == 0
    from openprepay.core.billing.service import MonthEndReport

    [alert] = MonthEndReport("2025-01", pools=[result]).alerts()
    assert (alert.pool_id, alert.state) == ("A", "FAULT")
    check()


def test_loss_above_the_cap_is_held_until_approved(db, site, check):
    open_accounts(db, site)
    read(db, JAN, {"M-A": 10000, "E-A-101": 1000, "E-A-102": 2000, "E-A-201": 3000})
    read(db, FEB, {"M-A": 11000, "E-A-101": 1300, "E-A-102": 2400, "E-A-201": 3150})  # 15 %
    billing = make_billing(_pool(mode="bill"))
    with db.begin() as conn:
        [held] = billing.apportionment.run(conn, "2025-01", actor="test", now=NOW)
    assert held.state == "HELD" and "15.00% of the main meter is above the cap 8.00%" in held.reason
    assert held.journal_id is None
    with db.begin() as conn:  # running again does not post it either
        assert billing.apportionment.run(conn, "2025-01", actor="test", now=NOW)[0].unchanged
    from openprepay.core.billing import runs

    with db.begin() as conn:
        posted = runs.approve(conn, "pool:A", "2025-01", actor="cli:boss", now=NOW)
    assert posted.state == "POSTED" and posted.amount_fen == 9000
    assert sum(ln.amount_fen for ln in posted.lines) == 9000
    with db.read() as conn:
        row = conn.execute(sa.select(t.billing_run)).one()
    assert row.approved_by == "cli:boss"
    with db.begin() as conn, pytest.raises(RequestError, match="has no run for 2025-02"):
        runs.approve(conn, "pool:A", "2025-02", actor="x", now=NOW)
    check()


def test_missing_and_stale_readings(db, site, check):
    open_accounts(db, site)
    read(db, JAN, {"M-A": 10000, "E-A-101": 1000, "E-A-102": 2000})
    read(db, FEB, {"M-A": 11000, "E-A-101": 1300, "E-A-102": 2500, "E-A-201": 3150})
    billing = make_billing(_pool())
    with db.begin() as conn:
        [result] = billing.apportionment.run(conn, "2025-01", actor="test", now=NOW)
    assert (
        result.state == "NO_DATA" and "no reading of E-A-201 at the period's start" in result.reason
    )
    # The reading exists but was taken two days before the instant (the meter was silent).
    from openprepay.core.billing.readings import Reading, save_captured

    with db.begin() as conn:
        save_captured(
            conn, [Reading("E-A-201", JAN, JAN.replace(day=JAN.day - 2), 3_000_000)], now=NOW
        )
    with db.begin() as conn:
        [result] = billing.apportionment.run(conn, "2025-01", actor="test", now=NOW)
    assert result.state == "HELD" and "E-A-201 are older than 2 h" in result.reason
    check()


def test_vacant_rooms_are_the_owners_or_left_out(db, site, check):
    open_accounts(db, site, {"A-101": ("E-A-101",), "A-102": ("E-A-102",)})  # A-201 empty
    read(db, JAN, {"M-A": 0, "E-A-101": 0, "E-A-102": 0, "E-A-201": 0})
    read(db, FEB, {"M-A": 100, "E-A-101": 30, "E-A-102": 50, "E-A-201": 15})
    with db.begin() as conn:
        [owner] = make_billing(_pool(method="equal", mode="bill")).apportionment.run(
            conn, "2025-01", actor="t", now=NOW
        )
    assert {ln.room: (ln.account_id, ln.amount_fen) for ln in owner.lines} == {
        "A-101": ("A-101", 100),
        "A-102": ("A-102", 100),
        "A-201": (None, 100),
    }
    assert _postings(db, "pool:A:2025-01")["exp:common_area_vacant"] == 100
    with db.begin() as conn:
        [excluded] = make_billing(
            _pool(method="equal", mode="bill", vacant="exclude")
        ).apportionment.run(conn, "2025-01", actor="t", now=NOW)
    assert {ln.room: ln.amount_fen for ln in excluded.lines} == {"A-101": 150, "A-102": 150}
    assert excluded.revision == 2 and excluded.reversed_revision == 1
    check()


def test_switched_off_per_site(db, site):
    open_accounts(db, site)
    read(db, JAN, {"M-A": 10000, "E-A-101": 1000, "E-A-102": 2000, "E-A-201": 3000})
    read(db, FEB, {"M-A": 11000, "E-A-101": 1300, "E-A-102": 2500, "E-A-201": 3150})
    billing = make_billing({"apportionment": False, **_pool()})
    with db.begin() as conn:
        assert billing.apportionment.run(conn, "2025-01", actor="t", now=NOW) == []
        assert conn.execute(sa.select(sa.func.count()).select_from(t.journal)).scalar() == 0


def test_bad_pool_configuration_is_named():
    from openprepay.core.billing.settings import check_billing

    from .conftest import MODELS, site_data

    data = site_data()
    data["billing"] = {
        "pools": {
            "A": {"main": "M-A", "price": "0.60", "method": "floor"},
            "B": {"main": "M-B", "price": "-1", "method": "ratio", "ratios": {"B-101": "1"}},
        },
        "areas": {"A-101": -45.5, "Z-1": 3},
    }
    problems = [str(e) for e in check_billing(parse_site(data), MODELS)]
    assert (
        "billing.pools.A.method: expected one of area, equal, consumption, ratio; got 'floor'"
        in problems
    )
    assert "billing.pools.B.price: expected at least 0, got -1" in problems
    assert "billing.areas.A-101: expected more than 0, got -45.5" in problems
    assert "billing.areas.Z-1: unknown room 'Z-1' (rooms are defined under [rooms])" in problems
    data["billing"] = {
        "pools": {"B": {"main": "M-B", "price": "1", "method": "ratio", "ratios": {"B-101": "1"}}}
    }
    with pytest.raises(
        ConfigError,
        match=re.escape("billing.pools.B.ratios: method ratio needs a weight for rooms B-102"),
    ):
        from openprepay.core.billing.settings import load_billing

        load_billing(parse_site(data), MODELS)


def test_period_bounds_follow_the_freeze_day_and_hour():
    from openprepay.core.billing.periods import Calendar

    billing = make_billing({"freeze_day": 15, "freeze_hour": 8})
    cal: Calendar = billing.calendar
    start, end = cal.bounds("2025-01")
    assert start.astimezone(cal.tz).isoformat() == "2025-01-15T08:00:00+08:00"
    assert end.astimezone(cal.tz).isoformat() == "2025-02-15T08:00:00+08:00"
    assert (
        cal.period_of(end) == "2025-02"
        and cal.period_of(end.replace(second=0) - (end - start) / 2) == "2025-01"
    )
    assert cal.capture_instant(start) == start
    with pytest.raises(RequestError, match="expected a month such as 2025-03"):
        cal.bounds("2025-13")
