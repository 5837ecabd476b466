"""Verification: every ledger invariant checked against the database (domain.md §5.5)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t
from ..money import format_fen
from .codes import ACCOUNT_TYPES, code_type
from .values import JournalKind


@dataclass(frozen=True, slots=True)
class Break:
    """One broken invariant: which, and where."""

    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


@dataclass(slots=True)
class VerifyReport:
    journals: int = 0
    postings: int = 0
    wallets: int = 0
    checks: list[str] = field(default_factory=list)
    breaks: list[Break] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks

    def record(self, name: str, rows: Iterable[Any], describe: Callable[[Any], str]) -> None:
        """Record that the check `name` ran; each of `rows` breaks it (a few are listed)."""
        self.checks.append(name)
        for i, row in enumerate(rows):
            if i >= _EXAMPLES:
                self.breaks.append(Break(name, "... more"))
                break
            self.breaks.append(Break(name, describe(row)))


#: At most this many examples are listed per broken invariant.
_EXAMPLES = 20


def verify(conn: Connection) -> VerifyReport:
    """Check every ledger invariant (domain.md §5.5) and the bookkeeping around it.

    1. Σ all postings = 0.
    2. Every journal has ≥ 2 postings summing to 0.
    3. Every cached wallet balance = −Σ its postings (and the version counts its moves).
    4. Each payment reference, refund number, (meter, purchase count) and journal key
       (`(pool, period)` included) is applied at most once.
    5. Refunds: allocations sum to the refund; top-ups' refunded amounts match the
       allocations of refunds that did not fail; each state has its journals.
    6. Reversals negate their original exactly; a journal is reversed at most once.
    7. Ledger account types match their code; postings use known accounts.
    8. Purchase counters: a meter's counter is ≥ every count allocated to it, and RECHARGE
       commands carry distinct counts per meter.
    9. Closed accounts hold nothing; relay and valve commands record reason and requester.
    10. Refunds of online payments are in the state their ledger refund says (SUCCESS ↔
        SETTLED, CLOSED ↔ FAILED, others ↔ REQUESTED) and an order's refunded amount is
        the sum of its SUCCESS refunds.
    """
    report = VerifyReport()
    report.journals = _count(conn, t.journal)
    report.postings = _count(conn, t.posting)
    report.wallets = _count(conn, t.wallet)
    for check in _CHECKS:
        check(conn, report)
    return report


def _count(conn: Connection, table: sa.Table) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() or 0


# -- 1, 2: postings and journals balance ------------------------------------------------------


def _check_postings_sum_to_zero(conn: Connection, report: VerifyReport) -> None:
    p = t.posting
    total = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(p.c.amount_fen), 0))).scalar()
    report.record(
        "sum of all postings is 0",
        [total] if total else [],
        lambda v: f"all postings sum to {v} fen",
    )


def _check_journals_balance(conn: Connection, report: VerifyReport) -> None:
    p, j = t.posting, t.journal
    sums = (
        sa.select(
            j.c.id,
            sa.func.coalesce(sa.func.sum(p.c.amount_fen), 0).label("total"),
            sa.func.count(p.c.id).label("n"),
        )
        .select_from(j.outerjoin(p, p.c.journal_id == j.c.id))
        .group_by(j.c.id)
        .having(
            sa.or_(sa.func.coalesce(sa.func.sum(p.c.amount_fen), 0) != 0, sa.func.count(p.c.id) < 2)
        )
        .order_by(j.c.id)
    )
    report.record(
        "every journal balances with >= 2 postings",
        conn.execute(sums),
        lambda r: f"journal {r.id}: {r.n} posting(s) summing to {r.total} fen",
    )


# -- 3: wallets --------------------------------------------------------------------------------


def _check_wallets_match_postings(conn: Connection, report: VerifyReport) -> None:
    """The cached balance is minus the sum of the wallet's postings, and its version is at
    least the number of journals that moved it (one query, two checks)."""
    p, w = t.posting, t.wallet
    derived = (
        sa.select(p.c.ledger_account, sa.func.sum(p.c.amount_fen).label("total"))
        .group_by(p.c.ledger_account)
        .subquery()
    )
    net = (
        sa.select(p.c.ledger_account, p.c.journal_id)
        .group_by(p.c.ledger_account, p.c.journal_id)
        .having(sa.func.sum(p.c.amount_fen) != 0)
        .subquery()
    )
    moves = (
        sa.select(net.c.ledger_account, sa.func.count().label("n"))
        .group_by(net.c.ledger_account)
        .subquery()
    )
    wallet_rows = conn.execute(
        sa.select(
            w.c.ledger_account,
            w.c.balance_fen,
            w.c.version,
            sa.func.coalesce(derived.c.total, 0).label("total"),
            sa.func.coalesce(moves.c.n, 0).label("n"),
        )
        .select_from(
            w.outerjoin(derived, derived.c.ledger_account == w.c.ledger_account).outerjoin(
                moves, moves.c.ledger_account == w.c.ledger_account
            )
        )
        .order_by(w.c.ledger_account)
    ).all()
    report.record(
        "wallet balance = -(sum of its postings)",
        [r for r in wallet_rows if r.balance_fen != -r.total],
        lambda r: (
            f"{r.ledger_account}: cached {format_fen(r.balance_fen)}, "
            f"postings say {format_fen(-r.total)}"
        ),
    )
    report.record(
        "wallet version counts its journals",
        [r for r in wallet_rows if r.version < r.n],
        lambda r: f"{r.ledger_account}: version {r.version} < {r.n} journals",
    )


def _check_wallet_postings_have_wallets(conn: Connection, report: VerifyReport) -> None:
    p, w = t.posting, t.wallet
    orphan_wallets = conn.execute(
        sa.select(p.c.ledger_account)
        .where(p.c.ledger_account.like("liab:wallet:%"))
        .where(p.c.ledger_account.not_in(sa.select(w.c.ledger_account)))
        .distinct()
    ).all()
    report.record(
        "wallet postings name existing wallets",
        orphan_wallets,
        lambda r: f"{r.ledger_account} has postings but no wallet row",
    )


# -- 4, 6: applied once ------------------------------------------------------------------------


def _duplicates(conn: Connection, column: Any, *extra: Any, where: Any = None) -> list[Any]:
    """The values of `column` (and `extra`) that occur more than once, with their count."""
    cols = (column, *extra)
    q = sa.select(*cols, sa.func.count().label("n")).group_by(*cols)
    if where is not None:
        q = q.where(where)
    return conn.execute(q.having(sa.func.count() > 1)).all()


def _check_applied_once(conn: Connection, report: VerifyReport) -> None:
    """Journal keys, payment references, refund numbers, (meter, purchase count) and
    reversals are each applied at most once: one check per key, kept together because
    each is one `_duplicates` query."""
    j = t.journal
    report.record(
        "journal idempotency keys are unique",
        _duplicates(conn, j.c.idempotency_key),
        lambda r: f"key {r[0]!r} used {r.n} times",
    )
    report.record(
        "payment references are applied once",
        _duplicates(conn, t.topup.c.reference),
        lambda r: f"top-up {r[0]!r} recorded {r.n} times",
    )
    report.record(
        "refund numbers are applied once",
        _duplicates(conn, t.refund.c.reference),
        lambda r: f"refund {r[0]!r} recorded {r.n} times",
    )
    report.record(
        "(meter, purchase count) is applied once",
        _duplicates(
            conn, t.topup.c.meter_id, t.topup.c.buy_count, where=t.topup.c.buy_count.is_not(None)
        ),
        lambda r: f"meter {r[0]} purchase {r[1]} delivered by {r.n} top-ups",
    )
    report.record(
        "a journal is reversed at most once",
        _duplicates(conn, j.c.reverses_id, where=j.c.reverses_id.is_not(None)),
        lambda r: f"journal {r[0]} reversed {r.n} times",
    )


def _check_topups_have_journals(conn: Connection, report: VerifyReport) -> None:
    j = t.journal
    topup_journal = conn.execute(
        sa.select(t.topup.c.reference, t.topup.c.amount_fen, j.c.kind, j.c.idempotency_key)
        .select_from(t.topup.outerjoin(j, j.c.id == t.topup.c.journal_id))
        .where(
            sa.or_(
                j.c.id.is_(None),
                j.c.kind != JournalKind.TOPUP.value,
                j.c.idempotency_key != sa.literal("topup:") + t.topup.c.reference,
            )
        )
    ).all()
    report.record(
        "every top-up order has its journal",
        topup_journal,
        lambda r: f"top-up {r.reference}: journal {r.idempotency_key!r} ({r.kind})",
    )


# -- 5: refunds ------------------------------------------------------------------------------


def _off_allocations(conn: Connection, table: Any, amount: Any, key: Any, *of_refunds: Any) -> Any:
    """(reference, `amount`, total) of the `table` rows whose `amount` is not the sum of
    the refund allocations pointing at them through `key` (of refunds `of_refunds`)."""
    a = t.refund_allocation
    sums = sa.select(key, sa.func.sum(a.c.amount_fen).label("total"))
    if of_refunds:
        sums = sums.join(t.refund, t.refund.c.id == a.c.refund_id).where(*of_refunds)
    sums = sums.group_by(key).subquery()
    return conn.execute(
        sa.select(table.c.reference, amount, sums.c.total)
        .select_from(table.outerjoin(sums, sums.c[key.name] == table.c.id))
        .where(sa.func.coalesce(sums.c.total, 0) != amount)
    )


def _check_refund_allocations(conn: Connection, report: VerifyReport) -> None:
    report.record(
        "refund allocations sum to the refund",
        _off_allocations(conn, t.refund, t.refund.c.amount_fen, t.refund_allocation.c.refund_id),
        lambda r: (
            f"refund {r.reference}: {format_fen(r.amount_fen)} but allocations "
            f"{format_fen(r.total or 0)}"
        ),
    )


def _check_topup_refunded_amounts(conn: Connection, report: VerifyReport) -> None:
    # Failed refunds released their top-ups: only the others still hold part of one.
    report.record(
        "top-up refunded amounts match live refund allocations",
        _off_allocations(
            conn,
            t.topup,
            t.topup.c.refunded_fen,
            t.refund_allocation.c.topup_id,
            t.refund.c.state != "FAILED",
        ),
        lambda r: (
            f"top-up {r.reference}: refunded {format_fen(r.refunded_fen)}, "
            f"allocations {format_fen(r.total or 0)}"
        ),
    )


def _check_refund_states_have_journals(conn: Connection, report: VerifyReport) -> None:
    report.record(
        "refund states have their journals",
        conn.execute(
            sa.select(t.refund.c.reference, t.refund.c.state).where(
                sa.or_(
                    sa.and_(t.refund.c.state == "SETTLED", t.refund.c.settle_journal_id.is_(None)),
                    sa.and_(
                        t.refund.c.state == "FAILED",
                        t.refund.c.request_journal_id.is_not(None),
                        t.refund.c.reversal_journal_id.is_(None),
                    ),
                    sa.and_(
                        t.refund.c.state.in_(["REQUESTED", "SETTLED"]),
                        t.refund.c.request_journal_id.is_(None),
                    ),
                    sa.and_(
                        t.refund.c.state == "REQUESTED",
                        sa.or_(
                            t.refund.c.settle_journal_id.is_not(None),
                            t.refund.c.reversal_journal_id.is_not(None),
                        ),
                    ),
                    sa.and_(
                        t.refund.c.state == "AWAITING_METER",
                        sa.or_(
                            t.refund.c.request_journal_id.is_not(None),
                            t.refund.c.command_id.is_(None),
                        ),
                    ),
                )
            )
        ),
        lambda r: f"refund {r.reference} is {r.state} without the matching journal",
    )


# -- 6: reversals ----------------------------------------------------------------------------


def _check_reversals_negate(conn: Connection, report: VerifyReport) -> None:
    """For every reversal and every account either side touches: reversal + original = 0."""
    p, j = t.posting, t.journal
    original = p.alias("orig")
    rev = j.alias("rev")
    mine = (
        sa.select(p.c.ledger_account, sa.func.sum(p.c.amount_fen).label("s"), p.c.journal_id)
        .group_by(p.c.journal_id, p.c.ledger_account)
        .subquery()
    )
    theirs = (
        sa.select(
            original.c.ledger_account,
            sa.func.sum(original.c.amount_fen).label("s"),
            original.c.journal_id,
        )
        .group_by(original.c.journal_id, original.c.ledger_account)
        .subquery()
    )
    both = sa.union(
        sa.select(rev.c.id.label("rid"), mine.c.ledger_account.label("acct")).join(
            mine, mine.c.journal_id == rev.c.id
        ),
        sa.select(rev.c.id.label("rid"), theirs.c.ledger_account.label("acct")).join(
            theirs, theirs.c.journal_id == rev.c.reverses_id
        ),
    ).subquery()
    bad_reversals = conn.execute(
        sa.select(both.c.rid, both.c.acct)
        .select_from(
            both.join(rev, rev.c.id == both.c.rid)
            .outerjoin(
                mine, sa.and_(mine.c.journal_id == rev.c.id, mine.c.ledger_account == both.c.acct)
            )
            .outerjoin(
                theirs,
                sa.and_(
                    theirs.c.journal_id == rev.c.reverses_id,
                    theirs.c.ledger_account == both.c.acct,
                ),
            )
        )
        .where(rev.c.reverses_id.is_not(None))
        .where(sa.func.coalesce(mine.c.s, 0) + sa.func.coalesce(theirs.c.s, 0) != 0)
        .order_by(both.c.rid)
    ).all()
    report.record(
        "reversals negate their original",
        bad_reversals,
        lambda r: f"journal {r.rid} does not cancel its original on {r.acct}",
    )


# -- 7, 8, 9: accounts, purchase counters, commands ------------------------------------------


def _check_account_types(conn: Connection, report: VerifyReport) -> None:
    report.record(
        "ledger account types match their codes",
        [
            r
            for r in conn.execute(sa.select(t.ledger_account.c.code, t.ledger_account.c.type))
            if r.type != code_type(r.code) or r.type not in ACCOUNT_TYPES
        ],
        lambda r: f"{r.code} has type {r.type!r}",
    )


def _check_purchase_counters(conn: Connection, report: VerifyReport) -> None:
    max_count = (
        sa.select(t.topup.c.meter_id, sa.func.max(t.topup.c.buy_count).label("top"))
        .where(t.topup.c.buy_count.is_not(None))
        .group_by(t.topup.c.meter_id)
        .subquery()
    )
    report.record(
        "purchase counters cover every allocated count",
        conn.execute(
            sa.select(max_count.c.meter_id, max_count.c.top, t.meter.c.buy_count)
            .select_from(max_count.outerjoin(t.meter, t.meter.c.id == max_count.c.meter_id))
            .where(sa.or_(t.meter.c.buy_count.is_(None), t.meter.c.buy_count < max_count.c.top))
        ),
        lambda r: f"meter {r.meter_id}: counter {r.buy_count}, allocated {r.top}",
    )


def _check_recharge_counts_distinct(conn: Connection, report: VerifyReport) -> None:
    recharge_counts: dict[tuple[str, int], int] = {}
    for meter_id, params in conn.execute(
        sa.select(t.meter_command.c.meter_id, t.meter_command.c.params).where(
            t.meter_command.c.kind == "RECHARGE",
            t.meter_command.c.retry_of.is_(None),  # a retry repeats its count by design
        )
    ):
        if "buy_count" in (params or {}):
            k = (meter_id, int(params["buy_count"]))
            recharge_counts[k] = recharge_counts.get(k, 0) + 1
    report.record(
        "RECHARGE commands carry distinct purchase counts",
        [(k, n) for k, n in sorted(recharge_counts.items()) if n > 1],
        lambda r: f"meter {r[0][0]} purchase {r[0][1]} in {r[1]} RECHARGE commands",
    )


def _check_closed_accounts_hold_nothing(conn: Connection, report: VerifyReport) -> None:
    w = t.wallet
    report.record(
        "closed accounts hold nothing",
        conn.execute(
            sa.select(w.c.ledger_account, w.c.balance_fen)
            .join(t.account, t.account.c.id == w.c.account_id)
            .where(t.account.c.state == "CLOSED", w.c.balance_fen != 0)
        ),
        lambda r: f"{r.ledger_account} holds {format_fen(r.balance_fen)}",
    )


def _check_commands_record_reason(conn: Connection, report: VerifyReport) -> None:
    report.record(
        "every meter command records reason and requester",
        conn.execute(
            sa.select(t.meter_command.c.id, t.meter_command.c.kind).where(
                sa.or_(
                    sa.func.trim(t.meter_command.c.reason) == "",
                    sa.func.trim(t.meter_command.c.requested_by) == "",
                )
            )
        ),
        lambda r: f"command {r.id} ({r.kind}) has no reason or requester",
    )


#: The checks in the order they run (and are listed in the report).
# -- 10: refunds of online payments follow their ledger refunds ---------------------------------

#: A payment refund's state → the states its ledger refund (same reference) may be in.
_PAYMENT_REFUND_LEDGER = {
    "REQUESTED": ("REQUESTED", "AWAITING_METER"),
    "PROCESSING": ("REQUESTED",),
    "ABNORMAL": ("REQUESTED",),
    "SUCCESS": ("SETTLED",),
    "CLOSED": ("FAILED",),
}


def _check_payment_refunds(conn: Connection, report: VerifyReport) -> None:
    p, r = t.payment_refund, t.refund
    fits = sa.or_(
        *(
            sa.and_(p.c.state == mine, r.c.state.in_(theirs))
            for mine, theirs in _PAYMENT_REFUND_LEDGER.items()
        )
    )
    report.record(
        "payment refunds match their ledger refunds",
        conn.execute(
            sa.select(p.c.out_refund_no, p.c.state, p.c.amount_fen, r.c.state.label("ledger"))
            .select_from(p.outerjoin(r, r.c.reference == p.c.out_refund_no))
            .where(
                sa.or_(
                    r.c.id.is_(None),
                    r.c.amount_fen != p.c.amount_fen,
                    r.c.account_id != p.c.account_id,
                    sa.not_(fits),
                )
            )
        ),
        lambda row: (
            f"refund {row.out_refund_no} {row.state} {format_fen(row.amount_fen)}: ledger refund "
            f"{row.ledger or 'missing'}"
        ),
    )
    o = t.payment_order
    settled = (
        sa.select(sa.func.coalesce(sa.func.sum(p.c.amount_fen), 0))
        .where(p.c.order_id == o.c.id, p.c.state == "SUCCESS")
        .scalar_subquery()
    )
    report.record(
        "payment orders' refunded amounts match their SUCCESS refunds",
        conn.execute(
            sa.select(o.c.out_trade_no, o.c.refunded_fen, settled.label("total")).where(
                o.c.refunded_fen != settled
            )
        ),
        lambda row: (
            f"order {row.out_trade_no}: refunded {format_fen(row.refunded_fen)}, SUCCESS "
            f"refunds {format_fen(row.total)}"
        ),
    )


_CHECKS: tuple[Callable[[Connection, VerifyReport], None], ...] = (
    _check_postings_sum_to_zero,
    _check_journals_balance,
    _check_wallets_match_postings,
    _check_wallet_postings_have_wallets,
    _check_applied_once,
    _check_topups_have_journals,
    _check_refund_allocations,
    _check_topup_refunded_amounts,
    _check_refund_states_have_journals,
    _check_reversals_negate,
    _check_account_types,
    _check_purchase_counters,
    _check_recharge_counts_distinct,
    _check_closed_accounts_hold_nothing,
    _check_commands_record_reason,
    _check_payment_refunds,
)
