"""The ledger on SQLite and PostgreSQL: top-ups, usage, emergency credit, reversals,
generic journals; idempotent replays; refused requests change nothing; every invariant
holds after every operation."""

from __future__ import annotations

from decimal import Decimal

import pytest

from openprepay.core import ledger
from openprepay.core.config.site import ControlMode
from openprepay.core.ledger import IdempotencyConflict, Posting, RequestError
from openprepay.core.model import MeterKind
from openprepay.core.prepay import accounts as acc
from openprepay.core.prepay import commands as cmds
from openprepay.core.prepay.local_money import LOCAL_MONEY


def test_topup_posts_a_balanced_journal_and_returns_the_balance(db, account, check):
    with db.begin() as conn:
        r = ledger.topup(conn, "A-101", 10000, "pay-1", channel="wechat", requested_by="t")
    assert (r.balance_fen, r.replayed, r.amount_fen) == (10000, False, 10000)
    with db.read() as conn:
        j = ledger.get_journal(conn, r.journal_id)
        assert j.kind == "topup" and j.idempotency_key == "topup:pay-1"
        assert set(j.postings) == {
            Posting("asset:psp_clearing:wechat", 10000),
            Posting("liab:wallet:A-101:energy", -10000),
        }
        assert ledger.balances(conn, "A-101").energy_fen == 10000
    check()


def test_topup_replayed_ten_times_posts_once(db, account, check, snapshot):
    with db.begin() as conn:
        first = ledger.topup(conn, "A-101", 2550, "wx-4200001")
    before = snapshot()
    for _ in range(10):
        with db.begin() as conn:
            again = ledger.topup(conn, "A-101", 2550, "wx-4200001")
        assert again.replayed and again.journal_id == first.journal_id
        assert again.balance_fen == 2550
    assert snapshot() == before
    report = check()
    assert report.journals == 1


def test_same_reference_for_another_request_is_a_conflict(db, account, make_account, snapshot):
    make_account("A-201", meters=())
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 1000, "ref-1")
    before = snapshot()
    for other in [
        dict(account_id="A-101", amount_fen=2000),
        dict(account_id="A-201", amount_fen=1000),
    ]:
        with pytest.raises(IdempotencyConflict) as info, db.begin() as conn:
            ledger.topup(conn, other["account_id"], other["amount_fen"], "ref-1")
        assert info.value.field == "reference"
    assert snapshot() == before


@pytest.mark.parametrize(
    ("amount", "field", "message"),
    [
        (-500, "amount", "expected more than 0.00, got -5.00"),
        (0, "amount", "expected more than 0.00, got 0.00"),
        (100_000_000, "amount", "above the meter capacity 999999.99"),
        (500_001, "amount", "hoarding limit 5000.00"),
        (Decimal("1.5"), "amount", "expected an integer number of fen"),
        (12.5, "amount", "expected an integer number of fen"),
    ],
)
def test_bad_amounts_are_refused_and_change_nothing(db, account, snapshot, amount, field, message):
    before = snapshot()
    with pytest.raises(RequestError) as info, db.begin() as conn:
        ledger.topup(conn, "A-101", amount, "bad-1")
    assert info.value.field == field and message in info.value.message
    assert snapshot() == before


def test_hoarding_limit_counts_the_balance_and_zero_disables_it(db, make_account, check):
    make_account("A-1", meters=(), thresholds=acc.Thresholds(hoard_limit_fen=10000))
    make_account("A-2", meters=(), thresholds=acc.Thresholds(hoard_limit_fen=0))
    with db.begin() as conn:
        ledger.topup(conn, "A-1", 6000, "h1")
        assert ledger.topup(conn, "A-1", 4000, "h2").balance_fen == 10000  # == limit is fine
    with pytest.raises(RequestError, match=r"hoarding limit 100\.00"), db.begin() as conn:
        ledger.topup(conn, "A-1", 1, "h3")
    with db.begin() as conn:
        ledger.topup(conn, "A-2", 90_000_000, "h4")
    with pytest.raises(RequestError, match="capacity"), db.begin() as conn:
        ledger.topup(conn, "A-2", 10_000_000, "h5")  # 999,999.99 holds even without a limit
    check()


def test_unknown_preregistered_and_closed_accounts_are_refused(db, snapshot):
    with db.begin() as conn:
        acc.create_account(conn, acc.AccountSpec("PRE", "later"), open_now=False)
        acc.create_account(conn, acc.AccountSpec("GONE", "moved out"))
        acc.close_account(conn, "GONE")
    before = snapshot()
    for account_id, text in [
        ("NOPE", "unknown account 'NOPE'"),
        ("PRE", "pre-registered"),
        ("GONE", "closed"),
    ]:
        with pytest.raises(RequestError) as info, db.begin() as conn:
            ledger.topup(conn, account_id, 100, f"x-{account_id}")
        assert info.value.field == "account" and text in info.value.message
    assert snapshot() == before


def test_bad_reference_and_channel_are_refused(db, account):
    for reference in ["", "  ", "has space", "x" * 161]:
        with pytest.raises(RequestError) as info, db.begin() as conn:
            ledger.topup(conn, "A-101", 100, reference)
        assert info.value.field == "reference"
    with pytest.raises(RequestError) as info, db.begin() as conn:
        ledger.topup(conn, "A-101", 100, "ok", channel="We Chat")
    assert info.value.field == "channel"


def test_usage_deducts_into_revenue_by_meter_kind_and_replays(db, make_account, check):
    make_account(
        "A-101",
        meters=(
            ("E-101", MeterKind.ELECTRIC, ControlMode.REMOTE),
            ("W-101", MeterKind.WATER, ControlMode.REMOTE),
        ),
    )
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 5000, "p1")
        e = ledger.post_usage(conn, "A-101", "E-101", 1234, "2025-01-01T10:00")
        w = ledger.post_usage(conn, "A-101", "W-101", 300, "2025-01-01T10:00")
        again = ledger.post_usage(conn, "A-101", "E-101", 1234, "2025-01-01T10:00")
        zero = ledger.post_usage(conn, "A-101", "E-101", 0, "2025-01-01T11:00")
    assert (e.balance_fen, w.balance_fen) == (3766, 3466)
    assert again.replayed and again.journal_id == e.journal_id
    assert zero.journal_id is None and zero.balance_fen == 3466
    with db.read() as conn:
        assert ledger.get_journal(conn, e.journal_id).postings[1] == Posting(
            "rev:electricity", -1234
        )
        assert ledger.get_journal(conn, w.journal_id).postings[1] == Posting("rev:water", -300)
    check()


def test_usage_may_overdraw_and_rejects_foreign_meters(db, account, make_account, check):
    make_account("A-201", meters=(("E-201", MeterKind.ELECTRIC, ControlMode.REMOTE),))
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 100, "p1")
        r = ledger.post_usage(conn, "A-101", "E-101", 250, "t1")
    assert r.balance_fen == -150
    with pytest.raises(RequestError) as info, db.begin() as conn:
        ledger.post_usage(conn, "A-101", "E-201", 10, "t2")
    assert info.value.field == "meter"
    with pytest.raises(RequestError) as info, db.begin() as conn:
        ledger.post_usage(conn, "A-101", "E-101", -5, "t3")
    assert info.value.field == "amount"
    check()


def test_incremental_deductions_sum_to_the_rounded_total(db, account, check):
    """domain.md §2.3: 70.70 posted as many small deductions, no penny drift (the caller
    posts round(cum_exact) − posted; the ledger adds exactly what it is given)."""
    exact = [Decimal("0.707")] * 100  # rounding each step would post 0.71 x 100 = 71.00
    posted = 0
    cum = Decimal(0)
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 10000, "p1")
        for i, step in enumerate(exact):
            cum += step
            target = int((cum * 100).quantize(Decimal(1)))
            ledger.post_usage(conn, "A-101", "E-101", target - posted, f"t{i}")
            posted = target
        assert ledger.balances(conn, "A-101").energy_fen == 10000 - 7070
    check()


def test_emergency_credit_is_repaid_by_the_next_topup(db, account, check):
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 500, "p1")
        ledger.post_usage(conn, "A-101", "E-101", 500, "t1")
        granted = ledger.grant_emergency_credit(conn, "A-101", 500, "ec:A-101:1")
        assert ledger.balances(conn, "A-101").energy_fen == 500
        again = ledger.grant_emergency_credit(conn, "A-101", 500, "ec:A-101:1")
        assert again.replayed and again.journal.id == granted.journal.id
    check()
    with pytest.raises(RequestError, match="still outstanding"), db.begin() as conn:
        ledger.grant_emergency_credit(conn, "A-101", 500, "ec:A-101:2")
    with db.begin() as conn:
        ledger.post_usage(conn, "A-101", "E-101", 300, "t2")
        r = ledger.topup(conn, "A-101", 2000, "p2")
        assert (r.emergency_repaid_fen, r.balance_fen) == (500, 1700)
        b = ledger.balances(conn, "A-101")
        assert (b.energy_fen, b.emergency_outstanding_fen) == (1700, 0)
        replay = ledger.topup(conn, "A-101", 2000, "p2")
        assert replay.replayed and replay.emergency_repaid_fen == 500
    check()


def test_reversal_is_a_new_opposite_entry_once(db, account, check):
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 5000, "p1")
        usage = ledger.post_usage(conn, "A-101", "E-101", 1200, "t1")
        first = ledger.reverse(conn, usage.journal_id, reason="meter misread")
        assert ledger.balances(conn, "A-101").energy_fen == 5000
        again = ledger.reverse(conn, usage.journal_id, reason="meter misread")
        assert again.replayed and again.journal.id == first.journal.id
        original = ledger.get_journal(conn, usage.journal_id)
        assert original.postings == tuple(  # the original is untouched
            [Posting("liab:wallet:A-101:energy", 1200), Posting("rev:electricity", -1200)]
        )
        assert first.journal.reverses_id == usage.journal_id
    check()
    with pytest.raises(RequestError) as info, db.begin() as conn:
        ledger.reverse(conn, usage.journal_id, reason="twice", idempotency_key="other")
    assert "already reversed" in info.value.message
    with pytest.raises(RequestError) as info, db.begin() as conn:
        ledger.reverse(conn, first.journal.id, reason="undo the undo")
    assert info.value.field == "journal"
    with pytest.raises(RequestError) as info, db.begin() as conn:
        ledger.reverse(conn, usage.journal_id, reason=" ")
    assert info.value.field == "reason"


def test_reversing_a_topup_takes_back_its_emergency_repayment(db, account, check):
    with db.begin() as conn:
        ledger.grant_emergency_credit(conn, "A-101", 500, "ec1")
        r = ledger.topup(conn, "A-101", 2000, "p1")
        assert r.emergency_repaid_fen == 500
        ledger.reverse(conn, r.journal_id, reason="payment charged back")
        b = ledger.balances(conn, "A-101")
        assert (b.energy_fen, b.emergency_outstanding_fen) == (500, 500)
        assert ledger.refundable(conn, "A-101") == 0
    check()


def test_post_journal_is_the_generic_entry_point(db, account, make_account, check):
    make_account("A-201", meters=())
    postings = [
        Posting("liab:wallet:A-101:general", 24728),
        Posting("liab:wallet:A-201:general", 75272),
        Posting("rev:property", -100000),
    ]
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 100, "p1")
        posted = ledger.post_journal(
            conn, "charge", postings, idempotency_key="property:2025-01", memo="property fee"
        )
        again = ledger.post_journal(
            conn, "charge", postings, idempotency_key="property:2025-01", memo="property fee"
        )
        assert again.replayed and again.journal.id == posted.journal.id
        assert ledger.balances(conn, "A-101").general_fen == -24728
        assert ledger.balances(conn, "A-101").energy_fen == 100  # energy untouched
    check()


@pytest.mark.parametrize(
    ("postings", "field", "text"),
    [
        ([Posting("rev:water", 100)], "postings", "at least 2"),
        ([Posting("asset:bank", 100), Posting("rev:water", -99)], "postings", "sum to 1"),
        ([Posting("asset:bank", 0), Posting("rev:water", 0)], "postings[0].amount_fen", "not be 0"),
        ([Posting("bank", 100), Posting("rev:water", -100)], "postings[0].ledger_account", ""),
        ([Posting("asset:bank", 1.0), Posting("rev:water", -1)], "postings[0].amount_fen", ""),
        (
            [Posting("liab:wallet:NOPE:energy", 100), Posting("rev:water", -100)],
            "postings",
            "unknown wallet",
        ),
    ],
)
def test_post_journal_refuses_bad_postings(db, account, snapshot, postings, field, text):
    before = snapshot()
    with pytest.raises(RequestError) as info, db.begin() as conn:
        ledger.post_journal(conn, "charge", postings, idempotency_key="k1")
    assert info.value.field == field and text in info.value.message
    assert snapshot() == before


def test_local_topup_allocates_the_purchase_count_and_queues_recharge(db, make_account, check):
    make_account("A-102", meters=(("E-102", MeterKind.ELECTRIC, ControlMode.LOCAL),))
    with db.begin() as conn:
        r1 = ledger.topup(conn, "A-102", 5000, "p1", requested_by="cashier", local=LOCAL_MONEY)
        r2 = ledger.topup(conn, "A-102", 2000, "p2", local=LOCAL_MONEY)
        replay = ledger.topup(conn, "A-102", 5000, "p1", local=LOCAL_MONEY)
    assert (r1.meter_id, r1.buy_count, r2.buy_count) == ("E-102", 1, 2)
    assert (replay.buy_count, replay.command_id) == (1, r1.command_id)
    with db.read() as conn:
        c1 = cmds.get_command(conn, r1.command_id)
        assert (c1.kind, c1.state, c1.journal_id) == ("RECHARGE", "PENDING", r1.journal_id)
        assert c1.params == {"buy_count": 1, "amount_fen": 5000, "amount": "50.00"}
        assert c1.requested_by == "cashier" and "p1" in c1.reason
        assert len(cmds.list_commands(conn, meter_id="E-102")) == 2
    check()


def test_a_failed_transaction_leaves_neither_money_nor_command(db, make_account, snapshot):
    make_account("A-102", meters=(("E-102", MeterKind.ELECTRIC, ControlMode.LOCAL),))
    before = snapshot()
    with pytest.raises(RuntimeError), db.begin() as conn:
        ledger.topup(conn, "A-102", 5000, "p1", local=LOCAL_MONEY)
        raise RuntimeError("crash after the top-up, before commit")
    assert snapshot() == before


def test_several_local_meters_need_the_meter_named(db, make_account, check):
    make_account(
        "A-1",
        meters=(
            ("E-102", MeterKind.ELECTRIC, ControlMode.LOCAL),
            ("W-101", MeterKind.WATER, ControlMode.LOCAL),
        ),
    )
    with pytest.raises(RequestError) as info, db.begin() as conn:
        ledger.topup(conn, "A-1", 100, "p1", local=LOCAL_MONEY)
    assert info.value.field == "meter" and "E-102, W-101" in info.value.message
    with pytest.raises(RequestError) as info, db.begin() as conn:
        ledger.topup(conn, "A-1", 100, "p1", meter_id="E-201", local=LOCAL_MONEY)
    assert info.value.field == "meter"
    with db.begin() as conn:
        r = ledger.topup(conn, "A-1", 100, "p1", meter_id="W-101", local=LOCAL_MONEY)
    assert (r.meter_id, r.buy_count) == ("W-101", 1)
    check()


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("12.34", 1234),
        ("100", 10000),
        ("0.1", 10),
        (" 7.00 ", 700),
        ("-5", -500),
        ("007.5", 750),
        (3, 300),
    ],
)
def test_parse_yuan(text, fen):
    assert ledger.parse_yuan(text) == fen


@pytest.mark.parametrize(
    "text", ["1.234", "abc", "", "1e3", "NaN", "inf", "12.3.4", True, "1,000.50", "12.340"]
)
def test_parse_yuan_refuses(text):
    with pytest.raises(RequestError) as info:
        ledger.parse_yuan(text, "amount")
    assert info.value.field == "amount"


def test_format_fen():
    assert [ledger.format_fen(v) for v in (0, 5, -5, 1234, -100050)] == [
        "0.00",
        "0.05",
        "-0.05",
        "12.34",
        "-1000.50",
    ]


def test_journals_since_tells_the_service_what_changed(db, account):
    with db.begin() as conn:
        ledger.topup(conn, "A-101", 1000, "p1")
        ledger.post_usage(conn, "A-101", "E-101", 300, "t1")
    with db.read() as conn:
        lines = ledger.journals_since(conn, 0)
        assert [(x.kind, x.account_id, dict(x.wallet_changes)) for x in lines] == [
            ("topup", "A-101", {"energy": 1000}),
            ("usage", "A-101", {"energy": -300}),
        ]
        assert ledger.journals_since(conn, lines[-1].id) == []


def test_verify_finds_a_tampered_balance_and_posting(db, account):
    import sqlalchemy as sa

    with db.begin() as conn:
        ledger.topup(conn, "A-101", 1000, "p1")
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE wallet SET balance_fen = balance_fen + 1"))
        conn.execute(sa.text("UPDATE posting SET amount_fen = 999 WHERE amount_fen = 1000"))
    with db.read() as conn:
        report = ledger.verify(conn)
    broken = {b.invariant for b in report.breaks}
    assert "sum of all postings is 0" in broken
    assert "every journal balances with >= 2 postings" in broken
    assert "wallet balance = -(sum of its postings)" in broken


def test_commit_as_you_go_connections_are_atomic_too(db, account, check):
    """The fast statements join SQLAlchemy's transaction even when the caller did not
    call begin(): a rollback undoes the whole top-up."""
    with db.engine.connect() as conn:
        ledger.topup(conn, "A-101", 100, "p1")
        conn.rollback()
    with db.engine.connect() as conn:
        ledger.topup(conn, "A-101", 200, "p2")
        conn.commit()
    with db.read() as conn:
        assert ledger.balances(conn, "A-101").energy_fen == 200
    assert check().journals == 1


def test_local_topup_without_its_device_half_is_refused_and_posts_nothing(db, make_account):
    """The ledger only posts money: a LOCAL meter's RECHARGE is queued by the caller's
    `local` (the service door passes it); a caller that forgets it is refused."""
    make_account("A-102", meters=(("E-102", MeterKind.ELECTRIC, ControlMode.LOCAL),))
    with pytest.raises(ledger.LedgerIntegrityError, match="E-102 is LOCAL"), db.begin() as conn:
        ledger.topup(conn, "A-102", 5000, "p1")
    with db.read() as conn:
        assert ledger.balances(conn, "A-102").energy_fen == 0
        assert cmds.list_commands(conn) == []
