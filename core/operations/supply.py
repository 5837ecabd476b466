"""Supply through the door: an operator's disconnect and reconnect (see the package
docstring for how the policy gate applies).

`check_disconnect` / `check_reconnect` are the read-only halves: what the real call would
do or the refusal it would raise. The real calls act on what they return, so a dry run
(a batch job's plan) and the real run cannot disagree."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.engine import Connection

from ..model import SupplyControl
from ..prepay import commands as cmds
from ..prepay.control import CutPlan
from ..prepay.effects import Effects
from .door import Door, check_reason, describe_command


class SupplyDoor(Door):
    def check_disconnect(
        self,
        conn: Connection,
        meter_or_account_id: str,
        reason: str,
        *,
        actor: str,
        override: bool = True,
        now: datetime,
        also_queued: Sequence[datetime] = (),
    ) -> CutPlan:
        """The cut `disconnect` would queue — each meter with the policy gate's decision
        (ALLOW, or DEFER to an instant) — or the `RequestError` it would refuse with.
        Reads only. `also_queued`: cuts a dry run counted already (the rate limit)."""
        check_reason(reason)
        return self.control.plan_cut(
            conn,
            meter_or_account_id,
            reason.strip(),
            actor=actor,
            override=override,
            now=now,
            also_queued=also_queued,
        )

    def disconnect(
        self, meter_or_account_id: str, reason: str, *, actor: str, override: bool = True
    ) -> list[cmds.MeterCommand]:
        """Cut supply of a meter, or of every meter of an account (see the module
        docstring for how the policy gate applies). Returns the queued commands."""

        def work(conn: Connection, effects: Effects, now: datetime) -> list[cmds.MeterCommand]:
            plan = self.check_disconnect(
                conn, meter_or_account_id, reason, actor=actor, override=override, now=now
            )
            return self.control.manual_cut(
                conn,
                meter_or_account_id,
                reason.strip(),
                actor=actor,
                override=override,
                effects=effects,
                now=now,
                plan=plan,
            )

        return self._call(
            "disconnect",
            meter_or_account_id,
            actor,
            work,
            lambda cs: f"{reason}: " + ", ".join(describe_command(c) for c in cs),
        )

    def check_reconnect(
        self, conn: Connection, meter_or_account_id: str, reason: str
    ) -> list[tuple[str, SupplyControl]]:
        """The meters `reconnect` would restore (each with its supply mapping), or the
        `RequestError` it would refuse with. Reads only."""
        check_reason(reason)
        return self.control.resolve_targets(conn, meter_or_account_id)[1]

    def reconnect(
        self, meter_or_account_id: str, reason: str, *, actor: str
    ) -> list[cmds.MeterCommand]:
        """Restore supply of a meter or of every meter of an account."""

        def work(conn: Connection, effects: Effects, now: datetime) -> list[cmds.MeterCommand]:
            self.check_reconnect(conn, meter_or_account_id, reason)
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
