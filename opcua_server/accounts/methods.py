"""The account and meter methods: their declarations, the callback around each, and the
handlers that call the core.

TopUp, Refund, SetTariff, SetAlarmThresholds, Disconnect, Reconnect, Protect on accounts
and Disconnect, Reconnect, ReplaceMeter, RetryCommand, RefundCommand on meters call the
same `Operations` functions as the CLI (see opcua_server/methods.py for arguments and
status codes). Acknowledge (the standard method, i=9111) on every alarm condition,
LowBalance and CommunicationAlarm alike (opcua_server/events.py): operator or admin. Every
call the core never saw (refused for its arguments or the caller's role) is audited here;
the core audits the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asyncua import ua

from openprepay.core.operations import Operations

from ..access import SessionUser, actor_name, current_user
from ..bindings import Target
from ..events import ACKNOWLEDGE
from ..extension import ExtensionHost
from ..methods import (
    ADMIN,
    CASH,
    CURRENT_CALL,
    SUPPLY,
    Arg,
    Call,
    MethodSpec,
    Refused,
    amount_fen,
    check_inputs,
    check_role,
    in_thread,
    optional_amount_fen,
    refusal_of,
    result_of,
    role_refusal,
)
from .alarms import audit
from .nodes import yuan

V = ua.VariantType
S = ua.StatusCodes

REASON = Arg("Reason", V.String, "Why (recorded with the relay or valve action)", "reason")
COMMAND_ID = Arg("CommandId", V.Int64, "The FAILED command's number", "command")
COMMANDS = Arg("Commands", V.String, "The meter commands queued")
BALANCE = Arg("Balance", V.Double, "Energy wallet balance after the call, CNY")


class AccountMethods:
    """Declares the methods and serves their calls (`ops`: None until the accounts are read,
    and on a site without a database)."""

    def __init__(self) -> None:
        self.host: ExtensionHost | None = None
        self.ops: Operations | None = None
        self._specs: dict[ua.NodeId, MethodSpec] = {}

    def declare(self, host: ExtensionHost) -> None:
        """Every method on its type, with the roles that may call it; Acknowledge too."""
        self.host = host
        space = host.space
        assert space is not None
        for spec in self.method_specs():
            nid = space.declare_method(
                spec.owner,
                spec.name,
                [a.argument() for a in spec.inputs],
                [a.argument() for a in spec.outputs],
                self._callback(spec),
                spec.description,
            )
            host.method_roles[nid] = spec.roles
            self._specs[nid] = spec
        # Alarms (of accounts and meters) are acknowledged by operators.
        host.method_roles[ACKNOWLEDGE] = ACKNOWLEDGE_SPEC.roles
        self._specs[ACKNOWLEDGE] = ACKNOWLEDGE_SPEC
        if host.condition_methods is not None:
            host.condition_methods.condition_methods[ACKNOWLEDGE] = self._acknowledge

    def method_specs(self) -> list[MethodSpec]:
        """Every method, in the order they are declared."""
        return [
            *self._wallet_specs(),
            *self._account_setting_specs(),
            *self._supply_specs(),
            *self._meter_command_specs(),
        ]

    # -- the methods' declarations ------------------------------------------------------------
    def _wallet_specs(self) -> list[MethodSpec]:
        return [
            MethodSpec(
                "AccountType",
                "TopUp",
                (
                    Arg("Amount", V.Double, "Yuan, at most 2 decimals, more than 0", "amount"),
                    Arg(
                        "Reference",
                        V.String,
                        "Payment id or receipt: a repeat with the same reference changes nothing",
                        "reference",
                    ),
                ),
                (
                    BALANCE,
                    Arg(
                        "Replayed",
                        V.Boolean,
                        "True when the reference was already used for this top-up",
                    ),
                ),
                CASH,
                "Credit the energy wallet (cashier, admin)",
                self._topup,
            ),
            MethodSpec(
                "AccountType",
                "Refund",
                (
                    Arg("Amount", V.Double, "Yuan, at most what is refundable", "amount"),
                    Arg("Reference", V.String, "Refund number (idempotent)", "reference"),
                ),
                (
                    BALANCE,
                    Arg("State", V.String, "The refund's state"),
                    Arg("Replayed", V.Boolean, "True when the refund number was used"),
                ),
                CASH,
                "Refund from the energy wallet (cashier, admin)",
                self._refund,
            ),
        ]

    def _account_setting_specs(self) -> list[MethodSpec]:
        return [
            MethodSpec(
                "AccountType",
                "SetTariff",
                (Arg("TariffId", V.String, "A tariff of the site's [tariffs]"),),
                (),
                ADMIN,
                "Price the account with another tariff (admin)",
                self._set_tariff,
            ),
            MethodSpec(
                "AccountType",
                "SetAlarmThresholds",
                (
                    Arg("Alarm1", V.Double, "Alarm level 1, yuan", "alarm1"),
                    Arg("Alarm2", V.Double, "Alarm level 2 (pre-trip), yuan", "alarm2"),
                    Arg(
                        "OverdraftLimit",
                        V.Double,
                        "Overdraft allowed, yuan (NaN: keep)",
                        "overdraft_limit",
                    ),
                    Arg(
                        "CloseLimit",
                        V.Double,
                        "Close-allowed limit, yuan (NaN: keep)",
                        "close_limit",
                    ),
                ),
                (),
                ADMIN,
                "Change the alarm thresholds (admin)",
                self._set_thresholds,
            ),
        ]

    def _supply_specs(self) -> list[MethodSpec]:
        return [
            MethodSpec(
                "AccountType",
                "Disconnect",
                (REASON,),
                (COMMANDS,),
                SUPPLY,
                "Cut supply of every meter of the account (operator, admin)",
                self._disconnect,
            ),
            MethodSpec(
                "AccountType",
                "Reconnect",
                (REASON,),
                (COMMANDS,),
                SUPPLY,
                "Restore supply of every meter of the account (operator, admin)",
                self._reconnect,
            ),
            MethodSpec(
                "AccountType",
                "Protect",
                (Arg("On", V.Boolean, "保电: true = never cut this account", "on"),),
                (),
                SUPPLY,
                "Protected supply on or off (operator, admin)",
                self._protect,
            ),
            MethodSpec(
                "MeterType",
                "Disconnect",
                (REASON,),
                (COMMANDS,),
                SUPPLY,
                "Cut this meter's supply (operator, admin)",
                self._disconnect,
            ),
            MethodSpec(
                "MeterType",
                "Reconnect",
                (REASON,),
                (COMMANDS,),
                SUPPLY,
                "Restore this meter's supply (operator, admin)",
                self._reconnect,
            ),
        ]

    def _meter_command_specs(self) -> list[MethodSpec]:
        return [
            MethodSpec(
                "MeterType",
                "ReplaceMeter",
                (
                    Arg(
                        "FinalReading",
                        V.String,
                        "The old device's registers: total=…,T1=…,…,T4=… (kWh or m³)",
                        "final_reading",
                    ),
                    Arg("NewSerial", V.String, "Serial number of the new device", "new_serial"),
                    Arg(
                        "InitialReading",
                        V.String,
                        "The new device's registers; 0 when new",
                        "initial_reading",
                    ),
                    REASON,
                ),
                (Arg("Replacement", V.String, "What was recorded"),),
                ADMIN,
                "Record that this meter's device was swapped, now (admin)",
                self._replace_meter,
            ),
            MethodSpec(
                "MeterType",
                "RetryCommand",
                (COMMAND_ID, REASON),
                (COMMANDS,),
                SUPPLY,
                "Send a FAILED command of this meter again, same parameters (operator, admin)",
                self._retry_command,
            ),
            MethodSpec(
                "MeterType",
                "RefundCommand",
                (COMMAND_ID, REASON),
                (BALANCE,),
                CASH,
                "Refund the top-up of a FAILED RECHARGE of this meter (cashier, admin)",
                self._refund_command,
            ),
        ]

    # -- around every call: role, target, arguments, the audit of a refusal ---------------------
    def _callback(self, spec: MethodSpec) -> Callable[..., Any]:
        wanted = "account" if spec.owner == "AccountType" else "meter"

        async def callback(parent: ua.NodeId, *inputs: ua.Variant) -> Any:
            host = self.host
            assert host is not None and host.space is not None
            user = current_user()
            target = host.space.targets.get(parent)
            method_id = host.space.methods[(spec.owner, spec.name)]
            call = Call(
                spec.name, method_id, wanted, target.id if target else "", user, tuple(inputs)
            )
            token = CURRENT_CALL.set(call)
            try:
                check_role(spec, user)
                if target is None or target.kind != wanted:
                    raise Refused(
                        S.BadMethodInvalid,
                        f"{spec.name} is a method of {wanted}s; {parent.to_string()} is not one",
                    )
                if self.ops is None:
                    raise Refused(
                        S.BadInvalidState, "prepayment is not running on this site (no database)"
                    )
                values = check_inputs(spec, inputs)
                return await spec.handler(call, values)
            except Exception as exc:
                refused = refusal_of(exc, spec)
                if refused.status == S.BadUserAccessDenied:
                    host.counters.add("calls_refused")
                if not call.audited:
                    # The core audits what reaches it (AuditRecord); this is the rest.
                    audit(
                        host,
                        actor=call.actor,
                        operation=spec.name,
                        target=call.target,
                        detail=f"refused: {refused.message}",
                        ok=False,
                        call=call,
                    )
                return result_of(refused, len(spec.inputs))
            finally:
                CURRENT_CALL.reset(token)

        return callback

    def _condition_target(self, host: ExtensionHost, condition_id: ua.NodeId) -> Target | None:
        """The account or meter a ConditionId is about (for the audit)."""
        emitter, space = host.events, host.space
        state = emitter.conditions.get(condition_id) if emitter is not None else None
        if state is None or state.last is None or space is None:
            return None
        return space.targets.get(state.last.source)

    async def _acknowledge(self, parent: ua.NodeId, *inputs: ua.Variant) -> Any:
        """AcknowledgeableConditionType.Acknowledge, called with ObjectId = a ConditionId."""
        host = self.host
        assert host is not None and host.events is not None
        spec = ACKNOWLEDGE_SPEC
        target = self._condition_target(host, parent)
        call = Call(
            spec.name,
            ACKNOWLEDGE,
            target.kind if target else "condition",
            target.id if target else str(parent.Identifier),
            current_user(),
            tuple(inputs),
        )
        try:
            check_role(spec, call.user)
            if len(inputs) == 2 and getattr(inputs[1], "Value", 0) is None:
                # A null Comment is an empty one.
                inputs = (inputs[0], ua.Variant(ua.LocalizedText(""), V.LocalizedText))
            values = check_inputs(spec, inputs)
            (event_id, _), (comment, _) = values
            comment_text = comment.Text or ""
            status, _state = host.events.acknowledge(
                parent, bytes(event_id or b""), comment_text, call.actor
            )
            if status != S.Good:
                raise Refused(status, _ACK_REFUSALS[status].format(parent.to_string()))
        except Exception as exc:
            refused = refusal_of(exc)
            if refused.status == S.BadUserAccessDenied:
                host.counters.add("calls_refused")
            audit(
                host,
                actor=call.actor,
                operation=spec.name,
                target=call.target,
                detail=f"refused: {refused.message}",
                ok=False,
                call=call,
            )
            return result_of(refused, len(spec.inputs))
        audit(
            host,
            actor=call.actor,
            operation=spec.name,
            target=call.target,
            detail=f"{parent.Identifier} acknowledged"
            + (f": {comment_text}" if comment_text else ""),
            ok=True,
            call=call,
        )
        return []

    def refused(
        self, host: ExtensionHost, user: SessionUser | None, calls: list[ua.CallMethodRequest]
    ) -> None:
        """Audit a Call the ruleset refused for the caller's role."""
        space = host.space
        for req in calls:
            spec = self._specs.get(req.MethodId)
            if spec is None or space is None:
                continue
            target = space.targets.get(req.ObjectId)
            if req.MethodId == ACKNOWLEDGE:
                target = self._condition_target(host, req.ObjectId)
            audit(
                host,
                actor=actor_name(user),
                operation=spec.name,
                target=target.id if target else str(req.ObjectId.Identifier),
                detail=f"refused: {role_refusal(spec, user)}",
                ok=False,
                call=Call(
                    spec.name,
                    req.MethodId,
                    target.kind if target else "",
                    target.id if target else "",
                    user,
                    tuple(req.InputArguments or ()),
                ),
            )

    # -- handlers: Python values in, output Variants out -----------------------------------
    async def _topup(self, call: Call, values: list[Any]) -> list[ua.Variant]:
        (amount, amount_type), (reference, _) = values
        fen = amount_fen(amount, amount_type, 0)
        result = await in_thread(
            self.ops.topup,
            call.target,
            fen,
            reference,  # type: ignore[union-attr]
            channel="opcua",
            actor=call.actor,
        )
        return [
            ua.Variant(yuan(result.balance_fen), V.Double),
            ua.Variant(bool(result.replayed), V.Boolean),
        ]

    async def _refund(self, call: Call, values: list[Any]) -> list[ua.Variant]:
        (amount, amount_type), (reference, _) = values
        fen = amount_fen(amount, amount_type, 0)
        result = await in_thread(
            self.ops.refund,
            call.target,
            fen,
            reference,  # type: ignore[union-attr]
            actor=call.actor,
        )
        return [
            ua.Variant(yuan(result.balance_fen), V.Double),
            ua.Variant(str(result.state), V.String),
            ua.Variant(bool(result.replayed), V.Boolean),
        ]

    async def _set_tariff(self, call: Call, values: list[Any]) -> list[ua.Variant]:
        ((tariff, _),) = values
        await in_thread(self.ops.set_tariff, call.target, tariff, actor=call.actor)  # type: ignore[union-attr]
        return []

    async def _set_thresholds(self, call: Call, values: list[Any]) -> list[ua.Variant]:
        (a1, t1), (a2, t2), (od, t3), (cl, t4) = values
        alarm1 = amount_fen(a1, t1, 0, field="alarm1", positive=False)
        alarm2 = amount_fen(a2, t2, 1, field="alarm2", positive=False)
        overdraft = optional_amount_fen(od, t3, 2, "overdraft_limit")
        close = optional_amount_fen(cl, t4, 3, "close_limit")
        await in_thread(
            self.ops.set_thresholds,
            call.target,
            alarm1_fen=alarm1,  # type: ignore[union-attr]
            alarm2_fen=alarm2,
            overdraft_limit_fen=overdraft,
            close_limit_fen=close,
            actor=call.actor,
        )
        return []

    async def _disconnect(self, call: Call, values: list[Any]) -> list[ua.Variant]:
        ((reason, _),) = values
        commands = await in_thread(self.ops.disconnect, call.target, reason, actor=call.actor)  # type: ignore[union-attr]
        return [ua.Variant(_commands(commands), V.String)]

    async def _reconnect(self, call: Call, values: list[Any]) -> list[ua.Variant]:
        ((reason, _),) = values
        commands = await in_thread(self.ops.reconnect, call.target, reason, actor=call.actor)  # type: ignore[union-attr]
        return [ua.Variant(_commands(commands), V.String)]

    async def _protect(self, call: Call, values: list[Any]) -> list[ua.Variant]:
        ((on, _),) = values
        await in_thread(self.ops.protect, call.target, bool(on), actor=call.actor)  # type: ignore[union-attr]
        return []

    async def _replace_meter(self, call: Call, values: list[Any]) -> list[ua.Variant]:
        (final, _), (serial, _), (initial, _), (reason, _) = values
        done = await in_thread(
            self.ops.replace_meter,  # type: ignore[union-attr]
            call.target,
            final_reading=final or "",
            new_serial=serial or "",
            initial_reading=initial or "",
            reason=reason or "",
            actor=call.actor,
        )
        return [ua.Variant(f"replacement {done.id}: {done.describe()}", V.String)]

    async def _own_failed_command(self, call: Call, value: Any) -> int:
        """The command number, refused unless it is one of this meter's commands."""
        command_id = int(value)
        try:
            command = await in_thread(self.ops.command, command_id)  # type: ignore[union-attr]
        except Exception as exc:
            raise Refused(S.BadInvalidArgument, str(exc), 0) from None
        if command.meter_id != call.target:
            raise Refused(
                S.BadInvalidArgument,
                f"command {command_id} is for meter {command.meter_id}, not {call.target}",
                0,
            )
        return command_id

    async def _retry_command(self, call: Call, values: list[Any]) -> list[ua.Variant]:
        (command_id, _), (reason, _) = values
        own = await self._own_failed_command(call, command_id)
        new = await in_thread(self.ops.retry_command, own, reason, actor=call.actor)  # type: ignore[union-attr]
        return [ua.Variant(_commands([new]), V.String)]

    async def _refund_command(self, call: Call, values: list[Any]) -> list[ua.Variant]:
        (command_id, _), (reason, _) = values
        own = await self._own_failed_command(call, command_id)
        await in_thread(self.ops.refund_failed_command, own, reason, actor=call.actor)  # type: ignore[union-attr]
        command = await in_thread(self.ops.command, own)  # type: ignore[union-attr]
        balance = 0
        if command.account_id:
            snap = await in_thread(self.ops.account_snapshot, command.account_id)  # type: ignore[union-attr]
            balance = snap.balance_fen
        return [ua.Variant(yuan(balance), V.Double)]


def _commands(commands: Any) -> str:
    return ", ".join(f"{c.kind} #{c.id} for {c.meter_id}" for c in commands) or "none needed"


async def _not_called(call: Call, values: list[Any]) -> list[ua.Variant]:
    raise AssertionError("Acknowledge is served by AccountMethods._acknowledge")


#: The standard Acknowledge as the role check, the argument check and the audit see it.
ACKNOWLEDGE_SPEC = MethodSpec(
    "AcknowledgeableConditionType",
    "Acknowledge",
    (
        Arg("EventId", V.ByteString, "EventId of the condition's latest event"),
        Arg("Comment", V.LocalizedText, "Why, or what was done"),
    ),
    (),
    SUPPLY,
    "Acknowledge an alarm (operator, admin)",
    _not_called,
)

_ACK_REFUSALS = {
    S.BadNodeIdUnknown: "{} is not a condition of this server",
    S.BadEventIdUnknown: "{}: the EventId is not the latest event of the condition",
    S.BadConditionBranchAlreadyAcked: "{} is already acknowledged",
}
