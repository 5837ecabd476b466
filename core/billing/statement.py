"""An account's itemised statement as a tenant reads it (`billing statement`): each charge
with the day it was made (site time), what it is in words, its description, the amount in
yuan and how it is paid — from the general wallet, owed on the next bill, on a bill (by its
number) or withdrawn. No journal, run or wallet ids: those are the ledger's, not the
tenant's."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t

#: What each kind of billed item is, in words.
KIND_WORDS = {
    "public_energy": "common area",
    "property": "property fee",
    "rent": "rent",
    "service": "service",
    "custom": "other charge",
    "electricity": "electricity",
    "water": "water",
    "late_fee": "late fee",
}
#: What `runs` adds to a line the general wallet could not pay (said in `how` instead).
_SHORT = " (general wallet short: owed)"


@dataclass(frozen=True, slots=True)
class StatementLine:
    day: dt.date
    period: str
    what: str
    description: str
    amount_fen: int
    how: str


def statement(
    conn: Connection, account_id: str, tz: ZoneInfo, *, period: str | None = None
) -> list[StatementLine]:
    """The account's charges (of `period`), newest first."""
    i, b = t.billing_item, t.bill
    q = (
        sa.select(i, b.c.number, b.c.state.label("bill_state"))
        .outerjoin(b, b.c.id == i.c.bill_id)
        .where(i.c.account_id == account_id)
        .order_by(i.c.created_at.desc(), i.c.id.desc())
    )
    if period is not None:
        q = q.where(i.c.period == period)
    return [
        StatementLine(
            r.created_at.astimezone(tz).date(),
            r.period,
            KIND_WORDS.get(r.kind, r.kind.replace("_", " ")),
            r.description.removesuffix(_SHORT),
            int(r.amount_fen),
            _how(r),
        )
        for r in conn.execute(q).all()
    ]


def _how(r: sa.Row) -> str:
    if r.void:
        return "withdrawn (not charged)"
    if r.number is not None and r.bill_state != "DRAFT":
        return f"on bill {r.number}" + (" (void)" if r.bill_state == "VOID" else "")
    if r.mode == "wallet":
        return "paid from the general wallet"
    if r.description.endswith(_SHORT):
        return "owed on the next bill (the general wallet was short)"
    return "owed on the next bill"
