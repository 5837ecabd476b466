"""A general-wallet credit applied against the account's bills (`Operations.apply_credit`,
`bill apply-credit`): oldest bill first, double entry with an idempotency key, audited,
refused beyond what the wallet holds or the bills owe; the bills' paid and outstanding
amounts and `bill show` say so."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.billing.bills.paying import receivable
from openprepay.core.config.site import parse_site
from openprepay.core.db import schema as t
from openprepay.core.events import EventBus
from openprepay.core.ledger import RequestError
from openprepay.core.operations import Operations

from .clerk import Run, audits, rows, runner
from .clerk import site_file as make_site_file
from .conftest import FEB, JAN, MAR, MODELS, deposit, open_accounts, read, site_data


@pytest.fixture
def ops(db) -> Operations:
    """A-101 post-paid at 0.50/kWh with two issued bills, January 50.00 and February
    50.00, and 80.00 in its general wallet; B-101 with a bill of its own."""
    site = parse_site(site_data())
    open_accounts(
        db,
        site,
        {"A-101": ("E-A-101",), "B-101": ("E-B-101",)},
        modes={"E-A-101": "POSTPAID", "E-B-101": "POSTPAID"},
    )
    for at, kwh in ((JAN, 0), (FEB, 100), (MAR, 200)):
        read(db, at, {"E-A-101": kwh, "E-B-101": kwh})
    # A day after the February freeze instant: both periods have ended.
    later = MAR + dt.timedelta(days=1)
    operations = Operations(site, db, EventBus(), models=MODELS, clock=lambda: later)
    for period in ("2025-01", "2025-02"):
        operations.draft_bills(period, actor="cli:alice")
        operations.confirm_bills(period=period, actor="cli:alice")
        operations.issue_bills(period=period, on=dt.date(2025, 3, 2), actor="cli:alice")
    deposit(db, "A-101", 8000)
    return operations


def _state(ops: Operations) -> tuple[int, int, int, int]:
    """(journals, general wallet of A-101, its receivable, credit rows)."""
    with ops.db.read() as conn:
        journals = conn.execute(sa.select(sa.func.count()).select_from(t.journal)).scalar()
        payments = conn.execute(sa.select(sa.func.count()).select_from(t.bill_payment)).scalar()
        general = ledger.balances(conn, "A-101").general_fen
        return journals, general, receivable(conn, ["A-101"])["A-101"], payments


def test_credit_pays_the_oldest_bills_from_the_general_wallet(ops, check):
    before = _state(ops)
    assert before[1:3] == (8000, 10000)
    for kw, field, words in (
        ({"amount_fen": 9000}, "amount", "90.00 is more than the general wallet holds (80.00)"),
        (
            {"amount_fen": 6000, "bill": "B-2025-01-A-101"},
            "amount",
            "60.00 is more than B-2025-01-A-101 owe (50.00)",
        ),
        ({"bill": "B-2025-01-B-101"}, "bill", "a bill of B-101"),
        ({"bill": "B-1999-01-A-101"}, "bill", "unknown bill"),
    ):
        with pytest.raises(RequestError) as refused:
            ops.apply_credit("A-101", actor="cli:alice", **kw)
        assert refused.value.field == field and words in refused.value.message
    assert _state(ops) == before

    r = ops.apply_credit("A-101", reference="c-1", actor="cli:alice")
    assert (r.amount_fen, dict(r.allocations), r.replayed) == (
        8000,
        {"B-2025-01-A-101": 5000, "B-2025-02-A-101": 3000},
        False,
    )
    assert _state(ops)[1:] == (0, 2000, before[3] + 1)
    with ops.db.read() as conn:
        jan, feb = ops.billing.bills.list(conn, account_id="A-101")
        journal = ledger.load_journal(conn, "credit:c-1")
    assert (jan.state, jan.paid_fen, jan.outstanding_fen, jan.credit_applied_fen) == (
        "PAID",
        5000,
        0,
        5000,
    )
    assert (feb.state, feb.paid_fen, feb.outstanding_fen) == ("ISSUED", 3000, 2000)
    [payment] = feb.payments
    assert (payment.credit, payment.amount_fen, payment.reference) == (True, 3000, "c-1")
    assert sorted((p.ledger_account, p.amount_fen) for p in journal.postings) == [
        ("asset:ar:A-101", -8000),
        ("liab:wallet:A-101:general", 8000),
    ]
    (audit,) = _audits(ops)
    assert audit.ok and audit.actor == "cli:alice" and audit.target == "A-101"
    assert "credit 80.00 applied to B-2025-01-A-101 50.00, B-2025-02-A-101 30.00" in audit.detail

    again = ops.apply_credit("A-101", reference="c-1", actor="cli:alice")
    assert again.replayed and again.amount_fen == 8000
    assert _state(ops)[1:] == (0, 2000, before[3] + 1)
    with pytest.raises(RequestError, match=r"holds 0\.00: nothing to apply"):
        ops.apply_credit("A-101", actor="cli:alice")
    check()


def _audits(ops: Operations) -> list[sa.Row]:
    a = t.audit_log
    with ops.db.read() as conn:
        return list(
            conn.execute(sa.select(a).where(a.c.action == "bill_credit", a.c.ok.is_(True))).all()
        )


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    return make_site_file(tmp_path)


@pytest.fixture
def run(cli, site_file) -> Run:
    return runner(cli, site_file)


def test_apply_credit_from_the_command_line_and_bill_show(run, site_file):
    for at, value in (("2025-01", 100), ("2025-02", 200)):
        run("billing", "reading", "SITE", "E-A-101", "--at", at, "--value", str(value))
    run("bill", "draft", "SITE", "--period", "2025-01")
    run("bill", "confirm", "SITE", "B-2025-01-A-101")
    run("bill", "issue", "SITE", "B-2025-01-A-101", "--on", "2025-02-02")
    # The January bill (50.00) overpaid: 30.00 goes to the general wallet.
    run("bill", "pay", "SITE", "A-101", "60.00", "--ref", "cash-1")
    run("bill", "pay", "SITE", "A-101", "20.00", "--ref", "cash-2")
    out = run("bill", "apply-credit", "SITE", "A-101", ok=False).output
    assert "A-101 has no unpaid confirmed or issued bill" in out
    run("billing", "reading", "SITE", "E-A-101", "--at", "2025-03", "--value", "300")
    run("bill", "draft", "SITE", "--period", "2025-02")
    run("bill", "confirm", "SITE", "B-2025-02-A-101")
    out = run("bill", "apply-credit", "SITE", "A-101", "--amount", "90.00", ok=False).output
    assert "amount: 90.00 is more than the general wallet holds (30.00)" in out
    out = run("bill", "apply-credit", "SITE", "A-101", "--ref", "credit-1").output
    assert out == (
        "credit credit-1: 30.00 from the general wallet of A-101 to B-2025-02-A-101 30.00\n"
    )
    shown = run("bill", "show", "SITE", "B-2025-02-A-101").output
    assert "paid 30.00, outstanding 20.00" in shown
    assert "credit applied (general wallet) " in shown and "credit-1: 30.00" in shown
    jan = run("bill", "show", "SITE", "B-2025-01-A-101").output
    assert "payment via cash " in jan and "cash-1: 50.00" in jan
    assert audits(site_file, "bill_credit")[-1].ok
    assert rows(site_file, sa.select(t.bill_payment.c.channel))[-1].channel == "credit"
    assert "all invariants hold" in run("ledger", "verify", "SITE").output
