"""Prepayment in the address space: accounts, their methods, meter methods, and the
prepayment events (low balance, supply changes, audit).

Accounts come from `runtime.operations` (core.operations.Operations):

- `OpenPrepay/Accounts/<account>` (AccountType), also organised by its room, is created at
  start for every account and later for new ones (the list is re-read every
  `[opcua] account_refresh_s`);
- its balances, alarm level and supply state follow the account samples the prepayment
  engine publishes on the bus (`core.prepay.account_points`); the rest (tariff, control mode,
  today's energy and cost, thresholds, 保电) follows `account_snapshot`, re-read after every
  change that concerns the account and periodically;
- methods TopUp, Refund, SetTariff, SetAlarmThresholds, Disconnect, Reconnect, Protect on
  accounts and Disconnect, Reconnect, ReplaceMeter, RetryCommand, RefundCommand on meters
  call the same `Operations` functions as the CLI (see methods.py for arguments and status
  codes);
- events: `AlarmLevelChanged` → LowBalanceAlarmType condition (active at levels 1–3),
  `SupplyChanged` → SupplyChangedEventType, `SupplyMismatch` → the meter's
  SupplyMismatchAlarmType condition, `BillingAlarm` → BillingAlarmType, a FAILED
  RECHARGE/REFUND (`CommandFailed`, until `CommandResolved`) → DeliveryFailedAlarmType,
  `AuditRecord` → OpenPrepayAuditEventType
  (every operation, whoever asked: OPC UA, CLI, batch), plus an audit event for every
  method call the core never saw (refused for its arguments or the caller's role);
- Acknowledge (the standard method, i=9111) on every alarm condition, LowBalance and
  CommunicationAlarm alike (events.py): operator or admin, audited like the methods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

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
from openprepay.core.model import DeviceModel, MeterKind, Sample
from openprepay.core.operations import AccountSnapshot, Operations
from openprepay.core.prepay.account_points import ACCOUNT_MODEL
from openprepay.core.prepay.feecontrol import FeeState
from openprepay.core.tasks import stop_task

from .access import SessionUser, actor_name, current_user
from .events import (
    ACKNOWLEDGE,
    SEVERITY_BILLING,
    SEVERITY_DELIVERY,
    SEVERITY_LOW_BALANCE,
    SEVERITY_SUPPLY_MISMATCH,
    Emission,
)
from .methods import (
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
from .space import NULL, WAITING, HistoryTarget, PointBinding, SourceBinding, Target, datatype_of
from .units import eu_information

if TYPE_CHECKING:
    from .service import OpcUaService

log = logging.getLogger("openprepay.opcua")

V = ua.VariantType
S = ua.StatusCodes
FEE_STATES = [s.value for s in sorted(FeeState, key=lambda s: s.severity)]

#: The snapshot as a pseudo-model, so it flows through the publisher like a sample (it is
#: never published on the bus: the historian has the account samples).
SNAPSHOT_MODEL = DeviceModel(
    name="openprepay.opcua.account_snapshot",
    vendor="OpenPrepay",
    product="Account snapshot",
    kind=MeterKind.ACCOUNT,
    description="What core.operations.account_snapshot returns",
    points=(),
    plugin="opcua",
)


def _yuan(fen: Any) -> float:
    return int(fen) / 100  # display only; the ledger's integer fen are the truth


def _fee_name(level: Any) -> str:
    level = int(level)
    return FEE_STATES[level] if 0 <= level < len(FEE_STATES) else str(level)


@dataclass(frozen=True, slots=True)
class AccountVar:
    """One AccountType variable and what feeds it."""

    name: str
    vtype: ua.VariantType
    unit: str
    description: str
    #: Point of the account samples (core.prepay.account_points) that also feeds it, if any.
    sample_point: str | None
    #: Key of `snapshot_values()`.
    snapshot_key: str
    convert: Callable[[Any], Any]
    history: bool = False


_A = AccountVar
ACCOUNT_VARIABLES = (
    _A("Balance", V.Double, "CNY", "Energy wallet balance (what fee control reads)",
       "energy_balance_fen", "balance_fen", _yuan, True),
    _A("BalanceFen", V.Int64, "", "Energy wallet balance in fen (exact)",
       "energy_balance_fen", "balance_fen", int, True),
    _A("GeneralBalance", V.Double, "CNY", "General wallet (property fee, rent, services)",
       "general_balance_fen", "general_fen", _yuan),
    _A("GeneralBalanceFen", V.Int64, "", "General wallet in fen (exact)",
       "general_balance_fen", "general_fen", int),
    _A("EmergencyCredit", V.Double, "CNY", "Emergency credit advanced, not yet repaid",
       "emergency_credit_fen", "emergency_fen", _yuan),
    _A("AlarmLevel", V.Int32, "", "0 normal, 1 alarm 1, 2 alarm 2, 3 at or below zero, "
       "4 overdraft limit reached", "alarm_level", "alarm_level", int, True),
    _A("FeeState", V.String, "", "NORMAL, ALARM1, ALARM2, OVER_ZERO or OVERDRAFT",
       "alarm_level", "alarm_level", _fee_name),
    _A("SupplyOn", V.Boolean, "", "True while no meter of the account is cut",
       "supply_on", "supply_on", bool, True),
    _A("State", V.String, "", "PREREGISTERED, OPEN or CLOSED", None, "state", str),
    _A("ControlMode", V.String, "", "REMOTE, LOCAL or POSTPAID (several: comma-separated)",
       None, "control_mode", str),
    _A("TariffId", V.String, "", "The account's tariff ('' = the site's default)",
       None, "tariff_id", str),
    _A("Protected", V.Boolean, "", "保电: fee control never cuts this account",
       None, "protected", bool),
    _A("EnergyToday", V.Double, "kWh", "Electricity used since local midnight",
       None, "energy_today_kwh", float),
    _A("WaterToday", V.Double, "m³", "Water used since local midnight",
       None, "water_today_m3", float),
    _A("CostToday", V.Double, "CNY", "Usage deducted since local midnight",
       None, "cost_today_fen", _yuan),
    _A("CostTodayFen", V.Int64, "", "Usage deducted since local midnight, fen",
       None, "cost_today_fen", int),
    _A("Alarm1", V.Double, "CNY", "Alarm level 1 threshold", None, "alarm1_fen", _yuan),
    _A("Alarm2", V.Double, "CNY", "Alarm level 2 / pre-trip threshold",
       None, "alarm2_fen", _yuan),
    _A("OverdraftLimit", V.Double, "CNY", "Overdraft allowed before the trip",
       None, "overdraft_limit_fen", _yuan),
    _A("CloseLimit", V.Double, "CNY", "Balance above which supply may be restored",
       None, "close_limit_fen", _yuan),
    _A("SupplyDesired", V.Boolean, "", "True unless the platform decided to cut a meter "
       "of the account (SupplyOn: what the meters read)", None, "supply_desired", bool),
    _A("Owed", V.Double, "CNY", "What the tenant owes: energy and general-wallet arrears, "
       "unpaid bills and charges", None, "owed_fen", _yuan),
    _A("OwedFen", V.Int64, "", "What the tenant owes, fen", None, "owed_fen", int),
    _A("UnbilledMeters", V.Int32, "", "Meters of the account that are not billed (each a "
       "BillingAlarm)", None, "unbilled", int),
    _A("FailedDeliveries", V.Int32, "", "FAILED RECHARGE/REFUND commands not retried or "
       "refunded (each a DeliveryFailedAlarm)", None, "failed_deliveries", int),
)  # fmt: skip
ACCOUNT_PROPERTIES = ("AccountId", "Name", "Room")


def snapshot_values(s: AccountSnapshot) -> dict[str, Any]:
    modes = sorted({m.control_mode for m in s.meters})
    th = s.thresholds
    return {
        "balance_fen": s.balance_fen,
        "general_fen": s.general_fen,
        "emergency_fen": s.emergency_outstanding_fen,
        "alarm_level": s.alarm_level,
        "supply_on": s.supply_on,
        "state": s.state,
        "control_mode": ",".join(modes),
        "tariff_id": s.tariff_id or "",
        "protected": s.protected,
        "energy_today_kwh": float(s.energy_today_kwh),
        "water_today_m3": float(s.water_today_m3),
        "cost_today_fen": s.cost_today_fen,
        "alarm1_fen": th.alarm1_fen,
        "alarm2_fen": th.alarm2_fen,
        "overdraft_limit_fen": th.overdraft_limit_fen,
        "close_limit_fen": th.close_limit_fen,
        "supply_desired": s.desired_supply_on,
        "owed_fen": s.owed_fen,
        "unbilled": len(s.billing_problems),
        "failed_deliveries": len(s.failed_commands),
    }


def low_balance_level(severity: int) -> int:
    """Fee control's 0..4 as the LowBalance alarm's 1..3 (0 = no alarm)."""
    return min(int(severity), 3)


class AccountView:
    """The prepayment part of the server (an extension of OpcUaService)."""

    def __init__(self) -> None:
        self.ops: Operations | None = None
        self.service: OpcUaService | None = None
        self._dirty: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._specs: dict[ua.NodeId, MethodSpec] = {}
        #: LowBalance condition id -> level shown (1..3, 0 = inactive)
        self._levels: dict[ua.NodeId, int] = {}
        self.refreshes = 0

    # -- declaring types and methods (before the site tree) ------------------------------------
    async def declare(self, service: OpcUaService) -> None:
        self.service = service
        space = service.space
        assert space is not None
        w = space.writer
        for prop in ACCOUNT_PROPERTIES:
            space.type_property("AccountType", prop, "")
        for var in ACCOUNT_VARIABLES:
            nid = space.tid(f"AccountType/{var.name}")
            self._variable(space, nid, space.tid("AccountType"), var, history=False, status=None)
            w.mandatory(nid)
        for spec in self.method_specs():
            nid = space.declare_method(
                spec.owner,
                spec.name,
                [a.argument() for a in spec.inputs],
                [a.argument() for a in spec.outputs],
                self._callback(spec),
                spec.description,
            )
            service.method_roles[nid] = spec.roles
            self._specs[nid] = spec
        # Alarms (of accounts and meters) are acknowledged by operators.
        service.method_roles[ACKNOWLEDGE] = ACKNOWLEDGE_SPEC.roles
        self._specs[ACKNOWLEDGE] = ACKNOWLEDGE_SPEC
        if service.condition_methods is not None:
            service.condition_methods.condition_methods[ACKNOWLEDGE] = self._acknowledge

    def _variable(
        self,
        space: Any,
        nid: ua.NodeId,
        parent: ua.NodeId,
        var: AccountVar,
        *,
        history: bool,
        status: ua.StatusCode | None,
    ) -> None:
        w = space.writer
        kwargs: dict[str, Any] = {}
        if var.unit:
            kwargs["type_definition"] = ua.NodeId(ua.ObjectIds.BaseAnalogType)
        w.variable(
            nid,
            space.tq(var.name),
            parent,
            NULL,
            datatype_of(var.vtype),
            description=var.description,
            history=history,
            status=status,
            **kwargs,
        )
        if var.unit:
            w.property(
                ua.NodeId(f"{nid.Identifier}/EngineeringUnits", nid.NamespaceIndex),
                "EngineeringUnits",
                nid,
                ua.Variant(eu_information(var.unit), V.ExtensionObject),
                ua.NodeId(ua.ObjectIds.EUInformation),
            )

    # -- the accounts that exist at start ------------------------------------------------------
    async def build(self, service: OpcUaService) -> None:
        self.ops = getattr(service.runtime, "operations", None)
        if self.ops is None:
            return
        try:
            snapshots = await in_thread(self.ops.list_accounts)
        except Exception:
            log.exception("reading the accounts for OPC UA failed")
            return
        for snap in snapshots:
            self._add(service, snap)

    def _add(self, service: OpcUaService, snap: AccountSnapshot) -> SourceBinding | None:
        space = service.space
        assert space is not None
        account_id = snap.account_id
        if account_id in space.account_nodes:
            return space.bindings.get((account_id, SNAPSHOT_MODEL.name))
        w = space.writer
        base = f"Account:{account_id}"
        node = w.object(
            space.iid(base),
            space.iq(account_id),
            space.iid("OpenPrepay/Accounts"),
            space.types["AccountType"],
            display=f"{account_id} {snap.name}".strip(),
            event_notifier=ua.EventNotifier.SubscribeToEvents.mask,
        )
        space.add_properties(
            node.nodeid, base, {"AccountId": account_id, "Name": snap.name, "Room": snap.room or ""}
        )
        samples = SourceBinding(account_id, node.nodeid)
        snapshot = SourceBinding(account_id, node.nodeid)
        for var in ACCOUNT_VARIABLES:
            nid = space.iid(f"{base}/{var.name}")
            history = var.history and space.history
            self._variable(space, nid, node.nodeid, var, history=history, status=WAITING)
            pb = PointBinding(nid, var.vtype, var.convert, guard=True)
            snapshot.points.append((var.snapshot_key, pb))
            if var.sample_point is not None:
                # The same variable, fed by the account samples too (same binding: the
                # older of the two never overwrites the newer).
                samples.points.append((var.sample_point, pb))
                if history:
                    space.history_targets[nid] = HistoryTarget(
                        account_id, var.sample_point, var.vtype, var.convert
                    )
        space.bindings[(account_id, ACCOUNT_MODEL.name)] = samples
        space.bindings[(account_id, SNAPSHOT_MODEL.name)] = snapshot
        space.attach_methods(node.nodeid, "AccountType")
        if snap.room is not None and snap.room in space.room_nodes:
            w.reference(
                space.room_nodes[snap.room],
                node.nodeid,
                ua.NodeId(ua.ObjectIds.Organizes),
                inverse=True,
            )
        space.account_nodes[account_id] = node.nodeid
        space.targets[node.nodeid] = Target("account", account_id)
        self._low_balance(service, account_id, snap.alarm_level, snap.balance_fen, startup=True)
        return snapshot

    # -- running ----------------------------------------------------------------------------
    async def start(self, service: OpcUaService) -> None:
        if self.ops is None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._refresh_forever(service), name="opcua-accounts")

    async def stop(self, service: OpcUaService) -> None:
        await stop_task(self._task)
        self._task = None

    def touch(self, account_id: str | None) -> None:
        """Re-read this account's snapshot soon (any thread)."""
        if account_id is None or self._loop is None:
            return
        self._dirty.add(account_id)
        try:
            self._loop.call_soon_threadsafe(self._wake.set)  # type: ignore[union-attr]
        except RuntimeError:
            pass  # loop closed: stopping

    async def _refresh_forever(self, service: OpcUaService) -> None:
        assert self._wake is not None
        period = service.config.account_refresh_s
        await self.refresh(service, None)
        loop = asyncio.get_running_loop()
        next_full = loop.time() + period
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_full - loop.time()))
            except TimeoutError:
                pass
            self._wake.clear()
            full = loop.time() >= next_full
            dirty, self._dirty = self._dirty, set()
            try:
                await self.refresh(service, None if full else dirty)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("refreshing OPC UA accounts failed")
            if full:
                next_full = loop.time() + period

    async def refresh(self, service: OpcUaService, accounts: set[str] | None) -> None:
        """Re-read snapshots (all when `accounts` is None) into the address space."""
        ops, publisher = self.ops, service.publisher
        if ops is None or publisher is None:
            return
        if accounts is None:
            snapshots = await in_thread(ops.list_accounts)
        else:
            snapshots = []
            for account_id in sorted(accounts):
                try:
                    snapshots.append(await in_thread(ops.account_snapshot, account_id))
                except Exception as exc:
                    log.debug("snapshot of %s: %s", account_id, exc)
        self.refreshes += 1
        for snap in snapshots:
            if snap.account_id not in service.space.account_nodes:  # type: ignore[union-attr]
                self._add(service, snap)
            # Through the publisher's queue: one writer for the address space.
            publisher.on_sample(
                Sample(snap.account_id, SNAPSHOT_MODEL, snap.at, snapshot_values(snap))
            )

    # -- core events --------------------------------------------------------------------------
    def on_event(self, service: OpcUaService, event: Event) -> None:
        if isinstance(event, AlarmLevelChanged):
            self._low_balance(
                service,
                event.account_id,
                FeeState(event.level).severity,
                event.balance_fen,
                at=event.at,
            )
            self.touch(event.account_id)
        elif isinstance(event, SupplyChanged):
            self._supply_changed(service, event)
            self.touch(event.account_id)
        elif isinstance(event, SupplyMismatch | BillingAlarm | CommandFailed | CommandResolved):
            self._meter_alarm(service, event)
            self.touch(event.account_id)
        elif isinstance(event, AuditRecord):
            self._audit_record(service, event)
            space = service.space
            if space is not None and event.target in space.account_nodes:
                self.touch(event.target)

    def _low_balance(
        self,
        service: OpcUaService,
        account_id: str,
        severity: int,
        balance_fen: int,
        *,
        at: datetime | None = None,
        startup: bool = False,
    ) -> None:
        space, emitter = service.space, service.events
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
        yuan = _yuan(balance_fen)
        if level:
            state = FEE_STATES[int(severity)]
            message = f"{account_id}: low balance {yuan:.2f} CNY, alarm level {level} ({state})"
        else:
            message = f"{account_id}: balance {yuan:.2f} CNY, back to normal"
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
                "Balance": yuan,
                "BalanceFen": int(balance_fen),
            },
            at,
            force=True,
        )

    def _supply_changed(self, service: OpcUaService, event: SupplyChanged) -> None:
        space, emitter = service.space, service.events
        if space is None or emitter is None:
            return
        node = space.meter_nodes.get(event.meter_id) or space.account_nodes.get(
            event.account_id or ""
        )
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

    def _meter_alarm(
        self,
        service: OpcUaService,
        event: SupplyMismatch | BillingAlarm | CommandFailed | CommandResolved,
    ) -> None:
        """The meter's SupplyMismatch, Billing and Delivery conditions."""
        space, emitter = service.space, service.events
        node = space.meter_nodes.get(event.meter_id) if space is not None else None
        if space is None or emitter is None or node is None:
            return
        m, account = event.meter_id, event.account_id or ""
        if isinstance(event, SupplyMismatch):
            kind, name, active, severity = (
                "SupplyMismatchAlarmType",
                "SupplyMismatch",
                event.active,
                SEVERITY_SUPPLY_MISMATCH,
            )
            message = f"{m}: " + (
                f"reads supply {'on' if event.observed_on else 'off'} against the decision "
                f"{'on' if event.desired_on else 'cut'} (possible tamper; re-assertion "
                f"{event.consecutive} in a row)"
                if event.active
                else "reads the decided supply state again"
            )
            fields = {
                "MeterId": m,
                "AccountId": account,
                "DesiredOn": event.desired_on,
                "ObservedOn": event.observed_on,
                "Count": event.count,
                "Consecutive": event.consecutive,
                "CommandId": event.command_id,
                "Detail": event.detail,
            }
            force = event.active  # every re-assertion is news, not only the first
        elif isinstance(event, BillingAlarm):
            kind, name, active, severity = (
                "BillingAlarmType",
                "Billing",
                event.active,
                SEVERITY_BILLING,
            )
            message = f"{m}: " + (f"not billed: {event.reason}" if event.active else "billed again")
            fields = {"MeterId": m, "AccountId": account, "Reason": event.reason}
            force = False
        else:
            if event.command not in ("RECHARGE", "REFUND"):
                return
            kind, name, severity = "DeliveryFailedAlarmType", "Delivery", SEVERITY_DELIVERY
            active = isinstance(event, CommandFailed)
            detail = event.error if isinstance(event, CommandFailed) else event.detail
            message = (
                f"{m}: {event.command} #{event.command_id} FAILED, money not delivered: {detail}"
                if active
                else f"{m}: {event.command} #{event.command_id} {event.how}: {detail}"
            )
            fields = {
                "MeterId": m,
                "AccountId": account,
                "CommandId": event.command_id,
                "Command": event.command,
                "Error": detail,
            }
            force = active
        emitter.condition(
            kind,
            ua.NodeId(f"Meter:{m}/{name}", space.i),
            name,
            active,
            node,
            m,
            message,
            severity,
            fields,
            event.at,
            force=force,
        )

    def _audit_record(self, service: OpcUaService, record: AuditRecord) -> None:
        call = CURRENT_CALL.get()
        if call is not None:
            call.audited = True
        self.audit(
            service,
            actor=record.actor,
            operation=record.action,
            target=record.target,
            detail=record.detail,
            ok=record.ok,
            call=call,
            at=record.at,
        )

    def audit(
        self,
        service: OpcUaService,
        *,
        actor: str,
        operation: str,
        target: str,
        detail: str,
        ok: bool,
        call: Call | None = None,
        at: datetime | None = None,
    ) -> None:
        space, emitter = service.space, service.events
        if space is None or emitter is None:
            return
        node = space.account_nodes.get(target) or space.meter_nodes.get(target)
        fields: dict[str, Any] = {
            "ActionTimeStamp": at or datetime.now(UTC),
            "Status": ok,
            "ServerId": service.server.get_application_uri() if service.server else "",
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

    def refused(
        self, service: OpcUaService, user: SessionUser | None, calls: list[ua.CallMethodRequest]
    ) -> None:
        """Audit a Call the ruleset refused for the caller's role."""
        space = service.space
        for req in calls:
            spec = self._specs.get(req.MethodId)
            if spec is None or space is None:
                continue
            target = space.targets.get(req.ObjectId)
            if req.MethodId == ACKNOWLEDGE:
                target = self._condition_target(service, req.ObjectId)
            self.audit(
                service,
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

    # -- methods --------------------------------------------------------------------------
    def method_specs(self) -> list[MethodSpec]:
        reason = Arg("Reason", V.String, "Why (recorded with the relay or valve action)", "reason")
        command_id = Arg("CommandId", V.Int64, "The FAILED command's number", "command")
        commands = Arg("Commands", V.String, "The meter commands queued")
        balance = Arg("Balance", V.Double, "Energy wallet balance after the call, CNY")
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
                    balance,
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
                    balance,
                    Arg("State", V.String, "The refund's state"),
                    Arg("Replayed", V.Boolean, "True when the refund number was used"),
                ),
                CASH,
                "Refund from the energy wallet (cashier, admin)",
                self._refund,
            ),
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
            MethodSpec(
                "AccountType",
                "Disconnect",
                (reason,),
                (commands,),
                SUPPLY,
                "Cut supply of every meter of the account (operator, admin)",
                self._disconnect,
            ),
            MethodSpec(
                "AccountType",
                "Reconnect",
                (reason,),
                (commands,),
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
                (reason,),
                (commands,),
                SUPPLY,
                "Cut this meter's supply (operator, admin)",
                self._disconnect,
            ),
            MethodSpec(
                "MeterType",
                "Reconnect",
                (reason,),
                (commands,),
                SUPPLY,
                "Restore this meter's supply (operator, admin)",
                self._reconnect,
            ),
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
                    reason,
                ),
                (Arg("Replacement", V.String, "What was recorded"),),
                ADMIN,
                "Record that this meter's device was swapped, now (admin)",
                self._replace_meter,
            ),
            MethodSpec(
                "MeterType",
                "RetryCommand",
                (command_id, reason),
                (commands,),
                SUPPLY,
                "Send a FAILED command of this meter again, same parameters (operator, admin)",
                self._retry_command,
            ),
            MethodSpec(
                "MeterType",
                "RefundCommand",
                (command_id, reason),
                (balance,),
                CASH,
                "Refund the top-up of a FAILED RECHARGE of this meter (cashier, admin)",
                self._refund_command,
            ),
        ]

    def _callback(self, spec: MethodSpec) -> Callable[..., Any]:
        wanted = "account" if spec.owner == "AccountType" else "meter"

        async def callback(parent: ua.NodeId, *inputs: ua.Variant) -> Any:
            service = self.service
            assert service is not None and service.space is not None
            user = current_user()
            target = service.space.targets.get(parent)
            method_id = service.space.methods[(spec.owner, spec.name)]
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
                    service.counters.add("calls_refused")
                if not call.audited:
                    # The core audits what reaches it (AuditRecord); this is the rest.
                    self.audit(
                        service,
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

    def _condition_target(self, service: OpcUaService, condition_id: ua.NodeId) -> Target | None:
        """The account or meter a ConditionId is about (for the audit)."""
        emitter, space = service.events, service.space
        state = emitter.conditions.get(condition_id) if emitter is not None else None
        if state is None or state.last is None or space is None:
            return None
        return space.targets.get(state.last.source)

    async def _acknowledge(self, parent: ua.NodeId, *inputs: ua.Variant) -> Any:
        """AcknowledgeableConditionType.Acknowledge, called with ObjectId = a ConditionId."""
        service = self.service
        assert service is not None and service.events is not None
        spec = ACKNOWLEDGE_SPEC
        target = self._condition_target(service, parent)
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
            status, _state = service.events.acknowledge(
                parent, bytes(event_id or b""), comment_text, call.actor
            )
            if status != S.Good:
                raise Refused(status, _ACK_REFUSALS[status].format(parent.to_string()))
        except Exception as exc:
            refused = refusal_of(exc)
            if refused.status == S.BadUserAccessDenied:
                service.counters.add("calls_refused")
            self.audit(
                service,
                actor=call.actor,
                operation=spec.name,
                target=call.target,
                detail=f"refused: {refused.message}",
                ok=False,
                call=call,
            )
            return result_of(refused, len(spec.inputs))
        self.audit(
            service,
            actor=call.actor,
            operation=spec.name,
            target=call.target,
            detail=f"{parent.Identifier} acknowledged"
            + (f": {comment_text}" if comment_text else ""),
            ok=True,
            call=call,
        )
        return []

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
            ua.Variant(_yuan(result.balance_fen), V.Double),
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
            ua.Variant(_yuan(result.balance_fen), V.Double),
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
        return [ua.Variant(_yuan(balance), V.Double)]


def _commands(commands: Any) -> str:
    return ", ".join(f"{c.kind} #{c.id} for {c.meter_id}" for c in commands) or "none needed"


async def _not_called(call: Call, values: list[Any]) -> list[ua.Variant]:
    raise AssertionError("Acknowledge is served by AccountView._acknowledge")


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
