"""Device commands that failed, through the door: look, retry, refund."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import ledger
from ..db import schema as t
from ..ledger import RequestError
from ..prepay import commands as cmds
from ..prepay.effects import Effects
from ..prepay.failed_commands import open_failures, resolve, retry_failed
from ..prepay.feecontrol import Cause
from ..prepay.purchase_count import METER_COUNT, request_alignment
from .door import Door, check_reason, command_number


class CommandDoor(Door):
    def command(self, command_id: int) -> cmds.MeterCommand:
        """A queued command as it stands now (state, attempts, last error, read-back)."""
        with self.db.read() as conn:
            return cmds.get_command(conn, command_id)

    def open_failures(self, account_id: str | None = None) -> list[cmds.MeterCommand]:
        """FAILED RECHARGE/REFUND commands nobody retried or refunded yet (alarms)."""
        with self.db.read() as conn:
            return open_failures(conn, account_id=account_id)

    def retry_command(self, command_id: int, reason: str, *, actor: str) -> cmds.MeterCommand:
        """Send a FAILED command again with the same parameters; returns the new command.
        A RECHARGE keeps the purchase count it was sent with: if the meter took it and only
        the reply was lost, the meter shows that count and the retry is confirmed without
        a second credit. Retry several FAILED deliveries of one meter oldest first."""

        def work(conn: Connection, effects: Effects, now: datetime) -> cmds.MeterCommand:
            check_reason(reason)
            failed, new = retry_failed(
                conn, command_number(command_id), reason.strip(), requested_by=actor, now=now
            )
            if failed.kind in {k.value for k in cmds.SUPPLY_KINDS}:
                # The retried decision is the one the supply watch holds the meter to.
                conn.execute(
                    t.prepay_meter.update()
                    .where(
                        t.prepay_meter.c.meter_id == failed.meter_id,
                        t.prepay_meter.c.desired_command_id == failed.id,
                    )
                    .values(desired_command_id=new.id, updated_at=now)
                )
            effects.commands.append(new)
            return new

        return self._call(
            "retry_command",
            str(command_id),
            actor,
            work,
            lambda c: f"{c.kind} #{c.retry_of} for {c.meter_id} sent again as #{c.id}: {reason}",
        )

    def refund_failed_command(self, command_id: int, reason: str, *, actor: str) -> ledger.Posted:
        """Give back the money of a FAILED RECHARGE that never reached the meter — known
        from its purchase count read after the failure (`align_meter`), or a replaced
        device: its top-up is reversed (the payer is refunded through the top-up's
        channel), the command is marked refunded, the meter's count is read and aligned
        again (the count it was given is never delivered) and fee control runs on the
        lower balance. Returns the reversal."""

        def work(conn: Connection, effects: Effects, now: datetime) -> ledger.Posted:
            check_reason(reason)
            failed = cmds.get_command(conn, command_number(command_id))
            if failed.kind != cmds.CommandKind.RECHARGE:
                raise RequestError(
                    "command", f"command {failed.id} is a {failed.kind}, not a RECHARGE"
                )
            order = conn.execute(
                sa.select(t.topup.c.reference, t.topup.c.journal_id, t.topup.c.amount_fen).where(
                    t.topup.c.command_id == failed.id
                )
            ).first()
            if order is None:
                raise RequestError("command", f"RECHARGE #{failed.id} has no top-up to refund")
            self._check_undelivered(conn, failed)
            resolve(
                conn,
                failed.id,
                f"refunded: top-up {order.reference} reversed",
                requested_by=actor,
                now=now,
            )
            posted = ledger.reverse(
                conn,
                order.journal_id,
                reason=f"RECHARGE #{failed.id} FAILED, never delivered: {reason.strip()}",
                requested_by=actor,
                now=now,
            )
            request_alignment(conn, failed.meter_id, now=now)
            if failed.account_id:
                self._fee_control(conn, failed.account_id, Cause.REFUND, actor, effects, now)
            return posted

        return self._call(
            "refund_command",
            str(command_id),
            actor,
            work,
            lambda p: (
                f"RECHARGE #{command_id} refunded: journal {p.journal.reverses_id} reversed by "
                f"{p.journal.id}; {reason}"
            ),
        )

    def _check_undelivered(self, conn: Connection, failed: cmds.MeterCommand) -> None:
        """Refund only what the meter is known not to hold: its purchase count was read
        after the RECHARGE failed and is below the count the RECHARGE carried, or the device
        was replaced since. (A delivery whose reply was lost is in the meter: retry it.)"""
        meter = conn.execute(
            sa.select(
                t.meter.c.aligned_at, t.meter.c.confirmed_buy_count, t.meter.c.count_offset
            ).where(t.meter.c.id == failed.meter_id)
        ).first()
        swapped = conn.execute(
            sa.select(t.meter_replacement.c.id).where(
                t.meter_replacement.c.meter_id == failed.meter_id,
                t.meter_replacement.c.at > failed.finished_at,
            )
        ).first()
        if swapped is not None:
            return
        if meter is None or meter.aligned_at is None or meter.aligned_at <= failed.finished_at:
            raise RequestError(
                "command",
                f"the meter may hold RECHARGE #{failed.id} (its reply may have been lost): read "
                f"it first — `openprepay meter align SITE {failed.meter_id}` — then refund",
            )
        shows = int(meter.confirmed_buy_count) - int(meter.count_offset)
        sent = int(failed.params.get(METER_COUNT, failed.params.get("buy_count", 0)))
        if shows >= sent:
            raise RequestError(
                "command",
                f"meter {failed.meter_id} shows purchase {shows}: it took RECHARGE "
                f"#{failed.id} (purchase {sent}); retry it to confirm, do not refund",
            )
