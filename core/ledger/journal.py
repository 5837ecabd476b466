"""The one writer: every journal and its postings go through `write_journal`.

Also the idempotency side of it: loading a journal by key and telling a replay (same key,
same request) from a conflict (same key, different request).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..db import FastStatement, db_time
from ..db import schema as t
from ..events import utcnow
from ..money import CAPACITY_FEN, format_fen
from ..text import first_control
from .codes import CODE_PATTERN, code_type
from .errors import IdempotencyConflict, RequestError
from .position import require_account
from .values import Journal, JournalKind, Posted, Posting

_KEY_MAX = 200


_IGNORING: dict[tuple[str, str], Any] = {}


def insert_ignore(conn: Connection, table: sa.Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING for the connection's dialect (built once)."""
    key = (conn.dialect.name, table.name)
    stmt = _IGNORING.get(key)
    if stmt is None:
        dialect = postgresql if key[0] == "postgresql" else sqlite
        stmt = dialect.insert(table).on_conflict_do_nothing()
        if table is t.journal:
            stmt = stmt.returning(t.journal.c.id)
        _IGNORING[key] = stmt
    return stmt


def _check_postings(postings: Sequence[Posting]) -> None:
    if len(postings) < 2:
        raise RequestError("postings", f"a journal needs at least 2 postings, got {len(postings)}")
    total = 0
    for i, p in enumerate(postings):
        where = f"postings[{i}]"
        if not isinstance(p.ledger_account, str) or not CODE_PATTERN.match(p.ledger_account):
            raise RequestError(
                f"{where}.ledger_account",
                f"expected asset:..., liab:..., equity:..., rev:... or exp:...; "
                f"got {p.ledger_account!r}",
            )
        if len(p.ledger_account) > 160:
            raise RequestError(f"{where}.ledger_account", "at most 160 characters")
        if isinstance(p.amount_fen, bool) or not isinstance(p.amount_fen, int):
            raise RequestError(f"{where}.amount_fen", f"expected integer fen, got {p.amount_fen!r}")
        if p.amount_fen == 0:
            raise RequestError(f"{where}.amount_fen", "a posting must not be 0")
        if abs(p.amount_fen) > 10 * CAPACITY_FEN * 1000:
            raise RequestError(f"{where}.amount_fen", f"absurd amount {p.amount_fen}")
        total += p.amount_fen
    if total != 0:
        raise RequestError("postings", f"postings must sum to 0 fen, they sum to {total}")


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise RequestError("idempotency_key", "required (a payment id, refund id, period...)")
    if len(key) > _KEY_MAX:
        raise RequestError("idempotency_key", f"at most {_KEY_MAX} characters, got {len(key)}")
    return key


def check_reference(reference: str) -> str:
    if not isinstance(reference, str) or not reference.strip():
        raise RequestError("reference", "required (the payment id, receipt or refund number)")
    if (
        len(reference) > 160
        or any(c.isspace() for c in reference)
        or first_control(reference) is not None
    ):
        raise RequestError(
            "reference",
            f"at most 160 characters without spaces or control characters, got {reference!r}",
        )
    return reference


_journal_by_key = sa.select(t.journal).where(t.journal.c.idempotency_key == sa.bindparam("key"))
_postings_of = (
    sa.select(t.posting.c.ledger_account, t.posting.c.amount_fen)
    .where(t.posting.c.journal_id == sa.bindparam("id"))
    .order_by(t.posting.c.id)
)


def load_journal(conn: Connection, key: str) -> Journal | None:
    row = conn.execute(_journal_by_key, {"key": key}).first()
    if row is None:
        return None
    postings = conn.execute(_postings_of, {"id": row.id}).all()
    return Journal(
        row.id,
        row.kind,
        row.idempotency_key,
        row.account_id,
        row.meter_id,
        row.reverses_id,
        row.request,
        row.memo,
        row.requested_by,
        row.created_at,
        tuple(Posting(p.ledger_account, p.amount_fen) for p in postings),
    )


def get_journal(conn: Connection, journal_id: int) -> Journal:
    key = conn.execute(
        sa.select(t.journal.c.idempotency_key).where(t.journal.c.id == journal_id)
    ).scalar()
    if key is None:
        raise RequestError("journal", f"unknown journal {journal_id}")
    journal = load_journal(conn, key)
    assert journal is not None
    return journal


def same_request(
    journal: Journal,
    request: Mapping[str, Any],
    what: str,
    identity: Sequence[str] | None = None,
) -> None:
    """Refuse a request that reuses `journal`'s key for something else. `identity` names the
    fields that make two requests the same one (None: all of them); the others (the channel
    a payment came through, the meter it is delivered to) are details of how it arrived,
    so a cashier who retries on another screen replays the payment instead of being told to
    enter it again."""
    recorded = dict(journal.request)
    asked = dict(request)
    if identity is not None:
        recorded = {k: recorded.get(k) for k in identity}
        asked = {k: asked.get(k) for k in identity}
    if recorded != asked:
        raise reused_key(
            journal.idempotency_key,
            what,
            f"{describe_request(journal.request)} (journal {journal.id})",
            describe_request(request),
        )


def reused_key(key: str, what: str, recorded: str, requested: str) -> IdempotencyConflict:
    """The one answer to a key reused for a different request. Never "use a new reference":
    a cashier who takes that advice for a payment that did go through credits it twice."""
    return IdempotencyConflict(
        "reference",
        f"{key!r} is already recorded as a {what} of {recorded}; this request is {requested}. "
        f"Do not enter it again under a new reference: check the {what} first. The same "
        f"{what} is already recorded; a different one has a reference of its own",
    )


def describe_request(request: Mapping[str, Any]) -> str:
    """`12.50 to A-101` for money requests; the fields as they are for the others."""
    if "amount_fen" in request and "account" in request:
        return f"{format_fen(int(request['amount_fen']))} for account {request['account']}"
    return ", ".join(f"{k} {v}" for k, v in request.items())


def find_replay(
    conn: Connection,
    key: str,
    request: Mapping[str, Any],
    what: str,
    identity: Sequence[str] | None = None,
) -> Journal | None:
    """The journal already posted under `key` (None while the key is free), checked to be
    the same `request` (compared on the `identity` fields): a replay returns it, a different
    request is an `IdempotencyConflict`.
    """
    journal = load_journal(conn, key)
    if journal is not None:
        same_request(journal, request, what, identity)
    return journal


_JOURNAL_COLUMNS = (
    "kind",
    "idempotency_key",
    "account_id",
    "meter_id",
    "reverses_id",
    "request",
    "memo",
    "requested_by",
    "created_at",
)
_fast_journal = FastStatement(lambda conn: insert_ignore(conn, t.journal), _JOURNAL_COLUMNS)
_fast_account = FastStatement(
    lambda conn: insert_ignore(conn, t.ledger_account), ("code", "type", "created_at")
)
_fast_posting = FastStatement(t.posting.insert(), ("journal_id", "ledger_account", "amount_fen"))
_fast_wallet_move = FastStatement(
    t.wallet.update()
    .where(t.wallet.c.ledger_account == sa.bindparam("code"))
    .values(
        balance_fen=t.wallet.c.balance_fen + sa.bindparam("delta", type_=sa.BigInteger()),
        version=t.wallet.c.version + 1,
    )
)


def write_journal(
    conn: Connection,
    kind: str,
    key: str,
    postings: Sequence[Posting],
    *,
    request: Mapping[str, Any],
    account_id: str | None = None,
    meter_id: str | None = None,
    reverses_id: int | None = None,
    memo: str = "",
    requested_by: str = "",
    now: datetime,
    known_wallets: Iterable[str] = (),
    known_accounts: Iterable[str] = (),
) -> int | None:
    """Insert one journal and its postings and move the cached wallet balances.

    Every money write goes through here. Returns the new journal id, or None when the
    key already exists (a concurrent replay won): the caller then loads and returns the
    original. Checks that can fail run before anything is written.
    """
    wallets = sorted(
        {p.ledger_account for p in postings if p.ledger_account.startswith("liab:wallet:")}
    )
    _check_wallets_exist(conn, [w for w in wallets if w not in known_wallets])
    at = db_time(conn, now)
    cursor = _fast_journal.execute(
        conn,
        {
            "kind": str(kind),
            "idempotency_key": key,
            "account_id": account_id,
            "meter_id": meter_id,
            "reverses_id": reverses_id,
            "request": json.dumps(dict(request)),
            "memo": memo[:500],
            "requested_by": requested_by[:100],
            "created_at": at,
        },
    )
    row = cursor.fetchone()
    cursor.close()
    if row is None:
        return None
    journal_id = int(row[0])
    _insert_postings(conn, journal_id, postings, known_accounts, at)
    _move_wallets(conn, wallets, postings)
    return journal_id


def _check_wallets_exist(conn: Connection, unknown: Sequence[str]) -> None:
    """Refuse postings to wallets that do not exist (wallets belong to an account)."""
    if not unknown:
        return
    found = set(
        conn.execute(
            sa.select(t.wallet.c.ledger_account).where(t.wallet.c.ledger_account.in_(unknown))
        ).scalars()
    )
    missing = [w for w in unknown if w not in found]
    if missing:
        raise RequestError(
            "postings", f"unknown wallet {missing[0]!r} (wallets belong to an account)"
        )


def _insert_postings(
    conn: Connection,
    journal_id: int,
    postings: Sequence[Posting],
    known_accounts: Iterable[str],
    at: Any,
) -> None:
    """The journal's postings, creating the ledger accounts (other than wallets) they name
    on first use."""
    others = sorted(
        {
            p.ledger_account
            for p in postings
            if not p.ledger_account.startswith("liab:wallet:")
            and p.ledger_account not in known_accounts
        }
    )
    if others:
        _fast_account.executemany(
            conn, [{"code": c, "type": code_type(c), "created_at": at} for c in others]
        )
    _fast_posting.executemany(
        conn,
        [
            {
                "journal_id": journal_id,
                "ledger_account": p.ledger_account,
                "amount_fen": p.amount_fen,
            }
            for p in postings
        ],
    )


def _move_wallets(conn: Connection, wallets: Sequence[str], postings: Sequence[Posting]) -> None:
    """Move the cached balances of the journal's wallets (sorted by code)."""
    # Wallets are credit-normal: a credit (negative posting) raises the balance. Updated in
    # code order so that concurrent multi-wallet journals lock rows in the same order.
    for code in wallets:
        delta = -sum(p.amount_fen for p in postings if p.ledger_account == code)
        if delta:
            _fast_wallet_move.execute(conn, {"code": code, "delta": delta}).close()


def post_journal(
    conn: Connection,
    kind: JournalKind | str,
    postings: Sequence[Posting],
    *,
    idempotency_key: str,
    account_id: str | None = None,
    meter_id: str | None = None,
    memo: str = "",
    requested_by: str = "",
    request: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Posted:
    """Post a balanced journal: the generic entry point for billing operations.

    `postings` must be at least two, non-zero, integer fen, summing to zero; wallet
    postings must name existing wallets; other ledger accounts are created on first use.
    A replay of `idempotency_key` returns the original journal unchanged (`replayed=True`).
    Typical keys: `<pool>:<period>` for a common-area allocation, `property:<account>:
    <month>` for a property fee.
    """
    key = check_key(idempotency_key)
    kind = str(kind)
    if not re.match(r"^[a-z_]{1,32}$", kind):
        raise RequestError("kind", f"expected a lower-case word such as charge, got {kind!r}")
    postings = [Posting(p.ledger_account, p.amount_fen) for p in postings]
    _check_postings(postings)
    if request is None:
        request = {
            "kind": kind,
            "postings": [[p.ledger_account, p.amount_fen] for p in postings],
        }
    existing = find_replay(conn, key, request, kind)
    if existing is not None:
        return Posted(existing, True)
    if account_id is not None:
        require_account(conn, account_id)
    now = now or utcnow()
    journal_id = write_journal(
        conn,
        kind,
        key,
        postings,
        request=request,
        account_id=account_id,
        meter_id=meter_id,
        memo=memo,
        requested_by=requested_by,
        now=now,
    )
    journal = load_journal(conn, key)
    assert journal is not None
    if journal_id is None:
        same_request(journal, request, kind)
    return Posted(journal, journal_id is None)
