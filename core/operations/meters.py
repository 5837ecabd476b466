"""Meters through the door: purchase-count alignment, replacement and parameter commands
(prices, alarm thresholds written to the device)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config.site import ControlMode
from ..db import schema as t
from ..ledger import RequestError
from ..prepay import accounts as acc
from ..prepay import commands as cmds
from ..prepay.effects import Effects
from ..prepay.purchase_count import request_alignment
from ..prepay.replacement import ReplacementRecord, check_serial, parse_reading
from ..prepay.replacement import record as record_replacement
from ..rating.engine import RatingError, RegisterLayout
from .door import Door, check_reason


class MeterDoor(Door):
    def align_meter(self, meter_id: str, reason: str, *, actor: str) -> None:
        """Have the running service read the meter's own purchase count and align the
        platform with it before the next RECHARGE or REFUND (audited when done)."""

        def work(conn: Connection, effects: Effects, now: datetime) -> None:
            check_reason(reason)
            model = self._model_of(meter_id)
            if "buy_count" not in {p.name for p in model.points}:
                raise RequestError(
                    "meter", f"meter {meter_id!r} ({model.name}) reports no purchase count"
                )
            if not request_alignment(conn, meter_id, now=now):
                raise RequestError(
                    "meter", f"meter {meter_id!r} is not registered (attach it to an account)"
                )

        return self._call(
            "align",
            meter_id,
            actor,
            work,
            lambda _: f"purchase count to be read from the meter and aligned: {reason}",
        )

    def replace_meter(
        self,
        meter_id: str,
        *,
        final_reading: str | Mapping[str, object],
        new_serial: str,
        initial_reading: str | Mapping[str, object],
        reason: str,
        actor: str,
    ) -> ReplacementRecord:
        """Record that the device behind `meter_id` was swapped (core/prepay/replacement.py):
        metering bills the old device up to `final_reading` and the new one from
        `initial_reading`; a LOCAL meter's new purchase count is read and aligned with.
        Refused while a delivery with a fixed purchase count is on its way to the old one."""

        def work(conn: Connection, effects: Effects, now: datetime) -> ReplacementRecord:
            check_reason(reason)
            model = self._model_of(meter_id)
            try:
                layout = RegisterLayout.from_model(model)
            except RatingError as exc:
                raise RequestError("meter", f"meter {meter_id!r} is not billed: {exc}") from None
            final = parse_reading(layout, final_reading, "final_reading")
            initial = parse_reading(layout, initial_reading, "initial_reading")
            serial = check_serial(new_serial)
            busy = conn.execute(
                sa.select(t.meter_command.c.id).where(
                    t.meter_command.c.meter_id == meter_id,
                    t.meter_command.c.kind.in_(
                        [cmds.CommandKind.RECHARGE.value, cmds.CommandKind.REFUND.value]
                    ),
                    t.meter_command.c.state.in_([x.value for x in cmds.UNFINISHED]),
                    t.meter_command.c.sent_at.is_not(None),
                )
            ).first()
            if busy is not None:
                raise RequestError(
                    "meter",
                    f"command {busy.id} is delivering money to the old device: wait until it "
                    "is finished (or fails) before recording the swap",
                )
            account_id = acc.account_for_meter(conn, meter_id)
            done = record_replacement(
                conn,
                meter_id,
                model.kind.value,
                final_reading=final,
                initial_reading=initial,
                new_serial=serial,
                account_id=account_id,
                reason=reason.strip(),
                recorded_by=actor,
                now=now,
            )
            mode = conn.execute(
                sa.select(t.account_meter.c.control_mode).where(
                    t.account_meter.c.meter_id == meter_id,
                    t.account_meter.c.detached_at.is_(None),
                )
            ).scalar()
            if mode == ControlMode.LOCAL.value:
                request_alignment(conn, meter_id, now=now)
            if account_id:
                effects.accounts.add(account_id)
            return done

        return self._call("replace", meter_id, actor, work, lambda r: f"{r.describe()}; {reason}")

    def check_set_params(self, meter_id: str, command: str, values: Mapping[str, object]) -> None:
        """Refuse what `set_params` would refuse (unknown meter, no values, a command the
        model lacks) with its `RequestError`; `set_params` runs it first."""
        model = self._model_of(meter_id)
        if not isinstance(values, Mapping) or not values:
            raise RequestError("values", "give the command's parameters (NAME=VALUE)")
        try:
            model.command(command)
        except KeyError as exc:
            raise RequestError("command", str(exc.args[0])) from None

    def set_params(
        self,
        meter_id: str,
        command: str,
        values: Mapping[str, object],
        reason: str,
        *,
        actor: str,
        idempotency_key: str,
    ) -> cmds.MeterCommand:
        """Queue the model's `command` (e.g. SET_PRICES, SET_ALARMS) with `values` as a
        durable SET_PARAMS command for `meter_id`. `idempotency_key` makes it idempotent:
        the same key again returns the first command."""

        def work(conn: Connection, effects: Effects, now: datetime) -> cmds.MeterCommand:
            self.check_set_params(meter_id, command, values)
            queued = cmds.enqueue(
                conn,
                meter_id,
                cmds.CommandKind.SET_PARAMS,
                params={"command": command, **dict(values)},
                reason=reason,
                requested_by=actor,
                idempotency_key=idempotency_key,
                now=now,
            )
            effects.commands.append(queued)
            return queued

        return self._call(
            "set_params", meter_id, actor, work, lambda c: f"{command} #{c.id}: {reason}"
        )
