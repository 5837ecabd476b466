"""The bill table's queries shared by the steps: prepared statements for the hot paths
(month-end drafts thousands of bills), summaries, and reading one bill or many."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...db import FastStatement
from ...db import schema as t
from ...db.among import among
from ...ledger import RequestError
from ..periods import parse_period
from .model import BillState, BillSummary, BillView, bill_view
from .paying import with_payments


class OpenItem(NamedTuple):
    """A billed item (common area, charge) not on a confirmed bill yet."""

    id: int
    account_id: str
    kind: str
    description: str
    quantity: str
    unit_price: str
    amount_fen: int


class OverdueBill(NamedTuple):
    """An issued bill of an earlier period (a late fee may be due on it)."""

    number: str
    account_id: str
    period: str
    total_fen: int
    paid_fen: int
    due_date: str | None


_i, _b = t.billing_item, t.bill
_a, _am = t.account, t.account_meter

OPEN_ITEMS = FastStatement(
    sa.select(
        _i.c.id,
        _i.c.account_id,
        _i.c.kind,
        _i.c.description,
        _i.c.quantity,
        _i.c.unit_price,
        _i.c.amount_fen,
    )
    .where(
        _i.c.mode == "bill",
        _i.c.void.is_(False),
        _i.c.period <= sa.bindparam("p"),
        sa.or_(
            _i.c.bill_id.is_(None),
            _i.c.bill_id.in_(sa.select(_b.c.id).where(_b.c.state == "DRAFT")),
        ),
    )
    .order_by(_i.c.account_id, _i.c.id)
)
ISSUED_BEFORE = FastStatement(
    sa.select(
        _b.c.number, _b.c.account_id, _b.c.period, _b.c.total_fen, _b.c.paid_fen, _b.c.due_date
    )
    .where(_b.c.state == "ISSUED", _b.c.period < sa.bindparam("p"))
    .order_by(_b.c.account_id, _b.c.period)
)
ACCOUNT_ROWS = FastStatement(sa.select(_a.c.id, _a.c.tariff_id, _a.c.state))
POSTPAID_METERS = FastStatement(
    sa.select(_am.c.account_id, _am.c.meter_id, _am.c.kind).where(
        _am.c.detached_at.is_(None), _am.c.control_mode == "POSTPAID"
    )
)
CONFIRMED_IN = FastStatement(
    sa.select(_b.c.account_id).where(
        _b.c.period == sa.bindparam("p"), _b.c.state != "DRAFT", _b.c.state != "VOID"
    )
)
_PERIOD_SUMMARIES = FastStatement(
    sa.select(
        _b.c.id,
        _b.c.number,
        _b.c.account_id,
        _b.c.period,
        _b.c.state,
        _b.c.total_fen,
        _b.c.paid_fen,
        _b.c.due_date,
        sa.cast(_b.c.problems, sa.Text),
    )
    .where(_b.c.period == sa.bindparam("p"))
    .order_by(_b.c.account_id)
)
ATTACH_ITEM = FastStatement(
    _i.update().where(_i.c.id == sa.bindparam("i_id")).values(bill_id=sa.bindparam("bill"))
)
CONFIRM_BILL = FastStatement(
    _b.update()
    .where(_b.c.id == sa.bindparam("b_id"))
    .values(
        state=sa.bindparam("state"),
        paid_fen=sa.bindparam("paid"),
        journal_id=sa.bindparam("journal"),
        confirmed_by=sa.bindparam("by"),
        updated_at=sa.bindparam("at"),
    )
)


def fetch(conn: Connection, statement: FastStatement, params: Mapping[str, Any]) -> list[Any]:
    cursor = statement.execute(conn, params)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


def summaries(conn: Connection, ids: Sequence[int], periods: Iterable[str]) -> list[BillSummary]:
    """The bills `ids` (of `periods`) without their lines, ordered by period and account."""
    wanted = set(ids)
    out = []
    for period in sorted(set(periods)):
        for r in fetch(conn, _PERIOD_SUMMARIES, {"p": period}):
            if r[0] in wanted:
                problems = tuple(json.loads(r[8])) if r[8] and r[8] != "[]" else ()
                out.append(
                    BillSummary(r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), r[7], problems)
                )
    return out


def get_bill(conn: Connection, number: str) -> BillView:
    row = conn.execute(sa.select(t.bill).where(t.bill.c.number == number)).first()
    if row is None:
        raise RequestError("bill", f"unknown bill {number!r}")
    return with_payments(conn, [bill_view(row)])[0]


def list_bills(
    conn: Connection,
    *,
    period: str | None = None,
    state: str | None = None,
    account_id: str | None = None,
) -> list[BillView]:
    q = sa.select(t.bill).order_by(t.bill.c.period, t.bill.c.account_id)
    if period is not None:
        parse_period(period)
        q = q.where(t.bill.c.period == period)
    if state is not None:
        q = q.where(t.bill.c.state == state)
    if account_id is not None:
        q = q.where(t.bill.c.account_id == account_id)
    return with_payments(conn, [bill_view(r) for r in conn.execute(q).all()])


def draft_ids(conn: Connection, period: str, accounts: Sequence[str] | None) -> list[int]:
    """The ids of the drafts of `period` (of `accounts`, when given)."""
    q = sa.select(t.bill.c.id).where(t.bill.c.period == period, t.bill.c.state == BillState.DRAFT)
    if accounts is not None:
        q = q.where(among(conn, t.bill.c.account_id, accounts))
    return list(conn.execute(q).scalars())
