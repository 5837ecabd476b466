"""Usage in bulk: a billing flush's postings in a few statements, each still its own journal.

`post_usage` (usage.py) posts one meter's period: a replay check, the account, the meter's
attachment, the wallet lock, the journal, its two postings, the wallet move and the accrual
— about ten statements, and at site scale 57 % of a billing flush. `post_usages` does the
same for a whole batch of `UsageRequest`s with one statement of each kind:

1. requests are checked as `post_usage` checks them; a bad one is refused alone
   (its result is the `RequestError`), before anything is written;
2. one query loads the journals already posted under the batch's keys: the same request
   is a replay (nothing written), a different one an `IdempotencyConflict`; a 0-fen
   period whose saved accrual has the same `period_key` is a replay too (`load_accruals`);
3. one query checks every account is OPEN and every meter attached to it, and one locks
   the accounts' energy wallets (`FOR UPDATE`: PostgreSQL row locks, in account order);
4. one INSERT ... ON CONFLICT DO NOTHING RETURNING writes the journals — each with its own
   idempotency key `usage:<meter>:<period>`, exactly the key `post_usage` uses, so a
   replayed flush (or one posted one at a time) posts nothing; a key a concurrent twin
   took meanwhile returns no row and that request is a replay;
5. one statement each inserts the postings (Dr wallet / Cr rev:<stream>), moves the
   wallets (one update per wallet, the batch's sum) and upserts the accruals.

Each request's result carries the wallet balance right after its own posting, in request
order, as if they had been posted one at a time — fee control reads it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import FastStatement, db_time
from ..db import schema as t
from ..db.among import among
from ..db.bounded import chunks
from ..db.dialect_insert import dialect_insert
from ..events import utcnow
from .codes import code_type, revenue_code
from .errors import LedgerIntegrityError, RequestError
from .journal import _fast_account, _fast_posting, check_key, reused_key
from .journal import describe_request as _describe
from .usage import _check_usage_request
from .values import JournalKind, UsageResult, WalletKind

#: Rows per INSERT ... RETURNING of journals (9 parameters a row: well inside SQLite's
#: 32,766 and PostgreSQL's 65,535 bound parameters).
_JOURNALS_PER_STATEMENT = 500


#: A wallet moved by several journals at once: its version counts each of them.
_wallet_moves = FastStatement(
    t.wallet.update()
    .where(t.wallet.c.ledger_account == sa.bindparam("code"))
    .values(
        balance_fen=t.wallet.c.balance_fen + sa.bindparam("delta", type_=sa.BigInteger()),
        version=t.wallet.c.version + sa.bindparam("journals", type_=sa.Integer()),
    )
)


@dataclass(frozen=True, slots=True)
class UsageRequest:
    """One meter's usage of one period, as `post_usage` takes it."""

    account_id: str
    meter_id: str
    amount_fen: int
    period_key: str
    accrual: Mapping[str, Any] | None = None
    cycle: str | None = None
    idempotency_key: str | None = None
    revenue: str | None = None
    memo: str = ""

    @property
    def key(self) -> str:
        return self.idempotency_key or f"usage:{self.meter_id}:{self.period_key}"

    def request(self) -> dict[str, Any]:
        """The journal's recorded request (what a replay is compared with)."""
        return {
            "account": self.account_id,
            "meter": self.meter_id,
            "amount_fen": self.amount_fen,
            "period": self.period_key,
        }


Outcome = UsageResult | RequestError


def post_usages(
    conn: Connection,
    requests: Sequence[UsageRequest],
    *,
    requested_by: str = "metering",
    now: datetime | None = None,
) -> list[Outcome]:
    """Post a batch of usage periods (see the module docstring); one outcome per request,
    in order: its `UsageResult`, or the `RequestError` that refused it (nothing of it
    written). A missing energy wallet is an integrity error and raises."""
    now = now or utcnow()
    outcomes: list[Outcome | None] = [None] * len(requests)
    live: list[int] = []
    keys: set[str] = set()
    cycles: set[tuple[str, str]] = set()
    for i, r in enumerate(requests):
        try:
            _check_usage_request(r.amount_fen, r.period_key, r.accrual, r.cycle)
            check_key(r.key)
            if r.accrual is not None:
                _accrual_row(r, None, now)  # a malformed accrual is refused before writing
            cycle = (r.meter_id, r.cycle or "")
            if r.key in keys or (r.accrual is not None and cycle in cycles):
                raise RequestError("period_key", f"{r.key!r} twice in one batch")
        except RequestError as exc:
            outcomes[i] = exc
        else:
            keys.add(r.key)
            if r.accrual is not None:
                cycles.add(cycle)
            live.append(i)
    if not live:
        return [o for o in outcomes if o is not None]
    posted = _posted_journals(conn, [requests[i].key for i in live if requests[i].amount_fen])
    zero_saved = load_accruals(
        conn,
        {
            (requests[i].meter_id, requests[i].cycle or "")
            for i in live
            if requests[i].amount_fen == 0 and requests[i].accrual is not None
        },
    )
    refused = _refusals(conn, [requests[i] for i in live])
    wallets = _lock_wallets(conn, sorted({requests[i].account_id for i in live}))
    balance = {a: w[1] for a, w in wallets.items()}
    new: list[int] = []
    replayed: set[int] = set()
    for i in live:
        r = requests[i]
        journal = posted.get(r.key) if r.amount_fen else None
        if journal is not None:
            if journal[1] != r.request():
                outcomes[i] = reused_key(
                    r.key, "usage", f"{_describe(journal[1])} (journal {journal[0]})",
                    _describe(r.request()),
                )  # fmt: skip
            else:
                replayed.add(i)
            continue
        if r.amount_fen == 0 and r.accrual is not None:
            saved = zero_saved.get((r.meter_id, r.cycle or ""))
            if saved is not None and saved["period_key"] == r.period_key:
                replayed.add(i)
                continue
        problem = refused[(r.account_id, r.meter_id)]
        if isinstance(problem, RequestError):
            outcomes[i] = problem
            continue
        if r.account_id not in wallets:
            raise LedgerIntegrityError(f"account {r.account_id!r} has no energy wallet")
        new.append(i)
    ids = _insert_journals(
        conn, [requests[i] for i in new if requests[i].amount_fen], requested_by, now
    )
    rows_postings: list[dict[str, Any]] = []
    moves: dict[str, list[int]] = {}
    accruals: list[dict[str, Any]] = []
    streams: set[str] = set()
    for i in new:
        r = requests[i]
        wallet, _ = wallets[r.account_id]
        journal_id = ids.get(r.key) if r.amount_fen else None
        if r.amount_fen and journal_id is None:  # a concurrent twin posted this period
            replayed.add(i)
            continue
        if journal_id is not None:
            stream = revenue_code(r.revenue or _stream(refused, r))
            streams.add(stream)
            rows_postings += [
                {"journal_id": journal_id, "ledger_account": wallet, "amount_fen": r.amount_fen},
                {"journal_id": journal_id, "ledger_account": stream, "amount_fen": -r.amount_fen},
            ]
            move = moves.setdefault(wallet, [0, 0])
            move[0] -= r.amount_fen
            move[1] += 1
            balance[r.account_id] -= r.amount_fen
        if r.accrual is not None:
            accruals.append(_accrual_row(r, journal_id, now))
        outcomes[i] = UsageResult(
            journal_id, r.account_id, r.meter_id, r.amount_fen, balance[r.account_id], False
        )
    if streams:
        at = db_time(conn, now)
        _fast_account.executemany(
            conn, [{"code": c, "type": code_type(c), "created_at": at} for c in sorted(streams)]
        )
    if rows_postings:
        _fast_posting.executemany(conn, rows_postings)
    if moves:
        _wallet_moves.executemany(
            conn,
            [{"code": c, "delta": d, "journals": n} for c, (d, n) in sorted(moves.items())],
        )
    _save_accruals(conn, accruals)
    for i in replayed:
        r = requests[i]
        journal = posted.get(r.key)
        outcomes[i] = UsageResult(
            journal[0] if journal is not None else ids.get(r.key),
            r.account_id,
            r.meter_id,
            r.amount_fen,
            balance.get(r.account_id, 0),
            True,
        )
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]


def load_accruals(
    conn: Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The saved accruals of `(meter, cycle)` pairs in one query (the meters bound as one
    parameter, `among`), as `load_accrual` returns each; pairs without one are absent."""
    wanted = set(keys)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    meters = sorted({m for m, _ in wanted})
    a = t.usage_accrual
    for row in conn.execute(sa.select(a).where(among(conn, a.c.meter_id, meters))):
        key = (row.meter_id, row.cycle)
        if key in wanted:
            out[key] = {
                "cum_exact_fen": row.cum_exact_fen,
                "posted_fen": int(row.posted_fen),
                "rounding": row.rounding,
                "period_key": row.period_key,
                "journal_id": row.journal_id,
            }
    return out


# -- the statements ----------------------------------------------------------------------


def _posted_journals(conn: Connection, keys: Sequence[str]) -> dict[str, tuple[int, dict]]:
    j = t.journal
    out: dict[str, tuple[int, dict]] = {}
    q = sa.select(j.c.id, j.c.idempotency_key, j.c.request).where(
        among(conn, j.c.idempotency_key, set(keys))
    )
    for row in conn.execute(q):
        out[row.idempotency_key] = (int(row.id), dict(row.request))
    return out


def _refusals(
    conn: Connection, requests: Sequence[UsageRequest]
) -> dict[tuple[str, str], RequestError | str]:
    """Per (account, meter): the `RequestError` that refuses it, or the meter's kind
    (electric, water) when it may be billed — the checks `post_usage` makes one at a
    time, in two queries."""
    accounts = sorted({r.account_id for r in requests})
    am = t.account_meter
    q = sa.select(t.account.c.id, t.account.c.state).where(among(conn, t.account.c.id, accounts))
    state: dict[str, str] = {row.id: row.state for row in conn.execute(q)}
    q = sa.select(am.c.account_id, am.c.meter_id, am.c.kind).where(
        among(conn, am.c.account_id, accounts), am.c.detached_at.is_(None)
    )
    attached = {(row.account_id, row.meter_id): row.kind for row in conn.execute(q)}
    out: dict[tuple[str, str], RequestError | str] = {}
    for r in requests:
        pair = (r.account_id, r.meter_id)
        st = state.get(r.account_id)
        if not r.account_id:
            out[pair] = RequestError("account", "required")
        elif st is None:
            out[pair] = RequestError("account", f"unknown account {r.account_id!r}")
        elif st != "OPEN":
            hint = {
                "CLOSED": "it is closed",
                "PREREGISTERED": "it is pre-registered; open it first (openprepay account open)",
            }.get(st, f"its state is {st}")
            out[pair] = RequestError(
                "account", f"account {r.account_id!r} cannot take this: {hint}"
            )
        elif pair not in attached:
            out[pair] = RequestError(
                "meter", f"meter {r.meter_id!r} is not attached to account {r.account_id!r}"
            )
        else:
            out[pair] = str(attached[pair])
    return out


def _stream(refused: Mapping[tuple[str, str], RequestError | str], r: UsageRequest) -> str:
    kind = refused[(r.account_id, r.meter_id)]
    return "water" if kind == "water" else "electricity"


def _lock_wallets(conn: Connection, accounts: Sequence[str]) -> dict[str, tuple[str, int]]:
    """account → (energy wallet, balance), row-locked in account order."""
    w = t.wallet
    q = (
        sa.select(w.c.account_id, w.c.ledger_account, w.c.balance_fen)
        .where(among(conn, w.c.account_id, accounts), w.c.kind == WalletKind.ENERGY.value)
        .order_by(w.c.account_id)
        .with_for_update()
    )
    return {row.account_id: (row.ledger_account, int(row.balance_fen)) for row in conn.execute(q)}


_INSERTS: dict[str, Any] = {}


def _journal_insert(conn: Connection) -> Any:
    stmt = _INSERTS.get(conn.dialect.name)
    if stmt is None:
        stmt = (
            dialect_insert(conn, t.journal)
            .on_conflict_do_nothing()
            .returning(t.journal.c.id, t.journal.c.idempotency_key)
        )
        _INSERTS[conn.dialect.name] = stmt
    return stmt


def _insert_journals(
    conn: Connection, requests: Sequence[UsageRequest], requested_by: str, now: datetime
) -> dict[str, int]:
    """key → id of each journal inserted now (a key already taken returns nothing)."""
    out: dict[str, int] = {}
    for part in chunks(requests, _JOURNALS_PER_STATEMENT):
        rows = [
            {
                "kind": str(JournalKind.USAGE),
                "idempotency_key": r.key,
                "account_id": r.account_id,
                "meter_id": r.meter_id,
                "reverses_id": None,
                "request": r.request(),
                "memo": (r.memo or f"usage {r.period_key}")[:500],
                "requested_by": requested_by[:100],
                "created_at": now,
            }
            for r in part
        ]
        # executemany with RETURNING ("insertmanyvalues"): one cached statement, not a
        # multi-VALUES one compiled anew for every flush (a tenth of a flush's CPU).
        result = conn.execute(_journal_insert(conn), rows)
        out.update({row.idempotency_key: int(row.id) for row in result})
    return out


def _accrual_row(r: UsageRequest, journal_id: int | None, now: datetime) -> dict[str, Any]:
    accrual = r.accrual
    assert accrual is not None
    try:
        return {
            "meter_id": r.meter_id,
            "cycle": r.cycle or "",
            "account_id": r.account_id,
            "cum_exact_fen": str(accrual["cum_exact_fen"]),
            "posted_fen": int(accrual["posted_fen"]),
            "rounding": str(accrual.get("rounding", "half_up")),
            "period_key": r.period_key,
            "journal_id": journal_id,
            "updated_at": now,
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise RequestError("accrual", f"expected Accrual.to_record(), got {accrual!r}") from exc


def _save_accruals(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Upsert the accruals; a 0-fen period keeps the journal that last advanced one."""
    if not rows:
        return
    a = t.usage_accrual
    stmt = dialect_insert(conn, a)
    excluded = stmt.excluded
    stmt = stmt.on_conflict_do_update(
        index_elements=["meter_id", "cycle"],
        set_={
            "account_id": excluded.account_id,
            "cum_exact_fen": excluded.cum_exact_fen,
            "posted_fen": excluded.posted_fen,
            "rounding": excluded.rounding,
            "period_key": excluded.period_key,
            "journal_id": sa.func.coalesce(excluded.journal_id, a.c.journal_id),
            "updated_at": excluded.updated_at,
        },
    )
    conn.execute(stmt, list(rows))
