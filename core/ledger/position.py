"""Accounts as the ledger sees them: state, wallets (locked for a write) and balances."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import FastStatement
from ..db import schema as t
from .codes import emergency_code
from .errors import LedgerIntegrityError, RequestError
from .values import Balances, WalletKind


@dataclass(frozen=True, slots=True)
class _AccountRow:
    id: str
    state: str
    hoard_limit_fen: int


_account_select = sa.select(t.account.c.id, t.account.c.state, t.account.c.hoard_limit_fen).where(
    t.account.c.id == sa.bindparam("id")
)


def require_account(conn: Connection, account_id: str, *, open_only: bool = False) -> _AccountRow:
    if not isinstance(account_id, str) or not account_id:
        raise RequestError("account", "required")
    row = conn.execute(_account_select, {"id": account_id}).first()
    if row is None:
        raise RequestError("account", f"unknown account {account_id!r}")
    if open_only and row.state != "OPEN":
        hint = {
            "CLOSED": "it is closed",
            "PREREGISTERED": "it is pre-registered; open it first (openprepay account open)",
        }.get(row.state, f"its state is {row.state}")
        raise RequestError("account", f"account {account_id!r} cannot take this: {hint}")
    return _AccountRow(row.id, row.state, row.hoard_limit_fen)


def lock_wallet(conn: Connection, account_id: str, kind: WalletKind) -> tuple[str, int]:
    """(ledger account, balance) of a wallet, row-locked until the transaction ends."""
    row = conn.execute(
        sa.select(t.wallet.c.ledger_account, t.wallet.c.balance_fen)
        .where(t.wallet.c.account_id == account_id, t.wallet.c.kind == kind.value)
        .with_for_update(),
    ).first()
    if row is None:
        raise LedgerIntegrityError(f"account {account_id!r} has no {kind} wallet")
    return row.ledger_account, row.balance_fen


@dataclass(frozen=True, slots=True)
class Position:
    """An account's energy position, read with the wallet row locked."""

    state: str
    hoard_limit_fen: int
    wallet: str
    balance_fen: int
    emergency_fen: int
    local_meters: int
    first_local_meter: str | None
    #: Whether the journal key is taken and the counter-account exists (hot-path checks
    #: folded into the same query).
    key_taken: bool
    counter_exists: bool


_am = t.account_meter
_local_filter = sa.and_(
    _am.c.account_id == t.account.c.id,
    _am.c.detached_at.is_(None),
    _am.c.control_mode == "LOCAL",
)
_position_peek = (
    sa.select(
        t.account.c.state,
        t.account.c.hoard_limit_fen,
        t.wallet.c.ledger_account,
        t.wallet.c.balance_fen,
        sa.select(sa.func.coalesce(sa.func.sum(t.posting.c.amount_fen), 0))
        .where(t.posting.c.ledger_account == sa.literal("asset:emergency_credit:") + t.account.c.id)
        .scalar_subquery()
        .label("emergency"),
        sa.select(sa.func.count()).where(_local_filter).scalar_subquery().label("local_meters"),
        sa.select(sa.func.min(_am.c.meter_id))
        .where(_local_filter)
        .scalar_subquery()
        .label("first_local"),
        sa.exists().where(t.journal.c.idempotency_key == sa.bindparam("key")).label("key_taken"),
        sa.exists()
        .where(t.ledger_account.c.code == sa.bindparam("counter"))
        .label("counter_exists"),
    )
    .join(t.wallet, sa.and_(t.wallet.c.account_id == t.account.c.id, t.wallet.c.kind == "energy"))
    .where(t.account.c.id == sa.bindparam("id"))
)
#: The same read, the energy wallet row-locked until the transaction ends.
_position_select = _position_peek.with_for_update(of=t.wallet)
_fast_position = FastStatement(_position_select)
_fast_peek = FastStatement(_position_peek)


def lock_position(
    conn: Connection,
    account_id: str,
    *,
    open_only: bool = True,
    key: str = "",
    counter: str = "",
) -> Position:
    """Check the account exists (and is open) and lock its energy wallet; one query."""
    return _position(conn, _fast_position, account_id, open_only, key, counter)


def peek_position(
    conn: Connection,
    account_id: str,
    *,
    open_only: bool = True,
    key: str = "",
    counter: str = "",
) -> Position:
    """`lock_position` without the lock, for a check that writes nothing (a dry run)."""
    return _position(conn, _fast_peek, account_id, open_only, key, counter)


def _position(
    conn: Connection,
    statement: FastStatement,
    account_id: str,
    open_only: bool,
    key: str,
    counter: str,
) -> Position:
    if not isinstance(account_id, str) or not account_id:
        raise RequestError("account", "required")
    cursor = statement.execute(conn, {"id": account_id, "key": key, "counter": counter})
    row = cursor.fetchone()
    cursor.close()
    if row is None:
        require_account(conn, account_id)  # raises "unknown account"
        raise LedgerIntegrityError(f"account {account_id!r} has no energy wallet")
    state, hoard, wallet, balance, emergency, local_meters, first_local, taken, exists = row
    if open_only and state != "OPEN" and not taken:
        require_account(conn, account_id, open_only=True)  # raises with the reason
    return Position(
        state,
        int(hoard),
        wallet,
        int(balance),
        int(emergency),
        int(local_meters),
        first_local,
        bool(taken),
        bool(exists),
    )


def emergency_outstanding(conn: Connection, account_id: str) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(t.posting.c.amount_fen), 0)).where(
                t.posting.c.ledger_account == emergency_code(account_id)
            )
        ).scalar()
    )


def energy_balance(conn: Connection, account_id: str) -> int:
    return int(
        conn.execute(
            sa.select(t.wallet.c.balance_fen).where(
                t.wallet.c.account_id == account_id, t.wallet.c.kind == "energy"
            )
        ).scalar()
        or 0
    )


def balances(conn: Connection, account_id: str) -> Balances:
    """The account's wallet balances (energy, general) and outstanding emergency credit."""
    require_account(conn, account_id)
    rows = {
        r.kind: r
        for r in conn.execute(
            sa.select(t.wallet.c.kind, t.wallet.c.balance_fen, t.wallet.c.version).where(
                t.wallet.c.account_id == account_id
            )
        )
    }
    energy = rows.get("energy")
    general = rows.get("general")
    return Balances(
        account_id,
        energy.balance_fen if energy else 0,
        general.balance_fen if general else 0,
        emergency_outstanding(conn, account_id),
        energy.version if energy else 0,
    )


def local_meter_for(
    conn: Connection, account_id: str, meter_id: str | None, pos: Position
) -> str | None:
    """The LOCAL meter money of the account goes through (`meter_id`, else the account's
    only LOCAL meter), or None (platform-side wallet). `pos` answers the usual case (no
    meter named, at most one LOCAL meter) without another query."""
    if meter_id is None and pos.local_meters <= 1:
        return pos.first_local_meter
    return _attached_local_meter(conn, account_id, meter_id)


def _attached_local_meter(conn: Connection, account_id: str, meter_id: str | None) -> str | None:
    """`local_meter_for` from the attached meters; refuses a meter that is not attached, or
    no meter named while the account has several LOCAL ones."""
    rows = conn.execute(
        sa.select(t.account_meter.c.meter_id, t.account_meter.c.control_mode).where(
            t.account_meter.c.account_id == account_id, t.account_meter.c.detached_at.is_(None)
        )
    ).all()
    if meter_id is not None:
        for row in rows:
            if row.meter_id == meter_id:
                return meter_id if row.control_mode == "LOCAL" else None
        attached = ", ".join(r.meter_id for r in rows) or "none"
        raise RequestError(
            "meter",
            f"meter {meter_id!r} is not one of account {account_id!r}'s meters ({attached})",
        )
    local = [r.meter_id for r in rows if r.control_mode == "LOCAL"]
    if len(local) > 1:
        raise RequestError(
            "meter",
            f"account {account_id!r} has several LOCAL meters ({', '.join(local)}): "
            "name the one to recharge",
        )
    return local[0] if local else None
