"""FAILED commands and what an operator does with them: send again (`retry_failed`) or
record how it was dealt with otherwise (`resolve`). FAILED money commands nobody resolved
are open alarms (`open_failures`)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy.engine import Connection

from ..db import schema as t
from ..db.among import among
from ..events import utcnow
from ..ledger import RequestError
from .commands import (
    COUNTED_KINDS,
    SELECT_COMMANDS,
    SUPPLY_KINDS,
    CommandKind,
    CommandState,
    MeterCommand,
    command_from_row,
    enqueue,
    get_command,
)

#: FAILED commands an operator may send again (money out of the meter never is: a FAILED
#: REFUND already ended its refund FAILED).
RETRYABLE = frozenset({CommandKind.RECHARGE, CommandKind.SET_PARAMS} | SUPPLY_KINDS)


def retry_failed(
    conn: Connection,
    command_id: int,
    reason: str,
    *,
    requested_by: str,
    now: datetime | None = None,
) -> tuple[MeterCommand, MeterCommand]:
    """Queue a FAILED command again with the same parameters — a RECHARGE keeps its
    purchase count, so a delivery whose reply was lost is confirmed, never applied twice —
    and record on the failed one that it was retried. Returns (failed, new)."""
    if not reason or not reason.strip():
        raise RequestError("reason", "required: say why the command is retried (audit)")
    now = now or utcnow()
    failed = _failed_for_resolution(conn, command_id)
    if CommandKind(failed.kind) not in RETRYABLE:
        raise RequestError(
            "command", f"command {command_id} is a {failed.kind}: it cannot be sent again"
        )
    new = enqueue(
        conn,
        failed.meter_id,
        failed.kind,
        reason=f"retry of #{failed.id}: {reason.strip()} (was: {failed.reason})",
        requested_by=failed.requested_by if failed.kind in SUPPLY_KINDS else requested_by,
        params=failed.params,
        journal_id=failed.journal_id,
        account_id=failed.account_id,
        now=now,
    )
    conn.execute(
        t.meter_command.update().where(t.meter_command.c.id == new.id).values(retry_of=failed.id)
    )
    if failed.kind == CommandKind.RECHARGE:
        conn.execute(
            t.topup.update().where(t.topup.c.command_id == failed.id).values(command_id=new.id)
        )
    resolve(conn, failed.id, f"retried as #{new.id}", requested_by=requested_by, now=now)
    return get_command(conn, failed.id), get_command(conn, new.id)


def resolve(
    conn: Connection,
    command_id: int,
    resolution: str,
    *,
    requested_by: str,
    now: datetime | None = None,
) -> MeterCommand:
    """Record how an operator dealt with a FAILED command (closes its alarm)."""
    _failed_for_resolution(conn, command_id)
    conn.execute(
        t.meter_command.update()
        .where(t.meter_command.c.id == command_id)
        .values(
            resolution=resolution[:300],
            resolved_by=requested_by[:100],
            resolved_at=now or utcnow(),
        )
    )
    return get_command(conn, command_id)


def _failed_for_resolution(conn: Connection, command_id: int) -> MeterCommand:
    locked = SELECT_COMMANDS.where(t.meter_command.c.id == command_id).with_for_update()
    row = conn.execute(locked).first()
    if row is None:
        raise RequestError("command", f"unknown command {command_id}")
    command = command_from_row(row)
    if command.state != CommandState.FAILED:
        raise RequestError(
            "command", f"command {command_id} is {command.state}; only a FAILED one can be resolved"
        )
    if command.resolution is not None:
        raise RequestError(
            "command",
            f"command {command_id} was already resolved ({command.resolution}, by "
            f"{command.resolved_by})",
        )
    return command


def open_failures(
    conn: Connection,
    *,
    account_id: str | None = None,
    account_ids: Collection[str] | None = None,
) -> list[MeterCommand]:
    """FAILED money commands no operator resolved yet: open alarms (money not delivered);
    of one account, or of several (`account_ids`), when given."""
    q = SELECT_COMMANDS.where(
        t.meter_command.c.state == CommandState.FAILED.value,
        t.meter_command.c.kind.in_(COUNTED_KINDS),
        t.meter_command.c.resolution.is_(None),
    ).order_by(t.meter_command.c.id)
    if account_id is not None:
        q = q.where(t.meter_command.c.account_id == account_id)
    if account_ids is not None:
        q = q.where(among(conn, t.meter_command.c.account_id, account_ids))
    return [command_from_row(r) for r in conn.execute(q)]
