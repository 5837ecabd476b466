"""Posting runs: one computation of a pool or a charge for a period, and its revisions.

A run's *lines* (account, amount, description) are computed by `apportion` or `charges`
with the rating module's functions (`round_fen`, `largest_remainder`); this module only
writes them: one balanced journal through `ledger.post_journal` per run (key
`pool:<id>:<period>` or `charge:<id>:<period>`, `…:r<n>` for later revisions), an
itemised `billing_item` per account line, and the `billing_run` row.

Idempotency per (source, period): running again computes the lines again and compares
their digest with the latest revision — the same lines change nothing; other lines (a
corrected reading, a new tenant) reverse the posted revision (`ledger.reverse`, never an
edit) and post a new one. Items of a reversed revision that are not on a bill yet are
voided; items already on a bill get their negative on the next bill.

Where the money comes from: mode `wallet` takes each line from the account's general
wallet when it holds enough, otherwise the whole line is owed (`asset:ar:<account>`,
domain.md §6: "if the general wallet is short, deduct nothing and create AR"); mode
`bill` owes every line (it appears on the account's next bill). Lines of rooms without a
tenant go to the owner's expense `exp:common_area_vacant`. The credit side is one revenue
account (`rev:public_energy`, `rev:property`, ...).
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import ledger
from ..db import FastStatement, db_time
from ..db import schema as t
from ..ledger import Posting, RequestError
from .settings import Mode

VACANT = "exp:common_area_vacant"


_ITEM_COLUMNS = (
    "account_id",
    "period",
    "kind",
    "source",
    "description",
    "quantity",
    "unit_price",
    "amount_fen",
    "mode",
    "run_id",
    "journal_id",
    "bill_id",
    "void",
    "created_at",
)
_insert_items = FastStatement(t.billing_item.insert(), _ITEM_COLUMNS)


def insert_items(conn: Connection, rows: Sequence[Mapping[str, Any]], now: dt.datetime) -> None:
    """Insert itemised charges (many at once, on the caller's transaction)."""
    if not rows:
        return
    at = db_time(conn, now)
    _insert_items.executemany(
        conn,
        [{**{c: r.get(c) for c in _ITEM_COLUMNS}, "void": False, "created_at": at} for r in rows],
    )


def ar_code(account_id: str) -> str:
    """The receivable of an account: what it owes (post-paid usage, billed charges)."""
    return f"asset:ar:{account_id}"


class RunState(enum.StrEnum):
    POSTED = "POSTED"
    HELD = "HELD"
    FAULT = "FAULT"
    NO_DATA = "NO_DATA"
    EMPTY = "EMPTY"
    REVERSED = "REVERSED"


@dataclass(frozen=True, slots=True)
class Line:
    """One account's share of a run (account None: a room without a tenant)."""

    account_id: str | None
    room: str | None
    amount_fen: int
    kind: str
    description: str
    quantity: str = ""
    unit_price: str = ""

    def record(self) -> dict[str, Any]:
        return {
            "account": self.account_id,
            "room": self.room,
            "amount_fen": self.amount_fen,
            "kind": self.kind,
            "description": self.description,
            "quantity": self.quantity,
            "unit_price": self.unit_price,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> Line:
        return cls(
            r["account"],
            r["room"],
            int(r["amount_fen"]),
            r["kind"],
            r["description"],
            r.get("quantity", ""),
            r.get("unit_price", ""),
        )


@dataclass(slots=True)
class Computed:
    """What a computation produced for (source, period)."""

    source: str
    period: str
    #: POSTED when it is to be posted; HELD, FAULT, NO_DATA or EMPTY otherwise.
    state: RunState
    lines: list[Line]
    revenue: str
    mode: Mode
    journal_kind: str
    memo: str
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def amount_fen(self) -> int:
        return sum(ln.amount_fen for ln in self.lines)

    def digest(self) -> str:
        body = json.dumps(
            {
                "state": self.state.value,
                "lines": [ln.record() for ln in self.lines],
                "mode": self.mode.value,
                "revenue": self.revenue,
                "reason": self.reason,
            },
            sort_keys=True,
        )
        return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class RunResult:
    source: str
    period: str
    revision: int
    state: str
    amount_fen: int
    journal_id: int | None
    #: True when nothing changed (the same computation as the latest revision).
    unchanged: bool
    reason: str
    detail: Mapping[str, Any]
    #: The revision this one reversed, if any.
    reversed_revision: int | None = None
    lines: tuple[Line, ...] = ()


def latest_run(
    conn: Connection, source: str, period: str, *, lock: bool = False, detail: bool = True
) -> Any:
    r = t.billing_run
    columns = list(r.c) if detail else [c for c in r.c if c.name != "detail"]
    q = (
        sa.select(*columns)
        .where(r.c.source == source, r.c.period == period)
        .order_by(r.c.revision.desc())
        .limit(1)
    )
    if lock:
        q = q.with_for_update()
    return conn.execute(q).first()


def list_runs(
    conn: Connection, *, period: str | None = None, source: str | None = None
) -> list[Any]:
    r = t.billing_run
    q = sa.select(r).order_by(r.c.period, r.c.source, r.c.revision)
    if period is not None:
        q = q.where(r.c.period == period)
    if source is not None:
        q = q.where(r.c.source == source)
    return list(conn.execute(q).all())


@dataclass(frozen=True, slots=True)
class RunListing:
    """A run as `billing runs` shows it: what it posted, when, and who approved it."""

    source: str
    period: str
    revision: int
    state: str
    amount_fen: int
    journal_id: int | None
    #: Why it was held or stopped; for an approved run, what was accepted (not "held").
    reason: str
    requested_by: str
    #: When its journal was posted (for an approved run: when it was approved).
    posted_at: dt.datetime | None
    approved_by: str | None

    @property
    def approved_at(self) -> dt.datetime | None:
        return self.posted_at if self.approved_by else None


#: How `apportion` ends the reason of a run it holds for an operator's approval.
HELD_SUFFIX = ": held for approval"


def approved_reason(reason: str) -> str:
    """The reason of a held run once approved: what the operator accepted, not "held"."""
    if reason.endswith(HELD_SUFFIX):
        return reason.removesuffix(HELD_SUFFIX) + ": accepted on approval"
    return reason


def list_run_listings(conn: Connection, *, period: str | None = None) -> list[RunListing]:
    """Every run (of `period`) with its posting time and approval, oldest period first."""
    r, j = t.billing_run, t.journal
    q = (
        sa.select(r, j.c.created_at.label("posted_at"))
        .outerjoin(j, j.c.id == r.c.journal_id)
        .order_by(r.c.period, r.c.source, r.c.revision)
    )
    if period is not None:
        q = q.where(r.c.period == period)
    out = []
    for row in conn.execute(q).all():
        reason = approved_reason(row.reason or "") if row.approved_by else row.reason or ""
        out.append(
            RunListing(
                row.source,
                row.period,
                int(row.revision),
                row.state,
                int(row.amount_fen),
                row.journal_id,
                reason,
                row.requested_by,
                row.posted_at,
                row.approved_by,
            )
        )
    return out


def _key(source: str, period: str, revision: int) -> str:
    return f"{source}:{period}" + ("" if revision == 1 else f":r{revision}")


def _result(row: Any, unchanged: bool, reversed_revision: int | None = None) -> RunResult:
    detail = dict(row.detail or {})
    return RunResult(
        row.source,
        row.period,
        row.revision,
        row.state,
        int(row.amount_fen),
        row.journal_id,
        unchanged,
        row.reason,
        detail,
        reversed_revision,
        tuple(Line.from_record(x) for x in detail.get("lines", [])),
    )


def apply(conn: Connection, computed: Computed, *, actor: str, now: dt.datetime) -> RunResult:
    """Record `computed` as the next revision of its (source, period) unless it equals the
    latest one; post it when its state is POSTED (see the module docstring)."""
    digest = computed.digest()
    latest = latest_run(conn, computed.source, computed.period, lock=True, detail=False)
    if latest is not None and latest.digest == digest and latest.state != RunState.REVERSED:
        return _result(latest_run(conn, computed.source, computed.period), True)
    revision = 1 if latest is None else int(latest.revision) + 1
    reversed_revision = None
    if latest is not None and latest.state == RunState.POSTED:
        withdraw(conn, latest, f"re-run of {computed.source} {computed.period}", actor, now)
        reversed_revision = int(latest.revision)
    elif latest is not None and latest.state != RunState.REVERSED:
        conn.execute(
            t.billing_run.update()
            .where(t.billing_run.c.id == latest.id)
            .values(state=RunState.REVERSED.value, updated_at=now)
        )
    detail = dict(computed.detail)
    detail["lines"] = [ln.record() for ln in computed.lines]
    detail["mode"] = computed.mode.value
    detail["revenue"] = computed.revenue
    detail["journal_kind"] = computed.journal_kind
    detail["memo"] = computed.memo
    run_id = conn.execute(
        t.billing_run.insert().returning(t.billing_run.c.id),
        {
            "source": computed.source,
            "period": computed.period,
            "revision": revision,
            "state": computed.state.value,
            "amount_fen": computed.amount_fen,
            "digest": digest,
            "detail": detail,
            "reason": computed.reason[:500],
            "journal_id": None,
            "requested_by": actor[:100],
            "created_at": now,
            "updated_at": now,
        },
    ).scalar_one()
    if computed.state == RunState.POSTED:
        _post(conn, run_id, computed, revision, actor=actor, now=now)
    row = conn.execute(sa.select(t.billing_run).where(t.billing_run.c.id == run_id)).one()
    return _result(row, False, reversed_revision)


def approve(
    conn: Connection, source: str, period: str, *, actor: str, now: dt.datetime
) -> RunResult:
    """Post a HELD run as it was computed (an operator accepted the loss or the readings)."""
    latest = latest_run(conn, source, period, lock=True)
    if latest is None:
        raise RequestError("period", f"{source} has no run for {period}")
    if latest.state == RunState.POSTED:
        return _result(latest, True)
    if latest.state != RunState.HELD:
        raise RequestError(
            "period", f"{source} {period} is {latest.state}, not HELD: nothing to approve"
        )
    detail = dict(latest.detail or {})
    computed = Computed(
        source,
        period,
        RunState.POSTED,
        [Line.from_record(x) for x in detail.get("lines", [])],
        detail["revenue"],
        Mode(detail["mode"]),
        detail["journal_kind"],
        detail["memo"],
    )
    _post(conn, latest.id, computed, int(latest.revision), actor=actor, now=now)
    conn.execute(
        t.billing_run.update()
        .where(t.billing_run.c.id == latest.id)
        .values(approved_by=actor[:100], updated_at=now)
    )
    row = conn.execute(sa.select(t.billing_run).where(t.billing_run.c.id == latest.id)).one()
    return _result(row, False)


def withdraw(conn: Connection, row: Any, reason: str, actor: str, now: dt.datetime) -> None:
    """Reverse a POSTED run's journal and take its items back (see the module docstring)."""
    reversal = ledger.reverse(
        conn,
        int(row.journal_id),
        reason=reason,
        requested_by=actor,
        now=now,
    )
    items = conn.execute(
        sa.select(t.billing_item, t.bill.c.state.label("bill_state"))
        .select_from(t.billing_item.outerjoin(t.bill, t.bill.c.id == t.billing_item.c.bill_id))
        .where(t.billing_item.c.run_id == row.id, t.billing_item.c.void.is_(False))
    ).all()
    on_bill = [i for i in items if i.bill_id is not None and i.bill_state != "DRAFT"]
    loose = [i.id for i in items if i.bill_id is None or i.bill_state == "DRAFT"]
    if loose:
        conn.execute(
            t.billing_item.update()
            .where(t.billing_item.c.id.in_(loose))
            .values(void=True, bill_id=None)
        )
    if on_bill:
        conn.execute(
            t.billing_item.insert(),
            [
                {
                    "account_id": i.account_id,
                    "period": i.period,
                    "kind": i.kind,
                    "source": i.source,
                    "description": f"correction: {i.description}"[:300],
                    "quantity": i.quantity,
                    "unit_price": i.unit_price,
                    "amount_fen": -int(i.amount_fen),
                    "mode": i.mode,
                    "run_id": row.id,
                    "journal_id": reversal.journal.id,
                    "bill_id": None,
                    "void": False,
                    "created_at": now,
                }
                for i in on_bill
            ],
        )
    conn.execute(
        t.billing_run.update()
        .where(t.billing_run.c.id == row.id)
        .values(
            state=RunState.REVERSED.value,
            reversal_journal_id=reversal.journal.id,
            updated_at=now,
        )
    )


def general_balances(conn: Connection, accounts: Sequence[str]) -> dict[str, int]:
    """General wallet balances of `accounts`, row-locked until the transaction ends."""
    w = t.wallet
    out: dict[str, int] = {}
    ids = sorted(set(accounts))
    for i in range(0, len(ids), 5000):
        for account_id, balance in conn.execute(
            sa.select(w.c.account_id, w.c.balance_fen)
            .where(w.c.kind == "general", w.c.account_id.in_(ids[i : i + 5000]))
            .with_for_update()
        ).all():
            out[account_id] = int(balance)
    return out


def _post(
    conn: Connection,
    run_id: int,
    computed: Computed,
    revision: int,
    *,
    actor: str,
    now: dt.datetime,
) -> None:
    """Post run `run_id` (see the module docstring): one balanced journal, one billing
    item per account line; a run whose lines are all zero is EMPTY."""
    lines = [ln for ln in computed.lines if ln.amount_fen]
    if not lines:
        conn.execute(
            t.billing_run.update()
            .where(t.billing_run.c.id == run_id)
            .values(state=RunState.EMPTY.value, updated_at=now)
        )
        return
    tenants = [ln.account_id for ln in lines if ln.account_id is not None]
    if len(set(tenants)) != len(tenants):
        raise RequestError("lines", f"{computed.source}: an account has two lines in one run")
    postings, item_modes, total = _postings(conn, computed, lines, tenants)
    journal_id = _post_journal(conn, computed, revision, postings, total, actor=actor, now=now)
    rows = [
        _item_row(computed, ln, mode, run_id, journal_id, now)
        for ln, mode in zip(lines, item_modes, strict=True)
        if ln.account_id is not None
    ]
    insert_items(conn, rows, now)
    conn.execute(
        t.billing_run.update()
        .where(t.billing_run.c.id == run_id)
        .values(state=RunState.POSTED.value, journal_id=journal_id, updated_at=now)
    )


def _postings(
    conn: Connection, computed: Computed, lines: Sequence[Line], tenants: Sequence[str]
) -> tuple[list[Posting], list[str], int]:
    """(the run's postings, the mode of each line's item, the total): a line comes from the general
    wallet when the run's mode is `wallet` and the wallet holds it, else it is owed; a
    vacant room's line is the owner's expense. The revenue takes the total."""
    balances = general_balances(conn, tenants) if computed.mode is Mode.WALLET else {}
    postings: list[Posting] = []
    item_modes: list[str] = []
    for ln in lines:
        if ln.account_id is None:
            postings.append(Posting(VACANT, ln.amount_fen))
            item_modes.append("")
            continue
        balance = balances.get(ln.account_id)
        if computed.mode is Mode.WALLET and balance is not None and balance >= ln.amount_fen > 0:
            postings.append(Posting(ledger.wallet_code(ln.account_id, "general"), ln.amount_fen))
            balances[ln.account_id] = balance - ln.amount_fen
            item_modes.append(Mode.WALLET.value)
        else:
            postings.append(Posting(ar_code(ln.account_id), ln.amount_fen))
            item_modes.append(Mode.BILL.value)
    total = sum(p.amount_fen for p in postings)
    postings.append(Posting(computed.revenue, -total))
    return [p for p in postings if p.amount_fen], item_modes, total


def _post_journal(
    conn: Connection,
    computed: Computed,
    revision: int,
    postings: Sequence[Posting],
    total: int,
    *,
    actor: str,
    now: dt.datetime,
) -> int:
    digest = hashlib.sha256(
        json.dumps([[p.ledger_account, p.amount_fen] for p in postings]).encode()
    ).hexdigest()
    posted = ledger.post_journal(
        conn,
        computed.journal_kind,
        list(postings),
        idempotency_key=_key(computed.source, computed.period, revision),
        memo=computed.memo,
        requested_by=actor,
        request={
            "source": computed.source,
            "period": computed.period,
            "revision": revision,
            "total_fen": total,
            "postings": len(postings),
            "digest": digest,
        },
        now=now,
    )
    return posted.journal.id


def _item_row(
    computed: Computed,
    ln: Line,
    mode: str,
    run_id: int,
    journal_id: int,
    now: dt.datetime,
) -> dict[str, Any]:
    short = (
        " (general wallet short: owed)" if mode == "bill" and computed.mode is Mode.WALLET else ""
    )
    return {
        "account_id": ln.account_id,
        "period": computed.period,
        "kind": ln.kind,
        "source": computed.source,
        "description": (ln.description + short)[:300],
        "quantity": ln.quantity[:60],
        "unit_price": ln.unit_price[:40],
        "amount_fen": ln.amount_fen,
        "mode": mode,
        "run_id": run_id,
        "journal_id": journal_id,
        "bill_id": None,
        "void": False,
        "created_at": now,
    }
