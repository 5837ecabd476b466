"""OPC UA events: the types, and how they reach clients.

asyncua delivers an event only to monitored items on the node it is emitted on; BMS/SCADA
alarm clients subscribe on the Server object. Every event is therefore emitted on the
Server object with SourceNode/SourceName set to the meter or account it is about, and a
second time on that meter or account object (for clients that subscribe per object).

Alarms (low balance, communication loss, supply mismatch, unbilled meter, failed delivery)
are conditions (AlarmConditionType subtypes, one condition per account or meter,
ConditionId `Account:<id>/LowBalance`, `Meter:<id>/CommunicationAlarm`,
`Meter:<id>/SupplyMismatch`, `Meter:<id>/Billing`, `Meter:<id>/Delivery`, in the site
namespace). They are acknowledgeable
(Part 9 AcknowledgeableConditionType):

- an alarm that becomes active carries AckedState = false ("Unacknowledged"); a change
  of level while it stays active keeps the AckedState it had;
- the standard method Acknowledge (i=9111; EventId ByteString, Comment LocalizedText),
  called with ObjectId = the ConditionId, acknowledges it: a new event of the condition
  with AckedState = true, the Comment and ClientUserId (`opcua:<user>`). Refusals:
  BadNodeIdUnknown (no such condition), BadEventIdUnknown (not the condition's latest
  EventId), BadConditionBranchAlreadyAcked (already acknowledged), BadUserAccessDenied
  (a role below operator: access.py); every call, refused or not, is audited;
- Retain is true while the alarm is active or unacknowledged: an alarm that went
  inactive before anyone acknowledged it stays retained (and comes back on
  ConditionRefresh) until it is acknowledged; inactive and acknowledged, Retain = false;
- ConditionRefresh returns each retained condition's latest event, AckedState included.

asyncua routes a Call by MethodId and refuses ObjectIds that are not nodes; conditions
are not nodes here, so `ConditionMethodService` routes Acknowledge itself, with the
ObjectId (the ConditionId) as the callback's first argument. Confirm, AddComment and
shelving are not implemented (ConfirmedState is always true). The acknowledgement state
is kept in memory only: after a restart the alarms are evaluated again and those active
come back unacknowledged.

Emitting never blocks the caller: `post()` may be called from any thread (bus listeners,
method callbacks in worker threads) and queues the event for the server's loop.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from asyncua import Node, Server, ua
from asyncua.common import events as ua_events
from asyncua.server.address_space import MethodService

from openprepay.core.tasks import stop_task

from .nodes import NodeWriter

log = logging.getLogger("openprepay.opcua")

SERVER = ua.NodeId(ua.ObjectIds.Server)
V = ua.VariantType
S = ua.StatusCodes
#: AcknowledgeableConditionType.Acknowledge, the method clients call on a condition.
ACKNOWLEDGE = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)

#: name -> (base type, [(field, variant type, description)])
EVENT_TYPES: dict[str, tuple[int, list[tuple[str, ua.VariantType, str]]]] = {
    "LowBalanceAlarmType": (
        ua.ObjectIds.AlarmConditionType,
        [
            ("AccountId", V.String, "The account"),
            ("AlarmLevel", V.Int32, "1 alarm 1, 2 alarm 2 / pre-trip, 3 balance at or below zero"),
            ("FeeAlarmLevel", V.Int32, "Fee control's level: 0 normal ... 4 overdraft"),
            ("Balance", V.Double, "Energy wallet balance, CNY"),
            ("BalanceFen", V.Int64, "Energy wallet balance, fen"),
        ],
    ),
    "CommunicationAlarmType": (
        ua.ObjectIds.AlarmConditionType,
        [
            ("MeterId", V.String, "The meter"),
            ("LinkId", V.String, "Its link"),
            ("Error", V.String, "Why the last poll failed"),
            ("OfflineSeconds", V.Double, "How long it was offline (on restore)"),
        ],
    ),
    "SupplyChangedEventType": (
        ua.ObjectIds.BaseEventType,
        [
            ("MeterId", V.String, "The meter whose relay or valve switched"),
            ("AccountId", V.String, "Its account, if any"),
            ("Action", V.String, "trip (supply cut) or close (supply restored)"),
            ("SupplyOn", V.Boolean, "Supply state after the change"),
            ("Reason", V.String, "Why (low balance, operator request, top-up...)"),
            ("Actor", V.String, "Who: a user, or the prepayment engine"),
            ("Confirmed", V.Boolean, "True once read back from the device"),
        ],
    ),
    "SupplyMismatchAlarmType": (
        ua.ObjectIds.AlarmConditionType,
        [
            ("MeterId", V.String, "The meter that reads another supply state than decided"),
            ("AccountId", V.String, "Its account, if any"),
            ("DesiredOn", V.Boolean, "The supply state the platform decided"),
            ("ObservedOn", V.Boolean, "What the meter's Good readings show"),
            ("Count", V.Int32, "Re-assertions the meter ever needed"),
            ("Consecutive", V.Int32, "Re-assertions since it last obeyed"),
            ("CommandId", V.Int64, "The command sent again (0: held by the policy gate)"),
            ("Detail", V.String, "What happened and when the next re-assertion may follow"),
        ],
    ),
    "BillingAlarmType": (
        ua.ObjectIds.AlarmConditionType,
        [
            ("MeterId", V.String, "The meter whose consumption is not billed"),
            ("AccountId", V.String, "Its account"),
            ("Reason", V.String, "Why (no tariff prices it, the tariff does not fit...)"),
        ],
    ),
    "DeliveryFailedAlarmType": (
        ua.ObjectIds.AlarmConditionType,
        [
            ("MeterId", V.String, "The LOCAL meter"),
            ("AccountId", V.String, "Its account"),
            ("CommandId", V.Int64, "The FAILED RECHARGE or REFUND"),
            ("Command", V.String, "RECHARGE or REFUND"),
            ("Error", V.String, "Why it failed, or how an operator resolved it"),
        ],
    ),
    "PaymentConflictAlarmType": (
        ua.ObjectIds.AlarmConditionType,
        [
            ("OutTradeNo", V.String, "The payment order (ours, as sent to the provider)"),
            ("Channel", V.String, "The provider: wechat, alipay..."),
            ("AccountId", V.String, "The account the order was for"),
            ("AmountFen", V.Int64, "The order's amount, fen"),
            ("Amount", V.Double, "The order's amount, CNY"),
            ("Reason", V.String, "What did not match (amount, merchant, app...), nothing credited"),
            ("Actor", V.String, "Who brought it: web:<channel>, payments:service, a user"),
        ],
    ),
    "ImplausibleReadingEventType": (
        ua.ObjectIds.BaseEventType,
        [
            ("MeterId", V.String, "The meter that reported it"),
            ("LinkId", V.String, "Its link"),
            ("Point", V.String, "The implausible point (voltage, energy_total...)"),
            ("Value", V.Double, "What was read"),
            ("Limit", V.String, "What it broke: a range, legal values, a rate of rise"),
            ("Source", V.String, "sample (the reading was flagged) or billing (refused)"),
        ],
    ),
    "PaymentDiscrepancyEventType": (
        ua.ObjectIds.SystemEventType,
        [
            ("Channel", V.String, "The payment provider (wechat, alipay...)"),
            (
                "Kind",
                V.String,
                "paid_not_credited, credited_not_paid, amount_mismatch, transaction_mismatch, "
                "unknown_order, refund_abnormal, refund_mismatch, bill_failed",
            ),
            ("OutTradeNo", V.String, "Our order number"),
            ("AmountFen", V.Int64, "The amount concerned, in fen"),
            ("Day", V.String, "The trade bill's day (reconciliation findings)"),
            ("Detail", V.String, "What differs and what was done"),
        ],
    ),
    "HistorianDataDroppedEventType": (
        ua.ObjectIds.SystemEventType,
        [
            ("Lines", V.Int64, "Lines (points in time) thrown away"),
            ("Points", V.Int64, "Point values thrown away"),
            ("Policy", V.String, "The drop policy that applied"),
            ("Reason", V.String, "Why"),
            ("FirstTime", V.DateTime, "Earliest data time dropped"),
            ("LastTime", V.DateTime, "Latest data time dropped"),
        ],
    ),
    "LinkOwnerChangedEventType": (
        ua.ObjectIds.SystemEventType,
        [
            ("LinkId", V.String, "The link (gateway, bus) whose lease changed hands"),
            ("Owner", V.String, "The instance that owns it now; empty: this one gave it up"),
            ("Epoch", V.Int64, "The lease epoch (fencing token), grows with every owner"),
            ("Instance", V.String, "The instance reporting it (this server's)"),
            ("Detail", V.String, "Why it was given up"),
        ],
    ),
    "OpenPrepayAuditEventType": (
        ua.ObjectIds.AuditUpdateMethodEventType,
        [
            ("Operation", V.String, "The method (TopUp, Disconnect...) or operation"),
            ("Target", V.String, "The account or meter it was called on"),
            ("Result", V.String, "What happened, or why it was refused"),
        ],
    ),
}

SEVERITY_LOW_BALANCE = {1: 400, 2: 600, 3: 800}
SEVERITY_COMM = 700
#: A meter disobeying the supply decision (possible tamper), an unbilled meter, money that
#: did not reach a LOCAL meter.
SEVERITY_SUPPLY_MISMATCH = 800
SEVERITY_BILLING = 700
SEVERITY_DELIVERY = 700
#: Money paid at a provider that does not match its order: a person must look.
SEVERITY_PAYMENT_CONFLICT = 800
#: A meter reported a value it cannot hold (core ImplausibleReading): a possible tamper.
SEVERITY_IMPLAUSIBLE = 600
#: Money at a payment provider and here disagree (core PaymentDiscrepancy).
SEVERITY_PAYMENT = 700


@dataclass(frozen=True, slots=True)
class Emission:
    type_name: str
    source: ua.NodeId
    source_name: str
    message: str
    severity: int
    fields: Mapping[str, Any]
    time: datetime | None = None
    #: For conditions: (condition id, active).
    condition: tuple[ua.NodeId, bool] | None = None
    condition_name: str = ""
    #: True for the event of an acknowledgement (no transition of ActiveState).
    acknowledgement: bool = False


@dataclass(slots=True)
class ConditionState:
    """What the server knows of one condition (the loop's; lost on restart)."""

    active: bool = False
    acked: bool = True
    #: EventId of the condition's latest event: the one Acknowledge must name.
    event_id: bytes = b""
    #: EventIds since it last became active (a repeated Acknowledge names one of them).
    activation_ids: deque[bytes] = dataclasses.field(default_factory=lambda: deque(maxlen=64))
    #: The latest transition (re-emitted with the acknowledgement).
    last: Emission | None = None
    active_since: datetime | None = None
    acked_at: datetime | None = None
    comment: str = ""
    user: str = ""


class ConditionMethodService(MethodService):
    """asyncua's method service, plus methods called on conditions (ObjectId = a
    ConditionId that is not a node): those go to their callback, which answers for an
    unknown condition itself (asyncua would answer BadNodeIdInvalid)."""

    def __init__(self, aspace: Any) -> None:
        super().__init__(aspace)
        self.condition_methods: dict[ua.NodeId, Callable[..., Awaitable[Any]]] = {}

    async def _call(self, method: ua.CallMethodRequest) -> ua.CallMethodResult:
        callback = self.condition_methods.get(method.MethodId)
        if callback is None:
            return await super()._call(method)
        inputs = list(method.InputArguments or [])
        try:
            result = await callback(method.ObjectId, *inputs)
        except Exception:
            log.exception("condition method %s failed", method.MethodId)
            result = ua.StatusCode(S.BadUnexpectedError)
        if isinstance(result, ua.CallMethodResult):
            res = result
        else:
            res = ua.CallMethodResult()
            if isinstance(result, ua.StatusCode):
                res.StatusCode = result
            elif result is not None:
                res.OutputArguments = result
        while len(res.InputArgumentResults) < len(inputs):
            res.InputArgumentResults.append(ua.StatusCode())
        return res


class EventEmitter:
    def __init__(self, server: Server, writer: NodeWriter, types_ns: int) -> None:
        self.server = server
        self.writer = writer
        self.t = types_ns
        self.type_ids: dict[str, ua.NodeId] = {}
        self._templates: dict[str, Any] = {}
        self._queue: deque[Emission] = deque()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        #: condition id -> active, to emit transitions only (posting side, any thread)
        self.active: dict[ua.NodeId, bool] = {}
        #: condition id -> state as delivered (the loop's: acknowledgements)
        self.conditions: dict[ua.NodeId, ConditionState] = {}
        self.emitted = 0
        self.server_id = ""

    async def create_types(self) -> None:
        isession = self.server.iserver.isession
        for name, (base, fields) in EVENT_TYPES.items():
            base_node = Node(isession, ua.NodeId(base))
            tnode = await base_node.add_object_type(
                ua.NodeId(name, self.t), ua.QualifiedName(name, self.t)
            )
            for field, vtype, description in fields:
                pid = ua.NodeId(f"{name}/{field}", self.t)
                self.writer.property(
                    pid,
                    ua.QualifiedName(field, self.t),
                    tnode.nodeid,
                    ua.Variant(None, V.Null),
                    ua.NodeId(int(vtype)),
                )
                self.writer.aspace[pid].attributes[ua.AttributeIds.Description] = _text(description)
                self.writer.mandatory(pid)
            self.type_ids[name] = tnode.nodeid
            template = await ua_events.get_event_obj_from_type_node(tnode)
            _fix_data_types(template)
            for field, vtype, _ in fields:
                template.data_types[field] = vtype  # the declarations have null values
            if base == ua.ObjectIds.AlarmConditionType:
                template.add_property("NodeId", None, V.NodeId)
            self._templates[name] = template
        # Server advertises what it generates (clients browse GeneratesEvent).
        for tid in self.type_ids.values():
            self.writer.reference(
                SERVER, tid, ua.NodeId(ua.ObjectIds.GeneratesEvent), inverse=False
            )

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        if self._queue:
            self._wake.set()  # conditions found active while the address space was built
        self._task = asyncio.create_task(self._run(), name="opcua-events")

    async def stop(self) -> None:
        if self._task is not None:
            await self.drain()
        await stop_task(self._task)
        self._task = None

    async def drain(self) -> None:
        """Deliver what is queued (at stop, and in tests before asserting)."""
        while self._queue:
            await self.deliver(self._queue.popleft())

    # -- posting (any thread) ------------------------------------------------------------
    def post(self, emission: Emission) -> None:
        self._queue.append(emission)
        if self._loop is None or self._wake is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            self._loop.call_soon_threadsafe(self._wake.set)

    def condition(
        self,
        type_name: str,
        condition_id: ua.NodeId,
        condition_name: str,
        active: bool,
        source: ua.NodeId,
        source_name: str,
        message: str,
        severity: int,
        fields: Mapping[str, Any],
        at: datetime | None = None,
        *,
        force: bool = False,
    ) -> bool:
        """Post a condition transition; False (nothing posted) when it is not a change."""
        if not force and self.active.get(condition_id, False) == active:
            return False
        self.active[condition_id] = active
        self.post(
            Emission(
                type_name,
                source,
                source_name,
                message,
                severity,
                fields,
                at,
                (condition_id, active),
                condition_name,
            )
        )
        return True

    # -- delivering (the loop) ---------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                emission = self._queue.popleft()
                try:
                    await self.deliver(emission)
                except Exception:
                    log.exception("emitting %s failed", emission.type_name)

    async def deliver(self, e: Emission) -> None:
        if e.acknowledgement:
            e = self._acknowledgement(e)
        template = self._templates[e.type_name]
        ev = copy.copy(template)
        now = datetime.now(UTC)
        at = e.time or now
        ev.EventId = uuid.uuid4().bytes
        ev.EventType = self.type_ids[e.type_name]
        ev.Time = at
        ev.ReceiveTime = now
        offset = time.localtime(at.timestamp()).tm_gmtoff // 60
        ev.LocalTime = ua.TimeZoneDataType(Offset=offset, DaylightSavingInOffset=False)
        ev.Message = ua.LocalizedText(e.message)
        ev.Severity = e.severity
        ev.SourceNode = e.source
        ev.SourceName = e.source_name
        for key, value in e.fields.items():
            setattr(ev, key, value)
        if e.condition is not None:
            cid, active = e.condition
            state = self.conditions.get(cid)
            if state is None:
                state = self.conditions[cid] = ConditionState()
            if not e.acknowledgement:
                if active and not state.active:
                    # Becomes active: to be acknowledged again.
                    state.acked = False
                    state.acked_at = None
                    state.comment = ""
                    state.user = ""
                    state.activation_ids.clear()
                if active != state.active or state.active_since is None:
                    state.active_since = at
                state.active = active
                state.last = e
            state.event_id = ev.EventId
            state.activation_ids.append(ev.EventId)
            ev.NodeId = cid
            ev.ConditionName = e.condition_name
            ev.ConditionClassId = ua.NodeId(ua.ObjectIds.BaseConditionClassType)
            ev.ConditionClassName = ua.LocalizedText("BaseConditionClassType")
            ev.BranchId = ua.NodeId()
            # Part 9: an alarm is retained while active or not yet acknowledged.
            ev.Retain = state.active or not state.acked
            ev.EnabledState = ua.LocalizedText("Enabled")
            setattr(ev, "EnabledState/Id", True)
            ev.ActiveState = ua.LocalizedText("Active" if state.active else "Inactive")
            setattr(ev, "ActiveState/Id", state.active)
            setattr(ev, "ActiveState/TransitionTime", state.active_since or at)
            ev.AckedState = ua.LocalizedText("Acknowledged" if state.acked else "Unacknowledged")
            setattr(ev, "AckedState/Id", state.acked)
            if state.acked_at is not None:
                setattr(ev, "AckedState/TransitionTime", state.acked_at)
            ev.Comment = ua.LocalizedText(state.comment)
            if state.acked_at is not None and state.comment:
                setattr(ev, "Comment/SourceTimestamp", state.acked_at)
            ev.ClientUserId = state.user
            ev.ConfirmedState = ua.LocalizedText("Confirmed")
            setattr(ev, "ConfirmedState/Id", True)
            ev.Quality = ua.StatusCode(ua.StatusCodes.Good)
            ev.LastSeverity = e.severity
        subscriptions = self.server.iserver.subscription_service
        if e.source != SERVER and e.source in self.writer.aspace:
            local = copy.copy(ev)
            local.emitting_node = e.source
            await subscriptions.trigger_event(local)
        ev.emitting_node = SERVER
        await subscriptions.trigger_event(ev)
        self.emitted += 1

    # -- acknowledging (the loop) ---------------------------------------------------------
    def acknowledge(
        self, condition_id: ua.NodeId, event_id: bytes, comment: str, user: str
    ) -> tuple[int, ConditionState | None]:
        """Acknowledge a condition (on the loop): the status, and the condition's state.

        Good: the state is changed now and the event that says so is queued."""
        state = self.conditions.get(condition_id)
        if state is None or state.last is None:
            return S.BadNodeIdUnknown, None
        if state.acked:
            if event_id in state.activation_ids:
                return S.BadConditionBranchAlreadyAcked, state
            return S.BadEventIdUnknown, state
        if event_id != state.event_id:
            return S.BadEventIdUnknown, state
        state.acked = True
        state.acked_at = datetime.now(UTC)
        state.comment = comment
        state.user = user
        self.post(replace(state.last, time=None, acknowledgement=True))
        return S.Good, state

    def _acknowledgement(self, e: Emission) -> Emission:
        """The event of an acknowledgement: the condition's latest transition as it is
        when delivered (a transition may have been delivered since the acknowledgement)."""
        assert e.condition is not None
        state = self.conditions.get(e.condition[0])
        last = state.last if state is not None and state.last is not None else e
        user, comment = (state.user, state.comment) if state is not None else ("", "")
        note = f"acknowledged by {user}" + (f": {comment}" if comment else "")
        return replace(last, message=f"{last.message} ({note})", time=None, acknowledgement=True)


#: Data types asyncua leaves as NodeIds in event templates (subtypes of built-in types).
_SUBTYPES = {
    ua.ObjectIds.UtcTime: V.DateTime,
    ua.ObjectIds.Duration: V.Double,
}


def _fix_data_types(template: Any) -> None:
    """asyncua records subtypes of built-in types (UtcTime, Duration) as NodeIds, which
    break encoding as soon as such a field has a value: use the built-in variant type."""
    for name, dtype in list(template.data_types.items()):
        if isinstance(dtype, ua.NodeId):
            template.data_types[name] = _SUBTYPES.get(dtype.Identifier, V.ExtensionObject)


def _text(description: str) -> Any:
    from asyncua.server.address_space import AttributeValue

    return AttributeValue(ua.DataValue(ua.Variant(ua.LocalizedText(description), V.LocalizedText)))
