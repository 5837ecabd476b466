"""Usage: rated consumption deducted from the energy wallet, with the drift-free accrual."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t
from ..db.dialect_insert import dialect_insert
from ..events import utcnow
from ..money import CAPACITY_FEN, format_fen
from .codes import revenue_code
from .errors import RequestError
from .journal import check_key, find_replay, write_journal
from .position import energy_balance, lock_wallet, require_account
from .values import JournalKind, Posting, UsageResult, WalletKind


def post_usage(
    conn: Connection,
    account_id: str,
    meter_id: str,
    amount_fen: int,
    period_key: str,
    idempotency_key: str | None = None,
    *,
    revenue: str | None = None,
    accrual: Mapping[str, Any] | None = None,
    cycle: str | None = None,
    memo: str = "",
    requested_by: str = "metering",
    now: datetime | None = None,
) -> UsageResult:
    """Deduct rated usage from the energy wallet: Dr wallet / Cr rev:{electricity|water}.

    Called by the metering engine with the fen the rating engine computed for one
    interval of one meter (`period_key`, e.g. the reading's timestamp or sequence). The
    default idempotency key is `usage:<meter>:<period_key>`; a replay changes nothing.
    The wallet may go negative (the energy was consumed); fee control reads the balance
    returned. `amount_fen == 0` posts nothing. The revenue stream follows the meter's kind
    unless `revenue` names one.

    `accrual` (with `cycle`) is the meter's drift-free deduction state after this period
    (`core.rating.rounding.Accrual.to_record()`); it is saved in the same transaction, even when
    the period posts 0 fen, together with `period_key`. Load it back with `load_accrual`.
    A period equal to the last one saved for the meter and cycle is a replay.
    """
    _check_usage_request(amount_fen, period_key, accrual, cycle)
    key = check_key(idempotency_key or f"usage:{meter_id}:{period_key}")
    request = {
        "account": account_id,
        "meter": meter_id,
        "amount_fen": amount_fen,
        "period": period_key,
    }
    replay = _replayed(conn, key, request, account_id, meter_id, amount_fen, accrual, cycle)
    if replay is not None:
        return replay
    require_account(conn, account_id, open_only=True)
    kind = _attached_meter_kind(conn, account_id, meter_id)
    wallet, balance = lock_wallet(conn, account_id, WalletKind.ENERGY)
    now = now or utcnow()
    if amount_fen == 0:
        if accrual is not None:
            _save_accrual(conn, account_id, meter_id, cycle or "", accrual, period_key, None, now)
        return UsageResult(None, account_id, meter_id, 0, balance, False)
    stream = revenue or ("water" if kind == "water" else "electricity")
    journal_id = write_journal(
        conn,
        JournalKind.USAGE,
        key,
        [Posting(wallet, amount_fen), Posting(revenue_code(stream), -amount_fen)],
        request=request,
        account_id=account_id,
        meter_id=meter_id,
        memo=memo or f"usage {period_key}",
        requested_by=requested_by,
        now=now,
        known_wallets=(wallet,),
    )
    if journal_id is None:  # a concurrent twin posted this period
        journal = find_replay(conn, key, request, "usage")
        assert journal is not None
        return UsageResult(
            journal.id, account_id, meter_id, amount_fen, energy_balance(conn, account_id), True
        )
    if accrual is not None:
        _save_accrual(conn, account_id, meter_id, cycle or "", accrual, period_key, journal_id, now)
    return UsageResult(journal_id, account_id, meter_id, amount_fen, balance - amount_fen, False)


def _check_usage_request(
    amount_fen: int, period_key: str, accrual: Mapping[str, Any] | None, cycle: str | None
) -> None:
    """Refuse a bad request before anything is read or written."""
    if accrual is not None and not cycle:
        raise RequestError("cycle", "required with an accrual (the billing cycle it belongs to)")
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen < 0:
        raise RequestError("amount", f"expected integer fen >= 0, got {amount_fen!r}")
    if amount_fen > CAPACITY_FEN:
        raise RequestError("amount", f"absurd usage {format_fen(amount_fen)}")
    if not isinstance(period_key, str) or not period_key:
        raise RequestError("period_key", "required")


def _replayed(
    conn: Connection,
    key: str,
    request: Mapping[str, Any],
    account_id: str,
    meter_id: str,
    amount_fen: int,
    accrual: Mapping[str, Any] | None,
    cycle: str | None,
) -> UsageResult | None:
    """The result of the period already applied — its journal, or for a 0-fen period the
    accrual saved with its `period_key` — or None for a new period."""
    existing = find_replay(conn, key, request, "usage") if amount_fen else None
    if existing is not None:
        return UsageResult(
            existing.id, account_id, meter_id, amount_fen, energy_balance(conn, account_id), True
        )
    if accrual is not None and amount_fen == 0:
        saved = load_accrual(conn, meter_id, cycle or "")
        if saved is not None and saved["period_key"] == request["period"]:
            balance = energy_balance(conn, account_id)
            return UsageResult(None, account_id, meter_id, 0, balance, True)
    return None


def _attached_meter_kind(conn: Connection, account_id: str, meter_id: str) -> str:
    """The kind of the meter (electric or water), which must be attached to the account."""
    kind = conn.execute(
        sa.select(t.account_meter.c.kind).where(
            t.account_meter.c.account_id == account_id,
            t.account_meter.c.meter_id == meter_id,
            t.account_meter.c.detached_at.is_(None),
        )
    ).scalar()
    if kind is None:
        raise RequestError("meter", f"meter {meter_id!r} is not attached to account {account_id!r}")
    return str(kind)


def load_accrual(conn: Connection, meter_id: str, cycle: str) -> dict[str, Any] | None:
    """The meter's saved accrual for `cycle` (`Accrual.from_record` takes it), with the last
    `period_key` applied; None before the first usage of the cycle."""
    row = conn.execute(
        sa.select(t.usage_accrual).where(
            t.usage_accrual.c.meter_id == meter_id, t.usage_accrual.c.cycle == cycle
        )
    ).first()
    if row is None:
        return None
    return {
        "cum_exact_fen": row.cum_exact_fen,
        "posted_fen": int(row.posted_fen),
        "rounding": row.rounding,
        "period_key": row.period_key,
        "journal_id": row.journal_id,
    }


def _save_accrual(
    conn: Connection,
    account_id: str,
    meter_id: str,
    cycle: str,
    accrual: Mapping[str, Any],
    period_key: str,
    journal_id: int | None,
    now: datetime,
) -> None:
    try:
        values = {
            "account_id": account_id,
            "cum_exact_fen": str(accrual["cum_exact_fen"]),
            "posted_fen": int(accrual["posted_fen"]),
            "rounding": str(accrual.get("rounding", "half_up")),
            "period_key": period_key,
            "updated_at": now,
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise RequestError("accrual", f"expected Accrual.to_record(), got {accrual!r}") from exc
    if journal_id is not None:
        values["journal_id"] = journal_id
    stmt = dialect_insert(conn, t.usage_accrual).values(meter_id=meter_id, cycle=cycle, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["meter_id", "cycle"], set_=values))
