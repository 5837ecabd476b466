"""Confirming and issuing bills.

Confirming locks the drafts, checks each against its inputs now (a draft that changed since
it was reviewed, or has problems, is refused), then posts the usage and late fees of every
bill it confirms in one journal (Dr `asset:ar:<account>` / Cr `rev:electricity`,
`rev:water`, `rev:late_fee`), records one billed item per meter's usage and per late fee,
and attaches the billed items the bills carry. Issuing sets the due date."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ... import ledger
from ...db import db_time
from ...db import schema as t
from ...db.among import among
from ...ledger import JournalKind, Posting, RequestError
from ..periods import parse_period
from ..runs import ar_code, insert_items
from .model import BillState, BillSummary
from .store import ATTACH_ITEM, CONFIRM_BILL, summaries

#: A refused draft: (number, why not).
Refusal = tuple[str, str]


def check_actor(actor: str) -> None:
    if not actor or not actor.strip():
        raise RequestError("actor", "required (audit)")


def lock_drafts(
    conn: Connection, period: str | None, numbers: Sequence[str] | None
) -> dict[str, list[Any]]:
    """period → the drafts to confirm (all of `period`, or `numbers`), row-locked."""
    b = t.bill
    q = (
        sa.select(
            b.c.id,
            b.c.number,
            b.c.account_id,
            b.c.period,
            b.c.total_fen,
            b.c.digest,
            sa.cast(b.c.problems, sa.Text).label("problems"),
            sa.cast(b.c.lines, sa.Text).label("lines"),
        )
        .where(b.c.state == BillState.DRAFT)
        .with_for_update()
    )
    if numbers:
        q = q.where(among(conn, b.c.number, numbers))
    elif period is not None:
        parse_period(period)
        q = q.where(b.c.period == period)
    else:
        raise RequestError("period", "name the period or the bills to confirm")
    drafts = conn.execute(q.order_by(b.c.period, b.c.account_id)).all()
    if numbers:
        found = {d.number for d in drafts}
        for n in numbers:
            if n not in found:
                state = conn.execute(sa.select(b.c.state).where(b.c.number == n)).scalar()
                if state is None:
                    raise RequestError("bill", f"unknown bill {n!r}")
    by_period: dict[str, list[Any]] = {}
    for d in drafts:
        by_period.setdefault(d.period, []).append(d)
    return dict(sorted(by_period.items()))


def recheck(
    drafts: Sequence[Any], digests: Mapping[str, str]
) -> tuple[list[Any], list[Refusal], list[str]]:
    """(drafts to confirm, refusals, accounts whose draft is to be made again) of one
    period's drafts, given the digests of their inputs now."""
    confirmed: list[Any] = []
    refused: list[Refusal] = []
    changed: list[str] = []
    for r in drafts:
        digest = digests.get(r.account_id)
        if digest is None:
            refused.append((r.number, "nothing to bill any more"))
            changed.append(r.account_id)
        elif digest != r.digest:
            refused.append((r.number, "it changed since the draft was made: review it again"))
            changed.append(r.account_id)
        elif r.problems and r.problems != "[]":
            refused.append((r.number, "; ".join(json.loads(r.problems))))
        else:
            confirmed.append(r)
    return confirmed, refused, changed


def post_confirmed(
    conn: Connection, confirmed: Sequence[Any], *, actor: str, now: dt.datetime
) -> list[BillSummary]:
    """Post, itemise and mark the `confirmed` drafts (see the module docstring)."""
    postings: dict[str, int] = {}
    item_rows: list[dict[str, Any]] = []
    attach: list[dict[str, Any]] = []
    for r in confirmed:
        item_rows.extend(_posted_items(r, postings, attach, now))
    journal_id = _post_journal(conn, confirmed, postings, actor=actor, now=now)
    if journal_id is not None:
        for row in item_rows:
            row["journal_id"] = journal_id
    insert_items(conn, item_rows, now)
    if attach:
        ATTACH_ITEM.executemany(conn, attach)
    at = db_time(conn, now)
    CONFIRM_BILL.executemany(
        conn,
        [
            {
                "b_id": r.id,
                "state": BillState.CONFIRMED if int(r.total_fen) > 0 else BillState.PAID,
                "paid": 0 if int(r.total_fen) > 0 else int(r.total_fen),
                "journal": journal_id,
                "by": actor[:100],
                "at": at,
            }
            for r in confirmed
        ],
    )
    return summaries(conn, [r.id for r in confirmed], {r.period for r in confirmed})


def _posted_items(
    draft: Any, postings: dict[str, int], attach: list[dict[str, Any]], now: dt.datetime
) -> list[dict[str, Any]]:
    """The billed items confirming `draft` makes: one per meter's usage (its lines stay on
    the bill) and per late fee. Adds their postings to `postings`; the items the bill
    carries already go to `attach`."""
    new_items: dict[str, dict[str, Any]] = {}
    for ln in json.loads(draft.lines):
        fen = int(ln["amount_fen"])
        if ln.get("posted") or not fen:
            if ln.get("item") is not None:
                attach.append({"i_id": int(ln["item"]), "bill": draft.id})
            continue
        code = ar_code(draft.account_id)
        postings[code] = postings.get(code, 0) + fen
        revenue = f"rev:{ln['kind']}"
        postings[revenue] = postings.get(revenue, 0) - fen
        key = f"{ln['kind']}:{ln.get('meter') or ln.get('bill') or ''}"
        item = new_items.get(key)
        if item is None:
            new_items[key] = _item_of(draft, ln, fen, now)
        else:
            item["amount_fen"] += fen
    return list(new_items.values())


def _item_of(draft: Any, ln: Mapping[str, Any], fen: int, now: dt.datetime) -> dict[str, Any]:
    meter = ln.get("meter")
    return {
        "account_id": draft.account_id,
        "period": draft.period,
        "kind": ln["kind"],
        "source": f"bill:{draft.number}"[:100],
        "description": (
            f"{ln['kind']} {ln['meter']} {draft.period}" if meter else ln["description"]
        )[:300],
        "quantity": "" if meter else str(ln.get("quantity", ""))[:60],
        "unit_price": "" if meter else str(ln.get("unit_price", ""))[:40],
        "amount_fen": fen,
        "mode": "bill",
        "run_id": None,
        "bill_id": draft.id,
        "void": False,
        "created_at": now,
    }


def _post_journal(
    conn: Connection,
    confirmed: Sequence[Any],
    postings: Mapping[str, int],
    *,
    actor: str,
    now: dt.datetime,
) -> int | None:
    """One journal for the bills confirmed together (keyed by their numbers); None when
    they post nothing."""
    lines = [Posting(code, fen) for code, fen in sorted(postings.items()) if fen]
    if not lines:
        return None
    numbers_digest = hashlib.sha256(",".join(r.number for r in confirmed).encode()).hexdigest()
    posted = ledger.post_journal(
        conn,
        JournalKind.CHARGE,
        lines,
        idempotency_key=f"bills:{numbers_digest[:32]}",
        memo=f"post-paid bills confirmed ({len(confirmed)})",
        requested_by=actor,
        request={
            "bills": len(confirmed),
            "digest": numbers_digest,
            "total_fen": sum(f for c, f in postings.items() if c.startswith("asset:")),
        },
        now=now,
    )
    return posted.journal.id


def issue(
    conn: Connection,
    *,
    period: str | None,
    numbers: Sequence[str] | None,
    due_date: str,
    actor: str,
    now: dt.datetime,
) -> list[BillSummary]:
    """Issue confirmed bills (all of `period`, or `numbers`) with `due_date`."""
    check_actor(actor)
    b = t.bill
    q = sa.select(b.c.id, b.c.number, b.c.state, b.c.period)
    if numbers:
        q = q.where(among(conn, b.c.number, numbers))
    elif period is not None:
        parse_period(period)
        q = q.where(b.c.period == period, b.c.state == BillState.CONFIRMED)
    else:
        raise RequestError("period", "name the period or the bills to issue")
    rows = conn.execute(q).all()
    if numbers:
        found = {r.number: r.state for r in rows}
        for n in numbers:
            if n not in found:
                raise RequestError("bill", f"unknown bill {n!r}")
            if found[n] == BillState.DRAFT:
                raise RequestError("bill", f"bill {n} is a draft: confirm it first")
    ids = [r.id for r in rows if r.state == BillState.CONFIRMED]
    values = {
        "state": BillState.ISSUED,
        "due_date": due_date,
        "issued_at": now,
        "issued_by": actor[:100],
        "updated_at": now,
    }
    if numbers:
        for i in range(0, len(ids), 5000):
            conn.execute(b.update().where(b.c.id.in_(ids[i : i + 5000])).values(**values))
    else:  # the whole period: one statement
        conn.execute(
            b.update()
            .where(b.c.period == period, b.c.state == BillState.CONFIRMED)
            .values(**values)
        )
    return summaries(conn, [r.id for r in rows], {r.period for r in rows})
