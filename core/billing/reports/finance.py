"""Finance reports, from the journal and its postings, nothing else.

- `orders` — every order in a span: top-ups, refunds, emergency credit, charges, common-area
  shares, bill payments, reversals, one row per journal and customer; usage deductions
  summed per account, day and commodity. Columns are the changes of the energy wallet, the
  general wallet and what is owed (`asset:ar:<account>`); their totals are exactly the net
  postings of those ledger accounts in the span.
- `revenue` — revenue by day, month, year or the whole span, and its composition
  (electricity, water, common area, property, rent, services, late fees): the credits to
  `rev:*` net of reversals. Its total is exactly the net `rev:*` postings of the span.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...db import schema as t
from ..export import Chart, Table, yuan
from .common import ReportScope, bucket_of, buckets

#: Revenue streams in report order (the rest goes to "other").
STREAMS = (
    ("electricity", "electricity"),
    ("water", "water"),
    ("public_energy", "common area"),
    ("property", "property"),
    ("rent", "rent"),
    ("service", "services"),
    ("late_fee", "late fees"),
)

ORDER_NAMES = {
    "topup": "top-up",
    "refund_request": "refund",
    "refund_settle": "refund paid out",
    "emergency_credit": "emergency credit",
    "emergency_repay": "emergency credit repaid",
    "opening_balance": "opening balance",
    "allocation": "common area",
    "charge": "charge",
    "settlement": "payment",
    "adjustment": "adjustment",
    "reversal": "reversal",
}

#: An orders row with its sort key: ((time, journal id), cells).
_Row = tuple[tuple[dt.datetime, int], list[Any]]


def revenue(
    scope: ReportScope, conn: Connection, start: dt.date, end: dt.date, by: str = "month"
) -> Table:
    spans = buckets(start, end, by)
    bounds = [scope.midnight(d) for _, d in spans] + [scope.midnight(end)]
    j, p = t.journal, t.posting
    b = bucket_of(j.c.created_at, bounds).label("b")
    rows = conn.execute(
        sa.select(b, p.c.ledger_account, sa.func.sum(p.c.amount_fen))
        .join(j, j.c.id == p.c.journal_id)
        .where(
            p.c.ledger_account.like("rev:%"),
            j.c.created_at >= bounds[0],
            j.c.created_at < bounds[-1],
        )
        .group_by(b, p.c.ledger_account)
    ).all()
    streams = [s for s, _ in STREAMS]
    grid = [[0] * (len(streams) + 1) for _ in spans]
    for bucket, code, total in rows:
        stream = code.split(":", 1)[1]
        col = streams.index(stream) if stream in streams else len(streams)
        grid[int(bucket)][col] += -int(total)
    table = Table(
        f"Revenue {start} to {end - dt.timedelta(days=1)} by {by}",
        [by, *[name for _, name in STREAMS], "other", "total"],
        sheet="Revenue",
        chart=Chart("stacked", 0, tuple(range(1, len(streams) + 2)), "Revenue by stream", "CNY"),
        notes=[
            "Revenue = credits to rev:* net of reversals, by journal time "
            f"({scope.site.info.timezone}); CNY."
        ],
    )
    for (label, _), cells in zip(spans, grid, strict=True):
        table.rows.append([label, *[yuan(c) for c in cells], yuan(sum(cells))])
    sums = [sum(g[i] for g in grid) for i in range(len(streams) + 1)]
    table.total = ["total", *[yuan(s) for s in sums], yuan(sum(sums))]
    return table


def orders(
    scope: ReportScope,
    conn: Connection,
    start: dt.date,
    end: dt.date,
    *,
    account: str | None = None,
) -> Table:
    rows = [
        *_customer_orders(scope, conn, start, end, account),
        *_usage_orders(scope, conn, start, end, account),
    ]
    rows.sort(key=lambda x: x[0])
    table = Table(
        f"Orders {start} to {end - dt.timedelta(days=1)}"
        + (f", account {account}" if account else ""),
        [
            "time",
            "order",
            "account",
            "reference",
            "energy wallet",
            "general wallet",
            "owed",
            "detail",
        ],
        sheet="Orders",
        notes=[
            "Changes in CNY: energy and general wallets (+ = more money for the tenant), "
            "owed (+ = more owed). Usage deductions are summed per account and day."
        ],
    )
    table.rows = [r for _, r in rows]
    sums = [sum((r[i] for r in table.rows), Decimal(0)) for i in (4, 5, 6)]
    table.total = ["total", f"{len(table.rows)} rows", "", "", *sums, ""]
    return table


def _customer_orders(
    scope: ReportScope, conn: Connection, start: dt.date, end: dt.date, account: str | None
) -> list[_Row]:
    """One row per journal (other than usage) and customer, with the changes of its
    wallets and of what it owes."""
    j, p = t.journal, t.posting
    lo, hi = scope.midnight(start), scope.midnight(end)
    customer = sa.or_(
        p.c.ledger_account.like("liab:wallet:%"), p.c.ledger_account.like("asset:ar:%")
    )
    q = (
        sa.select(
            j.c.id,
            j.c.kind,
            j.c.created_at,
            j.c.idempotency_key,
            j.c.memo,
            p.c.ledger_account,
            sa.func.sum(p.c.amount_fen),
        )
        .join(j, j.c.id == p.c.journal_id)
        .where(customer, j.c.kind != "usage", j.c.created_at >= lo, j.c.created_at < hi)
        .group_by(
            j.c.id, j.c.kind, j.c.created_at, j.c.idempotency_key, j.c.memo, p.c.ledger_account
        )
        .order_by(j.c.id)
    )
    per: dict[tuple[int, str], dict[str, Any]] = {}
    for jid, kind, created, key, memo, code, total in conn.execute(q).all():
        who, col = _customer(code)
        if account is not None and who != account:
            continue
        row = per.setdefault(
            (jid, who),
            {
                "at": created,
                "kind": kind,
                "key": key,
                "memo": memo,
                "energy": 0,
                "general": 0,
                "owed": 0,
            },
        )
        row[col] += -int(total) if col != "owed" else int(total)
    out: list[_Row] = []
    for (jid, who), r in per.items():
        local = r["at"].astimezone(scope.tz)
        out.append(
            (
                (r["at"], jid),
                [
                    f"{local:%Y-%m-%d %H:%M:%S}",
                    ORDER_NAMES.get(r["kind"], r["kind"]),
                    who,
                    r["key"],
                    yuan(r["energy"]),
                    yuan(r["general"]),
                    yuan(r["owed"]),
                    r["memo"],
                ],
            )
        )
    return out


def _usage_orders(
    scope: ReportScope, conn: Connection, start: dt.date, end: dt.date, account: str | None
) -> list[_Row]:
    """Usage deductions summed per account, day and commodity (sorted at the day's end)."""
    j, p = t.journal, t.posting
    lo, hi = scope.midnight(start), scope.midnight(end)
    days = buckets(start, end, "day")
    bounds = [scope.midnight(d) for _, d in days] + [hi]
    b = bucket_of(j.c.created_at, bounds).label("b")
    usage_q = (
        sa.select(
            b, j.c.account_id, p.c.ledger_account, sa.func.sum(p.c.amount_fen), sa.func.count()
        )
        .join(j, j.c.id == p.c.journal_id)
        .where(
            j.c.kind == "usage",
            p.c.ledger_account.like("rev:%"),
            j.c.created_at >= lo,
            j.c.created_at < hi,
        )
        .group_by(b, j.c.account_id, p.c.ledger_account)
    )
    if account is not None:
        usage_q = usage_q.where(j.c.account_id == account)
    out: list[_Row] = []
    for bucket, who, code, total, n in conn.execute(usage_q).all():
        day = days[int(bucket)][1]
        stream = code.split(":", 1)[1]
        out.append(
            (
                (scope.midnight(day) + dt.timedelta(hours=23, minutes=59), 0),
                [
                    f"{day} (day)",
                    f"usage {stream}",
                    who,
                    "",
                    yuan(int(total)),  # Dr wallet = Cr revenue: −revenue posting
                    yuan(0),
                    yuan(0),
                    f"{n} deduction(s)",
                ],
            )
        )
    return out


def _customer(code: str) -> tuple[str, str]:
    """(account, column) of a wallet or receivable ledger account."""
    if code.startswith("asset:ar:"):
        return code.split(":", 2)[2], "owed"
    _, _, rest = code.partition("liab:wallet:")
    account, _, kind = rest.rpartition(":")
    return account, kind
