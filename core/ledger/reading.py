"""Reading the journal: what the service tails, an account's history, today's usage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t
from ..db.among import among
from .codes import wallet_code
from .values import JournalKind, WalletKind


@dataclass(frozen=True, slots=True)
class JournalLine:
    """A journal as the running service tails it (`journals_since`)."""

    id: int
    kind: str
    account_id: str | None
    meter_id: str | None
    created_at: datetime
    #: Net change of each wallet of the account in this journal (fen, + = more money).
    wallet_changes: Mapping[str, int] = field(default_factory=dict)


def journals_since(conn: Connection, after_id: int, limit: int = 1000) -> list[JournalLine]:
    """Journals with id > `after_id`, oldest first: how the service learns of top-ups and
    refunds made by the CLI or another instance (the database is the queue)."""
    rows = conn.execute(
        sa.select(
            t.journal.c.id,
            t.journal.c.kind,
            t.journal.c.account_id,
            t.journal.c.meter_id,
            t.journal.c.created_at,
        )
        .where(t.journal.c.id > after_id)
        .order_by(t.journal.c.id)
        .limit(limit)
    ).all()
    if not rows:
        return []
    changes: dict[int, dict[str, int]] = {}
    for jid, code, amount in conn.execute(
        sa.select(t.posting.c.journal_id, t.posting.c.ledger_account, t.posting.c.amount_fen).where(
            t.posting.c.journal_id.between(rows[0].id, rows[-1].id),
            t.posting.c.ledger_account.like("liab:wallet:%"),
        )
    ).all():
        kind = code.rsplit(":", 1)[1]
        changes.setdefault(jid, {})
        changes[jid][kind] = changes[jid].get(kind, 0) - amount
    return [
        JournalLine(r.id, r.kind, r.account_id, r.meter_id, r.created_at, changes.get(r.id, {}))
        for r in rows
    ]


def wallet_history(conn: Connection, account_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The latest entries that moved the account's wallets, newest first (for `account show`)."""
    codes = [wallet_code(account_id, k) for k in WalletKind]
    rows = conn.execute(
        sa.select(
            t.journal.c.id,
            t.journal.c.kind,
            t.journal.c.created_at,
            t.journal.c.memo,
            t.journal.c.idempotency_key,
            t.posting.c.ledger_account,
            t.posting.c.amount_fen,
        )
        .join(t.posting, t.posting.c.journal_id == t.journal.c.id)
        .where(t.posting.c.ledger_account.in_(codes))
        .order_by(t.journal.c.id.desc())
        .limit(limit)
    ).all()
    return [
        {
            "journal": r.id,
            "kind": r.kind,
            "at": r.created_at,
            "wallet": r.ledger_account.rsplit(":", 1)[1],
            "amount_fen": -r.amount_fen,
            "key": r.idempotency_key,
            "memo": r.memo,
        }
        for r in rows
    ]


def usage_fen_since(
    conn: Connection, account_ids: Sequence[str], since: datetime
) -> dict[str, int]:
    """Usage deducted from each account's energy wallet since `since` (fen, by account):
    today's cost in the room view and on OPC UA. Accounts without usage are left out."""
    if not account_ids:
        return {}
    rows = conn.execute(
        sa.select(t.journal.c.account_id, sa.func.sum(t.posting.c.amount_fen))
        .join(t.posting, t.posting.c.journal_id == t.journal.c.id)
        .where(
            t.journal.c.kind == JournalKind.USAGE.value,
            t.journal.c.created_at >= since,
            among(conn, t.journal.c.account_id, account_ids),
            t.posting.c.ledger_account.like("liab:wallet:%"),
        )
        .group_by(t.journal.c.account_id)
    ).all()
    return {r[0]: int(r[1]) for r in rows}
