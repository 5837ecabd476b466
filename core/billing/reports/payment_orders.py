"""Online payment orders by channel (issue 11): what tenants paid through WeChat Pay,
Alipay... per day, month or year, and what of it is not in the ledger yet.

Per bucket (by the order's creation time, in the site's time zone) and channel: orders
opened, credited (count and CNY: these are the channel's online top-ups in the `channels`
report, under the provider's transaction id), refunded, closed unpaid, still open (CREATED
or PAID: waiting for the notification, the query or the credit), and in CONFLICT — money a
provider says was paid that was NOT credited: a person must decide (`openprepay payments
show`), and the provider's trade bill is where it shows.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...db import schema as t
from ..export import Chart, Table, yuan
from .channels import channel_name
from .common import ReportScope, bucket_of, buckets

_COLUMNS = ("CREDITED", "REFUNDED", "CLOSED", "OPEN", "CONFLICT")


def payment_orders(
    scope: ReportScope, conn: Connection, start: dt.date, end: dt.date, by: str = "month"
) -> Table:
    spans = buckets(start, end, by)
    bounds = [scope.midnight(d) for _, d in spans] + [scope.midnight(end)]
    o = t.payment_order
    b = bucket_of(o.c.created_at, bounds).label("b")
    rows = conn.execute(
        sa.select(b, o.c.channel, o.c.state, sa.func.count(), sa.func.sum(o.c.amount_fen))
        .where(o.c.created_at >= bounds[0], o.c.created_at < bounds[-1])
        .group_by(b, o.c.channel, o.c.state)
    ).all()
    grid: dict[tuple[int, str], dict[str, list[int]]] = {}
    for i, channel, state, count, fen in rows:
        column = "OPEN" if state in ("CREATED", "PAID") else state
        cell = grid.setdefault((int(i), channel), {c: [0, 0] for c in _COLUMNS})
        cell[column][0] += int(count)
        cell[column][1] += int(fen or 0)
    table = Table(
        f"Online payment orders {start} to {end - dt.timedelta(days=1)} by {by}, by order date",
        [
            by,
            "channel",
            "orders",
            "credited",
            "credited CNY",
            "refunded",
            "refunded CNY",
            "closed unpaid",
            "open",
            "conflicts",
            "conflicts CNY",
        ],
        sheet="Online payments",
        chart=Chart("stacked", 1, (4,), "Credited online payments by channel", "CNY"),
        notes=[
            "Basis: the order's creation time, "
            f"{scope.site.info.timezone}; CNY. Credited orders are the channel's online "
            "top-ups (see the channels report); open = CREATED or PAID, waiting for the "
            "notification, the active query or the credit; conflicts = paid at the provider "
            "(or said to be) and NOT credited: a person must decide (openprepay payments "
            "show). Refunded = credited, then paid back in full."
        ],
    )
    totals = {c: [0, 0] for c in _COLUMNS}
    for (i, channel), cell in sorted(grid.items()):
        table.rows.append([spans[i][0], channel_name(channel), *_cells(cell)])
        for c in _COLUMNS:
            totals[c][0] += cell[c][0]
            totals[c][1] += cell[c][1]
    table.total = ["total", "", *_cells(totals)]
    return table


def _cells(cell: dict[str, list[int]]) -> list[object]:
    orders = sum(count for count, _ in cell.values())
    return [
        orders,
        cell["CREDITED"][0],
        yuan(cell["CREDITED"][1]),
        cell["REFUNDED"][0],
        yuan(cell["REFUNDED"][1]),
        cell["CLOSED"][0],
        cell["OPEN"][0],
        cell["CONFLICT"][0],
        yuan(cell["CONFLICT"][1]),
    ]
