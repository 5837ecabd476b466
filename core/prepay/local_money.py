"""The device half of money for LOCAL meters: RECHARGE after a top-up, REFUND before a
refund (domain.md §1.5). The ledger calls this inside its transaction
(`core.ledger.local.LocalMeterCommands`), so the money and the command commit together."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t
from ..ledger import format_fen
from . import commands as cmds
from .purchase_count import allocate_buy_count


class LocalMoney:
    def recharge(
        self,
        conn: Connection,
        meter_id: str,
        *,
        account_id: str,
        amount_fen: int,
        journal_id: int,
        reason: str,
        requested_by: str,
        now: datetime,
    ) -> tuple[int, int]:
        buy_count = allocate_buy_count(conn, meter_id, now=now)
        command = cmds.enqueue(
            conn,
            meter_id,
            cmds.CommandKind.RECHARGE,
            params={
                "buy_count": buy_count,
                "amount_fen": amount_fen,
                "amount": format_fen(amount_fen),
            },
            reason=reason,
            requested_by=requested_by,
            journal_id=journal_id,
            account_id=account_id,
            now=now,
        )
        return buy_count, command.id

    def refund(
        self,
        conn: Connection,
        meter_id: str,
        *,
        account_id: str,
        amount_fen: int,
        reference: str,
        reason: str,
        requested_by: str,
        now: datetime,
    ) -> int:
        # The meter refunds at its current purchase count: the count does not advance.
        count = conn.execute(
            sa.select(t.meter.c.buy_count).where(t.meter.c.id == meter_id)
        ).scalar()
        command = cmds.enqueue(
            conn,
            meter_id,
            cmds.CommandKind.REFUND,
            params={
                "buy_count": int(count or 0),
                "amount_fen": amount_fen,
                "amount": format_fen(amount_fen),
                "refund": reference,
            },
            reason=reason,
            requested_by=requested_by,
            account_id=account_id,
            now=now,
        )
        return command.id


LOCAL_MONEY = LocalMoney()
