"""Usage in bulk (`post_usages`) on both databases: the same journals, keys, balances and
accruals as posting one at a time; a replayed batch posts nothing; a refused request is
refused alone; the ledger verifies clean."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.config.site import ControlMode
from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.ledger import UsageRequest, post_usages
from openprepay.core.model import MeterKind

E, W = MeterKind.ELECTRIC, MeterKind.WATER
REMOTE = ControlMode.REMOTE
ACCRUAL = {"cum_exact_fen": "1001/10", "posted_fen": 100, "rounding": "half_up"}


def _open(db: Database, make_account: Callable[..., Any], topup: dict[str, int]) -> None:
    make_account("A-101", meters=(("E-101", E, REMOTE), ("W-101", W, REMOTE)))
    make_account("A-201", meters=(("E-201", E, REMOTE),))
    with db.begin() as conn:
        for account, fen in topup.items():
            ledger.topup(conn, account, fen, f"pay-{account}", channel="cash")


def _journals(db: Database) -> list[tuple[str, str, int]]:
    with db.read() as conn:
        rows = conn.execute(
            sa.select(t.journal.c.idempotency_key, t.journal.c.meter_id, t.journal.c.id)
            .where(t.journal.c.kind == "usage")
            .order_by(t.journal.c.idempotency_key)
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def test_a_batch_posts_each_usage_as_its_own_journal_and_a_replay_posts_nothing(
    db: Database, make_account: Callable[..., Any], check: Callable[[], Any]
) -> None:
    _open(db, make_account, {"A-101": 10_000, "A-201": 500})
    batch = [
        UsageRequest("A-101", "E-101", 1234, "1700000000", accrual=ACCRUAL, cycle="2023-11"),
        UsageRequest("A-201", "E-201", 700, "1700000000", accrual=ACCRUAL, cycle="2023-11"),
        UsageRequest("A-101", "W-101", 300, "1700000005"),
        UsageRequest("A-201", "E-201", 0, "1700000010", cycle="x", accrual=None),
    ]
    with db.begin() as conn:
        results = post_usages(conn, batch, now=None)
    assert [r.balance_fen for r in results] == [10_000 - 1234, 500 - 700, 10_000 - 1534, -200]
    assert [r.replayed for r in results] == [False, False, False, False]
    assert results[3].journal_id is None  # 0 fen: nothing posted
    check()
    keys = [k for k, _, _ in _journals(db)]
    assert keys == ["usage:E-101:1700000000", "usage:E-201:1700000000", "usage:W-101:1700000005"]
    with db.read() as conn:
        assert ledger.balances(conn, "A-101").energy_fen == 10_000 - 1534
        revenue = dict(
            conn.execute(
                sa.select(t.posting.c.ledger_account, sa.func.sum(t.posting.c.amount_fen))
                .where(t.posting.c.ledger_account.like("rev:%"))
                .group_by(t.posting.c.ledger_account)
            ).all()
        )
        saved = ledger.load_accrual(conn, "E-101", "2023-11")
    assert revenue == {"rev:electricity": -1934, "rev:water": -300}
    assert saved is not None and saved["period_key"] == "1700000000" and saved["journal_id"]

    before = _journals(db)
    with db.begin() as conn:  # the same flush again, and one period posted the old way
        again = post_usages(conn, batch)
        single = ledger.post_usage(conn, "A-101", "E-101", 1234, "1700000000")
    assert [r.replayed for r in again[:3]] == [True, True, True]
    assert again[0].journal_id == results[0].journal_id
    assert single.replayed and single.journal_id == results[0].journal_id
    assert _journals(db) == before
    check()


def test_a_refused_request_is_refused_alone_and_changes_nothing(
    db: Database, make_account: Callable[..., Any], check: Callable[[], Any]
) -> None:
    _open(db, make_account, {"A-101": 1000})
    with db.begin() as conn:
        ledger.post_usage(conn, "A-101", "E-101", 50, "p1")
    batch = [
        UsageRequest("A-101", "E-101", 60, "p1"),  # same key, different amount
        UsageRequest("A-101", "E-201", 10, "p2"),  # not this account's meter
        UsageRequest("NOPE", "E-101", 10, "p3"),
        UsageRequest("A-101", "W-101", -1, "p4"),
        UsageRequest("A-101", "E-101", 5, "p5", accrual={"bad": 1}, cycle="c"),
        UsageRequest("A-101", "W-101", 20, "p6"),
        UsageRequest("A-101", "W-101", 20, "p6"),  # twice in one batch
    ]
    with db.begin() as conn:
        out = post_usages(conn, batch)
    assert isinstance(out[0], ledger.IdempotencyConflict)
    fields = [getattr(o, "field", None) for o in out]
    assert fields[1:5] == ["meter", "account", "amount", "accrual"]
    assert isinstance(out[5], ledger.UsageResult) and out[5].balance_fen == 1000 - 50 - 20
    assert isinstance(out[6], ledger.RequestError) and out[6].field == "period_key"
    check()
    assert [k for k, _, _ in _journals(db)] == ["usage:E-101:p1", "usage:W-101:p6"]


def test_a_zero_fen_period_saves_its_accrual_and_replays(
    db: Database, make_account: Callable[..., Any], check: Callable[[], Any]
) -> None:
    _open(db, make_account, {"A-101": 1000})
    with db.begin() as conn:
        first = post_usages(conn, [UsageRequest("A-101", "E-101", 9, "t1", ACCRUAL, "c")])
        zero = UsageRequest("A-101", "E-101", 0, "t2", dict(ACCRUAL, cum_exact_fen="1002/10"), "c")
        (posted,) = post_usages(conn, [zero])
        (again,) = post_usages(conn, [zero])
        saved = ledger.load_accruals(conn, [("E-101", "c"), ("E-101", "other")])
    assert not posted.replayed and again.replayed
    assert list(saved) == [("E-101", "c")]
    # a 0-fen period keeps the journal that last advanced the accrual
    assert saved[("E-101", "c")]["journal_id"] == first[0].journal_id
    assert saved[("E-101", "c")]["cum_exact_fen"] == "1002/10"
    check()
