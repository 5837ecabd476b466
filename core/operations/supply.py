"""Supply through the door: an operator's disconnect and reconnect (see the package
docstring for how the policy gate applies)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection

from ..prepay import commands as cmds
from ..prepay.effects import Effects
from .door import Door, check_reason, describe_command


class SupplyDoor(Door):
    def disconnect(
        self, meter_or_account_id: str, reason: str, *, actor: str, override: bool = True
    ) -> list[cmds.MeterCommand]:
        """Cut supply of a meter, or of every meter of an account (see the module
        docstring for how the policy gate applies). Returns the queued commands."""

        def work(conn: Connection, effects: Effects, now: datetime) -> list[cmds.MeterCommand]:
            check_reason(reason)
            return self.control.manual_cut(
                conn,
                meter_or_account_id,
                reason.strip(),
                actor=actor,
                override=override,
                effects=effects,
                now=now,
            )

        return self._call(
            "disconnect",
            meter_or_account_id,
            actor,
            work,
            lambda cs: f"{reason}: " + ", ".join(describe_command(c) for c in cs),
        )

    def reconnect(
        self, meter_or_account_id: str, reason: str, *, actor: str
    ) -> list[cmds.MeterCommand]:
        """Restore supply of a meter or of every meter of an account."""

        def work(conn: Connection, effects: Effects, now: datetime) -> list[cmds.MeterCommand]:
            check_reason(reason)
            return self.control.manual_restore(
                conn, meter_or_account_id, reason.strip(), actor=actor, effects=effects, now=now
            )

        return self._call(
            "reconnect",
            meter_or_account_id,
            actor,
            work,
            lambda cs: f"{reason}: " + ", ".join(describe_command(c) for c in cs),
        )
