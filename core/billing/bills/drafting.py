"""Storing drafts: each account's computed lines become its DRAFT bill of the period (again
and again until it is confirmed); a draft with nothing left to bill goes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...db import schema as t
from .lines import Computed
from .model import BillState, BillSummary, bill_number
from .store import draft_ids, summaries

_update_draft = (
    t.bill.update()
    .where(t.bill.c.id == sa.bindparam("b_id"))
    .values(
        state=sa.bindparam("state"),
        total_fen=sa.bindparam("total_fen"),
        lines=sa.bindparam("lines"),
        problems=sa.bindparam("problems"),
        digest=sa.bindparam("digest"),
        updated_at=sa.bindparam("updated_at"),
    )
)


def store_drafts(
    conn: Connection,
    period: str,
    computed: Computed,
    *,
    dates: tuple[dt.date, dt.date],
    number_prefix: str,
    accounts: Sequence[str] | None,
    now: dt.datetime,
) -> list[BillSummary]:
    """Store `computed` as the drafts of `period` (confirmed bills are left alone) and
    return the period's drafts (of `accounts`, when given)."""
    existing, voided = _period_bills(conn, period)
    inserts, updates = [], []
    for account_id, (lines, problems, digest) in computed.items():
        values = {
            "state": BillState.DRAFT,
            "total_fen": sum(int(ln["amount_fen"]) for ln in lines),
            "lines": lines,
            "problems": problems,
            "digest": digest,
            "updated_at": now,
        }
        row = existing.get(account_id)
        if row is None:
            revision = voided.get(account_id, 0) + 1
            inserts.append(
                {
                    **values,
                    "number": bill_number(number_prefix, account_id, period, revision),
                    "account_id": account_id,
                    "period": period,
                    "start_date": dates[0].isoformat(),
                    "end_date": dates[1].isoformat(),
                    "paid_fen": 0,
                    "created_at": now,
                }
            )
        elif row.state == BillState.DRAFT:
            updates.append({"b_id": row.id, **values})
    if inserts:
        conn.execute(t.bill.insert(), inserts)
    if updates:
        conn.execute(_update_draft, updates)
    stale = [
        r.id
        for a, r in existing.items()
        if r.state == BillState.DRAFT and (accounts is None or a in accounts) and a not in computed
    ]
    if stale:  # nothing left to bill: the draft goes
        conn.execute(t.bill.delete().where(t.bill.c.id.in_(stale)))
    return summaries(conn, draft_ids(conn, period, accounts), [period])


def _period_bills(conn: Connection, period: str) -> tuple[dict[str, Any], dict[str, int]]:
    """(account → its bill of `period` that is not void, account → how many are void)."""
    existing: dict[str, Any] = {}
    voided: dict[str, int] = {}
    for r in conn.execute(
        sa.select(t.bill.c.id, t.bill.c.account_id, t.bill.c.state).where(t.bill.c.period == period)
    ).all():
        if r.state == BillState.VOID:
            voided[r.account_id] = voided.get(r.account_id, 0) + 1
        else:
            existing[r.account_id] = r
    return existing, voided
