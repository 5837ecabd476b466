"""OPC UA events: the types, and how they reach clients.

asyncua delivers an event only to monitored items on the node it is emitted on; BMS/SCADA
alarm clients subscribe on the Server object. Every event is therefore emitted on the
Server object with SourceNode/SourceName set to the meter or account it is about, and a
second time on that meter or account object (for clients that subscribe per object).

Alarms (low balance, communication loss) are conditions (AlarmConditionType subtypes, one
condition per account or meter, ConditionId `Account:<id>/LowBalance`,
`Meter:<id>/CommunicationAlarm`): while active they carry Retain = true and come back on
ConditionRefresh; the inactive transition carries Retain = false. They need no
acknowledgement (AckedState is true); Acknowledge/Confirm are not implemented.

Emitting never blocks the caller: `post()` may be called from any thread (bus listeners,
method callbacks in worker threads) and queues the event for the server's loop.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncua import Node, Server, ua
from asyncua.common import events as ua_events

from .nodes import NodeWriter
from .tasks import stop_task

log = logging.getLogger("openprepay.opcua")

SERVER = ua.NodeId(ua.ObjectIds.Server)
V = ua.VariantType

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
        #: condition id -> active, to emit transitions only
        self.active: dict[ua.NodeId, bool] = {}
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
            ev.NodeId = cid
            ev.ConditionName = e.condition_name
            ev.ConditionClassId = ua.NodeId(ua.ObjectIds.BaseConditionClassType)
            ev.ConditionClassName = ua.LocalizedText("BaseConditionClassType")
            ev.BranchId = ua.NodeId()
            ev.Retain = active
            ev.EnabledState = ua.LocalizedText("Enabled")
            setattr(ev, "EnabledState/Id", True)
            ev.ActiveState = ua.LocalizedText("Active" if active else "Inactive")
            setattr(ev, "ActiveState/Id", active)
            setattr(ev, "ActiveState/TransitionTime", at)
            ev.AckedState = ua.LocalizedText("Acknowledged")
            setattr(ev, "AckedState/Id", True)
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
