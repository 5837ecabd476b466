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
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...db import schema as t
from ...ledger import RequestError
from ..export import Chart, Table, yuan
from .attribution import Flow, group, revenue_flows
from .common import ReportScope, bucket_of, buckets

#: Revenue by posting date (the journal's time) or by service period (what it pays for).
BASES = ("posting", "service")

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
    scope: ReportScope,
    conn: Connection,
    start: dt.date,
    end: dt.date,
    by: str = "month",
    basis: str = "posting",
) -> Table:
    """Revenue per bucket and stream, by posting date or by service period (`BASES`)."""
    check_basis(basis)
    spans = buckets(start, end, by)
    bounds = [scope.midnight(d) for _, d in spans] + [scope.midnight(end)]
    flows = revenue_flows(scope, conn, bounds)
    streams = [s for s, _ in STREAMS]
    grid = group(flows, basis, streams, len(spans))
    title = "by posting date" if basis == "posting" else "by service period"
    table = Table(
        f"Revenue {start} to {end - dt.timedelta(days=1)} by {by}, {title}",
        [by, *[name for _, name in STREAMS], "other", "total"],
        sheet="Revenue",
        chart=Chart("stacked", 0, tuple(range(1, len(streams) + 2)), "Revenue by stream", "CNY"),
        notes=_revenue_notes(scope, basis, flows),
    )
    for (label, _), cells in zip(spans, grid, strict=True):
        table.rows.append([label, *[yuan(c) for c in cells], yuan(sum(cells))])
    sums = [sum(g[i] for g in grid) for i in range(len(streams) + 1)]
    table.total = ["total", *[yuan(s) for s in sums], yuan(sum(sums))]
    return table


def check_basis(basis: str) -> str:
    if basis not in BASES:
        raise RequestError("basis", f"expected one of {', '.join(BASES)}; got {basis!r}")
    return basis


def _revenue_notes(scope: ReportScope, basis: str, flows: Sequence[Flow]) -> list[str]:
    tz = scope.site.info.timezone
    if basis == "posting":
        return [
            "Basis: posting date. Revenue = credits to rev:* net of reversals, by journal "
            f"time ({tz}); CNY. Equal to the ledger's rev:* postings of each bucket; a "
            "bucket never changes once it is over."
        ]
    notes = [
        "Basis: service period. Revenue = credits to rev:* net of reversals, in the period "
        "each pays for: prepaid usage by its reading time, common-area pools and charges "
        "by their run's period, post-paid usage and late fees by their bill's period, one-"
        f"off charges by the period they were charged in ({tz}); CNY. A period's revenue "
        "sits at the period's start. A period still being billed changes when its bills "
        "and charges are posted; `report revenue-bases` shows what moved."
    ]
    fallback = sum(f.fen for f in flows if f.fallback and f.served is not None)
    if fallback:
        notes.append(
            f"{yuan(fallback)} has no service period (not a reading time, run, bill or "
            "charge) and is placed by posting time."
        )
    return notes


def revenue_bases(
    scope: ReportScope, conn: Connection, start: dt.date, end: dt.date, by: str = "month"
) -> Table:
    """Revenue by posting date against by service period, bucket by bucket, with what
    moved between them: `in` = posted in another bucket (or outside the span) for this
    one, `out` = posted in this bucket for another. service = posting + in − out."""
    spans = buckets(start, end, by)
    bounds = [scope.midnight(d) for _, d in spans] + [scope.midnight(end)]
    flows = revenue_flows(scope, conn, bounds)
    posting = [0] * len(spans)
    service = [0] * len(spans)
    moved_in: list[dict[str, int]] = [{} for _ in spans]
    moved_out: list[dict[str, int]] = [{} for _ in spans]
    for f in flows:
        if f.posted is not None:
            posting[f.posted] += f.fen
        if f.served is not None:
            service[f.served] += f.fen
        if f.posted == f.served:
            continue
        what = f"{_stream_name(f.stream)} for {f.service} posted {f.posted_on} ({f.source})"
        for side, i in ((moved_in, f.served), (moved_out, f.posted)):
            if i is not None:
                side[i][what] = side[i].get(what, 0) + f.fen
    table = Table(
        f"Revenue {start} to {end - dt.timedelta(days=1)} by {by}: posting date against "
        "service period",
        [by, "by posting date", "in", "out", "by service period", "what moved"],
        sheet="Revenue bases",
        notes=[
            "in: revenue posted in another bucket (or outside the span) for this one; out: "
            "revenue posted in this bucket for another. by service period = by posting "
            "date + in − out. Over a span that holds both the posting and the service "
            "period of everything, the two totals are equal; CNY."
        ],
    )
    for i, (label, _) in enumerate(spans):
        ins, outs = sum(moved_in[i].values()), sum(moved_out[i].values())
        moves = [f"+{yuan(v)} {k}" for k, v in sorted(moved_in[i].items()) if v] + [
            f"−{yuan(v)} {k}" for k, v in sorted(moved_out[i].items()) if v
        ]
        table.rows.append(
            [label, yuan(posting[i]), yuan(ins), yuan(outs), yuan(service[i]), "; ".join(moves)]
        )
    ins = sum(sum(m.values()) for m in moved_in)
    outs = sum(sum(m.values()) for m in moved_out)
    table.total = ["total", yuan(sum(posting)), yuan(ins), yuan(outs), yuan(sum(service)), ""]
    return table


def _stream_name(stream: str) -> str:
    return dict(STREAMS).get(stream, stream)


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
            "Basis: posting date (the journal's time). Changes in CNY: energy and general "
            "wallets (+ = more money for the tenant), owed (+ = more owed). Usage deductions "
            "are summed per account and day."
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
