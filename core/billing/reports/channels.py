"""Money by payment channel (AcrelCloud §4.4 finance composition): what came in and went
back out through cash, WeChat, Alipay, the bank, the counter... per day, month or year.

Every payment is posted to the clearing account of its channel (`asset:psp_clearing:
<channel>`): a top-up debits it (the top-up order row keeps its channel), a bill payment
debits it, a refund paid out credits the channels of the top-ups it pays back, a reversed
top-up credits it. So a channel's net in a bucket is exactly the net postings of its
clearing account, and the top-ups column adds up to the top-up orders of the span.
Buckets are by posting time (money moves when it moves), in the site's time zone.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...db import schema as t
from ..export import Chart, Table, yuan
from .common import ReportScope, bucket_of, buckets

CLEARING = "asset:psp_clearing:"
#: How a channel code is shown (others as they are).
CHANNEL_NAMES = {
    "cash": "cash",
    "wechat": "WeChat",
    "alipay": "Alipay",
    "bank": "bank",
    "counter": "counter",
    "unionpay": "UnionPay",
}
#: Journal kind → column: top-ups and bill payments in, refunds out; the rest is "other".
_KIND = {"topup": "topup", "settlement": "payment", "refund_settle": "refund"}


@dataclass(slots=True)
class _Cell:
    topups: int = 0
    topup_fen: int = 0
    payments: int = 0
    payment_fen: int = 0
    refunds: int = 0
    refund_fen: int = 0
    other_fen: int = 0

    @property
    def net(self) -> int:
        return self.topup_fen + self.payment_fen - self.refund_fen + self.other_fen

    def add(self, kind: str, count: int, fen: int) -> None:
        column = _KIND.get(kind, "other")
        if column == "topup":
            self.topups, self.topup_fen = self.topups + count, self.topup_fen + fen
        elif column == "payment":
            self.payments, self.payment_fen = self.payments + count, self.payment_fen + fen
        elif column == "refund":
            self.refunds, self.refund_fen = self.refunds + count, self.refund_fen - fen
        else:
            self.other_fen += fen


def channel_name(code: str) -> str:
    return CHANNEL_NAMES.get(code, code)


def channels(
    scope: ReportScope, conn: Connection, start: dt.date, end: dt.date, by: str = "month"
) -> Table:
    """Per bucket and channel: top-ups, bill payments, refunds paid out, other, net."""
    spans = buckets(start, end, by)
    bounds = [scope.midnight(d) for _, d in spans] + [scope.midnight(end)]
    j, p = t.journal, t.posting
    b = bucket_of(j.c.created_at, bounds).label("b")
    rows = conn.execute(
        sa.select(
            b,
            p.c.ledger_account,
            j.c.kind,
            sa.func.count(sa.distinct(j.c.id)),
            sa.func.sum(p.c.amount_fen),
        )
        .join(j, j.c.id == p.c.journal_id)
        .where(
            p.c.ledger_account.like(f"{CLEARING}%"),
            j.c.created_at >= bounds[0],
            j.c.created_at < bounds[-1],
        )
        .group_by(b, p.c.ledger_account, j.c.kind)
    ).all()
    grid: dict[tuple[int, str], _Cell] = {}
    for i, code, kind, count, fen in rows:
        cell = grid.setdefault((int(i), code.removeprefix(CLEARING)), _Cell())
        cell.add(kind, int(count), int(fen))
    table = _table(scope, start, end, by)
    totals = _Cell()
    for (i, code), cell in sorted(grid.items()):
        table.rows.append([spans[i][0], channel_name(code), *_cells(cell)])
        for kind, count, fen in (
            ("topup", cell.topups, cell.topup_fen),
            ("settlement", cell.payments, cell.payment_fen),
            ("refund_settle", cell.refunds, -cell.refund_fen),
            ("other", 0, cell.other_fen),
        ):
            totals.add(kind, count, fen)
    table.total = ["total", "", *_cells(totals)]
    return table


def _cells(cell: _Cell) -> list[object]:
    return [
        cell.topups,
        yuan(cell.topup_fen),
        cell.payments,
        yuan(cell.payment_fen),
        cell.refunds,
        yuan(cell.refund_fen),
        yuan(cell.other_fen),
        yuan(cell.net),
    ]


def _table(scope: ReportScope, start: dt.date, end: dt.date, by: str) -> Table:
    return Table(
        f"Payments by channel {start} to {end - dt.timedelta(days=1)} by {by}, by posting date",
        [
            by,
            "channel",
            "top-ups",
            "top-ups CNY",
            "bill payments",
            "bill payments CNY",
            "refunds",
            "refunds CNY",
            "other CNY",
            "net CNY",
        ],
        sheet="Channels",
        chart=Chart("stacked", 1, (9,), "Net received by channel", "CNY"),
        notes=[
            "Basis: posting date (money moves when it is received or paid back), "
            f"{scope.site.info.timezone}; CNY. net = top-ups + bill payments − refunds paid "
            "out + other (reversed top-ups, deposits); it equals the net postings of the "
            "channel's clearing account (asset:psp_clearing:<channel>). The top-ups column "
            "adds up to the top-up orders of the span. Counts are orders (journals)."
        ],
    )
