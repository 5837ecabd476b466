"""Online payments in the address space, an extension of the OPC UA service.

`OpenPrepay/Payments` (PaymentsType; also organised under the site's object) shows the
figures of `core.operations.Operations.payment_figures`:

- `Orders<State>` — payment orders in each state (Created, Paid, Credited, Closed,
  Refunded, Conflict) and `Conflicts` (orders in CONFLICT, waiting for a person);
- `CreditedToday`, `CreditedTodayFen`, `CreditedTodayAmount` — orders credited since
  site-local midnight, and per channel the same under `Payments/<channel>`
  (ChannelPaymentsType);
- `LastNotificationTime` — when a provider's callback was last stored;
- `LastReconciliationTime`, `LastReconciliationResult`, `LastReconciliationDifferences` —
  the latest trade-bill reconciliation.

A figure nothing has produced yet (no notification, no reconciliation) is
BadWaitingForInitialData. The figures are re-read shortly after every payment operation
(its audit record) and every `[opcua] account_refresh_s` (today rolls over at midnight).

A `PaymentConflict` becomes a PaymentConflictAlarmType condition (ConditionId
`Payment:<out_trade_no>/Conflict`, source the Payments object), active and unacknowledged:
an operator acknowledges it once the order is dealt with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from asyncua import Node, ua

from openprepay.core.events import AuditRecord, Event, PaymentConflict
from openprepay.core.payments.figures import PaymentFigures
from openprepay.core.payments.states import OrderState
from openprepay.core.tasks import stop_task

from .access import SessionUser
from .bindings import NULL, WAITING
from .events import SEVERITY_PAYMENT_CONFLICT
from .extension import ExtensionHost
from .methods import in_thread
from .nodes import ORGANIZES
from .space import SUBSCRIBE_TO_EVENTS, Space, datatype_of

log = logging.getLogger("openprepay.opcua")

V = ua.VariantType
S = ua.StatusCodes
VALUE = ua.AttributeIds.Value
PAYMENTS_TYPE = "PaymentsType"
CHANNEL_TYPE = "ChannelPaymentsType"
PAYMENTS = "Payments"
#: The shortest pause between two re-reads (a burst of payments is one re-read).
MIN_REFRESH_S = 0.5


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    vtype: ua.VariantType
    description: str
    read: Callable[[PaymentFigures], Any]


def _state(state: OrderState) -> Figure:
    title = state.value.capitalize()
    return Figure(
        f"Orders{title}",
        V.Int64,
        f"Payment orders in state {state.value}",
        lambda f: f.by_state.get(state.value, 0),
    )


def _reconciliation(attr: str) -> Callable[[PaymentFigures], Any]:
    return lambda f: getattr(f.reconciliation, attr) if f.reconciliation is not None else None


FIGURES: tuple[Figure, ...] = (
    *(_state(s) for s in OrderState),
    Figure("Conflicts", V.Int64, "Orders in CONFLICT: a person must look at them "
           "(each a PaymentConflictAlarm)", lambda f: f.conflicts),
    Figure("CreditedToday", V.Int64, "Orders credited since site-local midnight",
           lambda f: f.credited_today),
    Figure("CreditedTodayFen", V.Int64, "Money credited since site-local midnight, fen",
           lambda f: f.credited_today_fen),
    Figure("CreditedTodayAmount", V.Double, "Money credited since site-local midnight, CNY",
           lambda f: f.credited_today_fen / 100),
    Figure("LastNotificationTime", V.DateTime, "When a provider's callback was last stored "
           "(BadWaitingForInitialData: none yet)", lambda f: f.last_notification_at),
    Figure("LastReconciliationTime", V.DateTime, "When the latest trade-bill reconciliation "
           "ran (BadWaitingForInitialData: none yet)", _reconciliation("at")),
    Figure("LastReconciliationResult", V.String, "Its outcome", _reconciliation("result")),
    Figure("LastReconciliationDifferences", V.Int32, "Differences it found",
           _reconciliation("differences")),
)  # fmt: skip


def _channel(attr: str, scale: float | None = None) -> Callable[[Any], Any]:
    if scale is None:
        return lambda c: getattr(c, attr)
    return lambda c: getattr(c, attr) / scale


CHANNEL_FIGURES: tuple[Figure, ...] = (
    Figure("CreditedToday", V.Int64, "Orders of this channel credited since site-local "
           "midnight", _channel("credited_today")),
    Figure("CreditedTodayFen", V.Int64, "Money of this channel credited since site-local "
           "midnight, fen", _channel("credited_today_fen")),
    Figure("CreditedTodayAmount", V.Double, "Money of this channel credited since "
           "site-local midnight, CNY", _channel("credited_today_fen", 100)),
)  # fmt: skip


def declare_payment_types(space: Space) -> None:
    """PaymentsType and ChannelPaymentsType with their variables (mandatory)."""
    w = space.writer
    for type_name, figures in ((PAYMENTS_TYPE, FIGURES), (CHANNEL_TYPE, CHANNEL_FIGURES)):
        for figure in figures:
            nid = space.tid(f"{type_name}/{figure.name}")
            w.variable(
                nid,
                space.tq(figure.name),
                space.tid(type_name),
                NULL,
                datatype_of(figure.vtype),
                description=figure.description,
            )
            w.mandatory(nid)


class PaymentsView:
    """The payments part of the server (an `extension.ServerExtension`)."""

    def __init__(self) -> None:
        self.ops: Any = None
        self.node: ua.NodeId | None = None
        #: Figure name → its variable; channel → (figure name → variable).
        self.variables: dict[str, ua.NodeId] = {}
        self.channels: dict[str, dict[str, ua.NodeId]] = {}
        #: What each variable shows (written only when it changes).
        self._shown: dict[ua.NodeId, tuple[Any, int]] = {}
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.refreshes = 0
        self.figures: PaymentFigures | None = None

    async def declare(self, host: ExtensionHost) -> None:
        space = host.space
        assert space is not None and host.server is not None
        base = Node(host.server.iserver.isession, ua.NodeId(ua.ObjectIds.BaseObjectType))
        for name in (PAYMENTS_TYPE, CHANNEL_TYPE):
            node = await base.add_object_type(space.tid(name), space.tq(name))
            space.types[name] = node.nodeid
        declare_payment_types(space)

    async def build(self, host: ExtensionHost) -> None:
        """The Payments object (only with a database: the figures are read there)."""
        self.ops = getattr(host.runtime, "operations", None)
        space = host.space
        if self.ops is None or space is None:
            return
        w = space.writer
        site_node = space.iid(f"Site:{space.site.id}")
        node = w.object(
            space.iid(PAYMENTS),
            space.iq(PAYMENTS),
            space.iid("OpenPrepay"),
            space.types[PAYMENTS_TYPE],
            description="Online payment orders: counts, money credited today, conflicts, "
            "the last notification and reconciliation",
            event_notifier=SUBSCRIBE_TO_EVENTS,
        )
        self.node = node.nodeid
        if w.exists(site_node):
            w.reference(site_node, self.node, ORGANIZES)
        self.variables = self._variables(space, PAYMENTS, self.node, FIGURES)
        for channel in sorted(getattr(self.ops, "payment_providers", None) or ()):
            self._add_channel(space, channel)

    def _variables(
        self, space: Space, base: str, parent: ua.NodeId, figures: tuple[Figure, ...]
    ) -> dict[str, ua.NodeId]:
        out = {}
        for figure in figures:
            nid = space.iid(f"{base}/{figure.name}")
            space.writer.variable(
                nid,
                space.iq(figure.name),
                parent,
                NULL,
                datatype_of(figure.vtype),
                description=figure.description,
                status=WAITING,
            )
            out[figure.name] = nid
        return out

    def _add_channel(self, space: Space, channel: str) -> None:
        if channel in self.channels or self.node is None:
            return
        base = f"{PAYMENTS}/{channel}"
        node = space.writer.object(
            space.iid(base),
            space.iq(channel),
            self.node,
            space.types[CHANNEL_TYPE],
            description=f"Payments through {channel}",
        )
        self.channels[channel] = self._variables(space, base, node.nodeid, CHANNEL_FIGURES)

    async def start(self, host: ExtensionHost) -> None:
        if self.node is None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._refresh_forever(host), name="opcua-payments")

    async def stop(self, host: ExtensionHost) -> None:
        await stop_task(self._task)
        self._task = None

    # -- figures ----------------------------------------------------------------------------

    def touch(self) -> None:
        """Re-read the figures soon (any thread)."""
        if self._loop is None or self._wake is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:
            pass  # loop closed: stopping

    async def _refresh_forever(self, host: ExtensionHost) -> None:
        assert self._wake is not None
        period = host.config.account_refresh_s
        while True:
            self._wake.clear()
            try:
                await self.refresh(host)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("refreshing the OPC UA payment figures failed")
            await asyncio.sleep(MIN_REFRESH_S)
            try:
                await asyncio.wait_for(self._wake.wait(), period)
            except TimeoutError:
                pass

    async def refresh(self, host: ExtensionHost) -> PaymentFigures | None:
        """Read the figures and write what changed."""
        if self.ops is None or host.space is None:
            return None
        figures = await in_thread(self.ops.payment_figures)
        space = host.space
        write = space.server.iserver.aspace.write_attribute_value
        now = datetime.now(UTC)
        for figure in FIGURES:
            await self._write(write, self.variables[figure.name], figure, figure.read(figures), now)
        for channel, today in figures.channels.items():
            self._add_channel(space, channel)
            for figure in CHANNEL_FIGURES:
                nid = self.channels[channel][figure.name]
                await self._write(write, nid, figure, figure.read(today), now)
        self.figures = figures
        self.refreshes += 1
        return figures

    async def _write(
        self, write: Any, nid: ua.NodeId, figure: Figure, value: Any, now: datetime
    ) -> None:
        status = S.Good if value is not None else S.BadWaitingForInitialData
        if self._shown.get(nid) == (value, status):
            return
        self._shown[nid] = (value, status)
        variant = ua.Variant(value, figure.vtype) if value is not None else NULL
        await write(nid, VALUE, ua.DataValue(variant, ua.StatusCode(status), now, now))

    # -- events -----------------------------------------------------------------------------

    def on_event(self, host: ExtensionHost, event: Event) -> None:
        if isinstance(event, PaymentConflict):
            self._conflict(host, event)
            self.touch()
        elif isinstance(event, AuditRecord) and _about_payments(event):
            self.touch()

    def _conflict(self, host: ExtensionHost, event: PaymentConflict) -> None:
        space, emitter = host.space, host.events
        if space is None or emitter is None or self.node is None:
            return
        emitter.condition(
            "PaymentConflictAlarmType",
            ua.NodeId(f"Payment:{event.out_trade_no}/Conflict", space.i),
            "PaymentConflict",
            True,
            self.node,
            f"payment {event.out_trade_no}",
            f"payment {event.out_trade_no} ({event.channel}, account {event.account_id}, "
            f"{event.amount_fen / 100:.2f} CNY) in conflict, nothing credited: {event.reason}",
            SEVERITY_PAYMENT_CONFLICT,
            {
                "OutTradeNo": event.out_trade_no,
                "Channel": event.channel,
                "AccountId": event.account_id,
                "AmountFen": event.amount_fen,
                "Amount": event.amount_fen / 100,
                "Reason": event.reason,
                "Actor": event.actor,
            },
            event.at,
        )

    def refused(
        self, host: ExtensionHost, user: SessionUser | None, calls: list[ua.CallMethodRequest]
    ) -> None:
        pass


def _about_payments(record: AuditRecord) -> bool:
    return record.action.startswith("payment") or record.action in (
        "open_payment",
        "credit_payment",
        "close_payment",
    )
