"""Emergency credit advanced to an account, and balances carried over from a previous system."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t
from ..events import utcnow
from ..money import check_amount, format_fen
from .codes import OPENING_BALANCE, emergency_code, wallet_code
from .errors import RequestError
from .journal import check_key, find_replay, load_journal, post_journal, write_journal
from .position import emergency_outstanding, lock_wallet, require_account
from .values import JournalKind, Posted, Posting, WalletKind


def grant_emergency_credit(
    conn: Connection,
    account_id: str,
    amount_fen: int,
    idempotency_key: str,
    *,
    requested_by: str = "",
    now: datetime | None = None,
) -> Posted:
    """Advance emergency credit: Dr asset:emergency_credit:{account} / Cr energy wallet.

    Repaid automatically from the next top-up. Refused while earlier emergency credit is
    outstanding, and for accounts with LOCAL meters (there the meter grants it).
    """
    check_amount(amount_fen)
    key = check_key(idempotency_key)
    request = {"account": account_id, "amount_fen": amount_fen}
    existing = find_replay(conn, key, request, "emergency credit")
    if existing is not None:
        return Posted(existing, True)
    require_account(conn, account_id, open_only=True)
    wallet, _ = lock_wallet(conn, account_id, WalletKind.ENERGY)
    # The same request may have committed while this one waited for the wallet lock.
    existing = find_replay(conn, key, request, "emergency credit")
    if existing is not None:
        return Posted(existing, True)
    if _local_meters(conn, account_id):
        raise RequestError(
            "account", f"account {account_id!r} has LOCAL meters: emergency credit is the meter's"
        )
    outstanding = emergency_outstanding(conn, account_id)
    if outstanding:
        raise RequestError(
            "amount",
            f"{format_fen(outstanding)} of emergency credit is still outstanding; "
            "it is repaid by the next top-up",
        )
    now = now or utcnow()
    new_id = write_journal(
        conn,
        JournalKind.EMERGENCY_CREDIT,
        key,
        [Posting(emergency_code(account_id), amount_fen), Posting(wallet, -amount_fen)],
        request=request,
        account_id=account_id,
        memo="emergency credit",
        requested_by=requested_by,
        now=now,
        known_wallets=(wallet,),
    )
    if new_id is None:  # an identical key won a race with this request: same request only
        replay = find_replay(conn, key, request, "emergency credit")
        assert replay is not None
        return Posted(replay, True)
    journal = load_journal(conn, key)
    assert journal is not None
    return Posted(journal, False)


def post_opening_balance(
    conn: Connection,
    account_id: str,
    amount_fen: int,
    kind: WalletKind = WalletKind.ENERGY,
    *,
    requested_by: str = "",
    now: datetime | None = None,
) -> Posted:
    """Carry a balance over from a previous system (account import):
    Dr equity:opening_balance / Cr wallet. Once per account and wallet."""
    check_amount(amount_fen, "opening_balance")
    key = f"opening:{account_id}:{WalletKind(kind).value}"
    return post_journal(
        conn,
        JournalKind.OPENING_BALANCE,
        [Posting(OPENING_BALANCE, amount_fen), Posting(wallet_code(account_id, kind), -amount_fen)],
        idempotency_key=key,
        account_id=account_id,
        memo="opening balance",
        requested_by=requested_by,
        request={"account": account_id, "amount_fen": amount_fen, "wallet": str(kind)},
        now=now,
    )


def _local_meters(conn: Connection, account_id: str) -> list[str]:
    return list(
        conn.execute(
            sa.select(t.account_meter.c.meter_id).where(
                t.account_meter.c.account_id == account_id,
                t.account_meter.c.detached_at.is_(None),
                t.account_meter.c.control_mode == "LOCAL",
            )
        ).scalars()
    )
