"""Prepayment events in OPC UA: the core's account and meter events as alarms and events.

- `AlarmLevelChanged` → the account's LowBalanceAlarmType condition (active at levels 1–3);
- `SupplyChanged` → SupplyChangedEventType;
- `SupplyMismatch` → the meter's SupplyMismatchAlarmType condition, `BillingAlarm` →
  BillingAlarmType, a FAILED RECHARGE/REFUND (`CommandFailed`, until `CommandResolved`) →
  DeliveryFailedAlarmType;
- `AuditRecord` → OpenPrepayAuditEventType (every operation, whoever asked: OPC UA, CLI,
  batch); `audit` also raises one for every method call the core never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from openprepay.core.events import (
    AlarmLevelChanged,
    AuditRecord,
    BillingAlarm,
    CommandFailed,
    CommandResolved,
    Event,
    SupplyChanged,
    SupplyMismatch,
)
from openprepay.core.prepay.feecontrol import FeeState

from ..events import (
    SEVERITY_BILLING,
    SEVERITY_DELIVERY,
    SEVERITY_LOW_BALANCE,
    SEVERITY_SUPPLY_MISMATCH,
    Emission,
)
from ..extension import ExtensionHost
from ..methods import CURRENT_CALL, Call
from .nodes import FEE_STATES, yuan

MeterAlarmEvent = SupplyMismatch | BillingAlarm | CommandFailed | CommandResolved


def low_balance_level(severity: int) -> int:
    """Fee control's 0..4 as the LowBalance alarm's 1..3 (0 = no alarm)."""
    return min(int(severity), 3)


@dataclass(frozen=True, slots=True)
class MeterCondition:
    """One state of a meter's prepayment condition, as the emitter takes it."""

    kind: str
    name: str
    active: bool
    severity: int
    message: str
    fields: dict[str, Any]
    #: Emit even when the state did not change (every occurrence is news).
    force: bool


class AccountAlarms:
    """Publishes the prepayment events; remembers the LowBalance level each account shows."""

    def __init__(self) -> None:
        #: LowBalance condition id -> level shown (1..3, 0 = inactive)
        self._levels: dict[ua.NodeId, int] = {}

    def publish(self, host: ExtensionHost, event: Event) -> str | None:
        """Raise what `event` means in OPC UA; the account whose snapshot it changed, if any."""
        if isinstance(event, AlarmLevelChanged):
            self.low_balance(
                host,
                event.account_id,
                FeeState(event.level).severity,
                event.balance_fen,
                at=event.at,
            )
            return event.account_id
        if isinstance(event, SupplyChanged):
            _supply_changed(host, event)
            return event.account_id
        if isinstance(event, MeterAlarmEvent):
            _meter_alarm(host, event)
            return event.account_id
        if isinstance(event, AuditRecord):
            _audit_record(host, event)
            space = host.space
            if space is not None and event.target in space.account_nodes:
                return event.target
            if event.ok and event.action == "account_open":
                return event.target  # a new account: its node is added with its snapshot
        return None

    def low_balance(
        self,
        host: ExtensionHost,
        account_id: str,
        severity: int,
        balance_fen: int,
        *,
        at: datetime | None = None,
        startup: bool = False,
    ) -> None:
        """The account's LowBalance condition at fee control's `severity` (at start: only
        an active one)."""
        space, emitter = host.space, host.events
        node = space.account_nodes.get(account_id) if space else None
        if space is None or emitter is None or node is None:
            return
        level = low_balance_level(severity)
        cid = ua.NodeId(f"Account:{account_id}/LowBalance", space.i)
        if startup and level == 0:
            return
        was = self._levels.get(cid, 0)
        if level == was and not startup:
            return
        self._levels[cid] = level
        balance_yuan = yuan(balance_fen)
        if level:
            state = FEE_STATES[int(severity)]
            message = (
                f"{account_id}: low balance {balance_yuan:.2f} CNY, alarm level {level} ({state})"
            )
        else:
            message = f"{account_id}: balance {balance_yuan:.2f} CNY, back to normal"
        emitter.condition(
            "LowBalanceAlarmType",
            cid,
            "LowBalance",
            level > 0,
            node,
            account_id,
            message,
            SEVERITY_LOW_BALANCE.get(level, 200),
            {
                "AccountId": account_id,
                "AlarmLevel": level,
                "FeeAlarmLevel": int(severity),
                "Balance": balance_yuan,
                "BalanceFen": int(balance_fen),
            },
            at,
            force=True,
        )


def _supply_changed(host: ExtensionHost, event: SupplyChanged) -> None:
    space, emitter = host.space, host.events
    if space is None or emitter is None:
        return
    node = space.meter_nodes.get(event.meter_id) or space.account_nodes.get(event.account_id or "")
    action = "close" if event.on else "trip"
    emitter.post(
        Emission(
            "SupplyChangedEventType",
            node or ua.NodeId(ua.ObjectIds.Server),
            event.meter_id,
            f"{event.meter_id}: supply {'restored' if event.on else 'cut'} ({event.reason}; "
            f"by {event.actor}){'' if event.confirmed else ' — not confirmed'}",
            300 if event.on else 600,
            {
                "MeterId": event.meter_id,
                "AccountId": event.account_id or "",
                "Action": action,
                "SupplyOn": event.on,
                "Reason": event.reason,
                "Actor": event.actor,
                "Confirmed": event.confirmed,
            },
            event.at,
        )
    )


def _meter_alarm(host: ExtensionHost, event: MeterAlarmEvent) -> None:
    """The meter's SupplyMismatch, Billing and Delivery conditions."""
    space, emitter = host.space, host.events
    node = space.meter_nodes.get(event.meter_id) if space is not None else None
    if space is None or emitter is None or node is None:
        return
    if isinstance(event, SupplyMismatch):
        condition = _supply_mismatch(event)
    elif isinstance(event, BillingAlarm):
        condition = _billing(event)
    elif event.command in ("RECHARGE", "REFUND"):
        condition = _delivery(event)
    else:
        return
    emitter.condition(
        condition.kind,
        ua.NodeId(f"Meter:{event.meter_id}/{condition.name}", space.i),
        condition.name,
        condition.active,
        node,
        event.meter_id,
        condition.message,
        condition.severity,
        condition.fields,
        event.at,
        force=condition.force,
    )


def _supply_mismatch(event: SupplyMismatch) -> MeterCondition:
    m = event.meter_id
    message = f"{m}: " + (
        f"reads supply {'on' if event.observed_on else 'off'} against the decision "
        f"{'on' if event.desired_on else 'cut'} (possible tamper; re-assertion "
        f"{event.consecutive} in a row)"
        if event.active
        else "reads the decided supply state again"
    )
    fields = {
        "MeterId": m,
        "AccountId": event.account_id or "",
        "DesiredOn": event.desired_on,
        "ObservedOn": event.observed_on,
        "Count": event.count,
        "Consecutive": event.consecutive,
        "CommandId": event.command_id,
        "Detail": event.detail,
    }
    # Every re-assertion is news, not only the first.
    return MeterCondition(
        "SupplyMismatchAlarmType",
        "SupplyMismatch",
        event.active,
        SEVERITY_SUPPLY_MISMATCH,
        message,
        fields,
        force=event.active,
    )


def _billing(event: BillingAlarm) -> MeterCondition:
    m = event.meter_id
    message = f"{m}: " + (f"not billed: {event.reason}" if event.active else "billed again")
    fields = {"MeterId": m, "AccountId": event.account_id or "", "Reason": event.reason}
    return MeterCondition(
        "BillingAlarmType", "Billing", event.active, SEVERITY_BILLING, message, fields, False
    )


def _delivery(event: CommandFailed | CommandResolved) -> MeterCondition:
    """A FAILED RECHARGE or REFUND: money the meter never got, until retried or refunded."""
    m = event.meter_id
    active = isinstance(event, CommandFailed)
    detail = event.error if isinstance(event, CommandFailed) else event.detail
    message = (
        f"{m}: {event.command} #{event.command_id} FAILED, money not delivered: {detail}"
        if active
        else f"{m}: {event.command} #{event.command_id} {event.how}: {detail}"
    )
    fields = {
        "MeterId": m,
        "AccountId": event.account_id or "",
        "CommandId": event.command_id,
        "Command": event.command,
        "Error": detail,
    }
    return MeterCondition(
        "DeliveryFailedAlarmType", "Delivery", active, SEVERITY_DELIVERY, message, fields, active
    )


def _audit_record(host: ExtensionHost, record: AuditRecord) -> None:
    call = CURRENT_CALL.get()
    if call is not None:
        call.audited = True
    audit(
        host,
        actor=record.actor,
        operation=record.action,
        target=record.target,
        detail=record.detail,
        ok=record.ok,
        call=call,
        at=record.at,
    )


def audit(
    host: ExtensionHost,
    *,
    actor: str,
    operation: str,
    target: str,
    detail: str,
    ok: bool,
    call: Call | None = None,
    at: datetime | None = None,
) -> None:
    """One OpenPrepayAuditEventType, on the target's node (the Server when it has none)."""
    space, emitter = host.space, host.events
    if space is None or emitter is None:
        return
    node = space.account_nodes.get(target) or space.meter_nodes.get(target)
    fields: dict[str, Any] = {
        "ActionTimeStamp": at or datetime.now(UTC),
        "Status": ok,
        "ServerId": host.server.get_application_uri() if host.server else "",
        "ClientAuditEntryId": "",
        "ClientUserId": actor,
        "Operation": operation,
        "Target": target,
        "Result": detail,
    }
    if call is not None:
        fields["MethodId"] = call.method_id
        fields["InputArguments"] = list(call.inputs)
    emitter.post(
        Emission(
            "OpenPrepayAuditEventType",
            node or ua.NodeId(ua.ObjectIds.Server),
            target or "server",
            f"{actor} {operation} {target}: {detail}",
            100 if ok else 500,
            fields,
            at,
        )
    )
