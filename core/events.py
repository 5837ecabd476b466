"""The core's event stream: samples and events, fanned out to whoever listens.

Producers (the link arbiter, the prepayment engine) call `EventBus.publish(item)`; consumers
(OPC UA publisher, historian, metering) subscribe to a message type. Listeners are called
synchronously on the publisher's task and must be cheap: they store the item or put it on
their own queue. That keeps the poll path from ever waiting on a subscriber; a listener that
raises is logged and kept, so one faulty consumer cannot stop polling.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

log = logging.getLogger("openprepay.events")

T = TypeVar("T")
Listener = Callable[[Any], None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: dict[type, list[Listener]] = {}
        self._dispatch: dict[type, tuple[Listener, ...]] = {}

    def subscribe(self, kind: type[T], listener: Callable[[T], None]) -> Callable[[], None]:
        """Call `listener(item)` for every published item of `kind` (or a subclass).

        Returns a function that unsubscribes.
        """
        self._listeners.setdefault(kind, []).append(listener)
        self._dispatch.clear()

        def unsubscribe() -> None:
            self._listeners[kind].remove(listener)
            self._dispatch.clear()

        return unsubscribe

    def publish(self, item: object) -> None:
        kind = type(item)
        listeners = self._dispatch.get(kind)
        if listeners is None:
            listeners = tuple(fn for base in kind.__mro__ for fn in self._listeners.get(base, ()))
            self._dispatch[kind] = listeners
        for listener in listeners:
            try:
                listener(item)
            except Exception:
                log.exception("listener %r failed on %s", listener, kind.__name__)


def publish_on_loop(
    loop: asyncio.AbstractEventLoop | None, publish: Listener, item: object
) -> None:
    """`publish(item)` on `loop`'s thread, whatever thread calls: listeners such as the OPC
    UA server expect the loop's thread, while service calls and batch jobs run in worker
    threads. Directly when there is no open loop (the CLI) or the caller runs on it."""
    if loop is not None and not loop.is_closed():
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        if current is not loop:
            loop.call_soon_threadsafe(publish, item)
            return
    publish(item)


#: How far the service's wall clock runs ahead of the machine's (see `set_wall_clock`).
_wall_offset = timedelta(0)


def utcnow() -> datetime:
    """The service's wall clock: the machine's, unless `set_wall_clock` moved it."""
    if _wall_offset:
        return datetime.now(UTC) + _wall_offset
    return datetime.now(UTC)


def set_wall_clock(at: datetime | None) -> None:
    """Run the whole process's wall clock from `at` on (None: the machine's clock again).

    For rehearsing a freeze instant or a month-end with simulated meters, and for tests
    that cross one: every sample, reading, posting and schedule
    stamped with `utcnow()` follows; timers (the event loop's monotonic clock) do not, so
    polling keeps its real pace. Never for a service with real meters and real money."""
    global _wall_offset
    _wall_offset = timedelta(0) if at is None else at - datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened, worth an alarm, an audit line or an OPC UA event."""

    at: datetime = field(default_factory=utcnow, kw_only=True)


@dataclass(frozen=True, slots=True)
class CommunicationLost(Event):
    meter_id: str
    link_id: str
    error: str


@dataclass(frozen=True, slots=True)
class CommunicationRestored(Event):
    meter_id: str
    link_id: str
    offline_s: float


@dataclass(frozen=True, slots=True)
class LinkStateChanged(Event):
    link_id: str
    connected: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LinkOwnerChanged(Event):
    """With [cluster]: this instance took a link's lease (`owner` is its id) or gave it up
    (`owner` is None: expired, lost or released); `epoch` is the lease's fencing token."""

    link_id: str
    owner: str | None
    epoch: int
    instance: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DeviceQuarantined(Event):
    meter_id: str
    link_id: str
    failures: int


@dataclass(frozen=True, slots=True)
class ImplausibleReading(Event):
    """A device reported a value it cannot physically hold: outside its profile's range, an
    illegal state value, a cumulative register that ran backwards or rose faster than the
    meter's rating allows (core/field/plausibility.py). Published once per episode and point, by
    the link arbiter when the sample is made (the sample is then Uncertain or Bad) or by
    metering when billing refuses a reading against its saved baseline. Such a reading is
    never billed and never causes a trip.

    `value` is what was read, `limit` what it broke ("at most 300 V", "at most 0.41 kWh
    in 90 s: 60 A × 220 V × 1 phase"), `source` "sample" or "billing"."""

    meter_id: str
    link_id: str
    point: str
    value: float | int | bool
    limit: str
    source: str = "sample"


@dataclass(frozen=True, slots=True)
class CommandExecuted(Event):
    """A device command was written and read back (confirmed or not)."""

    meter_id: str
    link_id: str
    command: str
    confirmed: bool
    detail: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HistorianDataDropped(Event):
    """Time-series data was thrown away by the historian's drop policy (spool full).

    Never silent: counted, published as points of `openprepay.historian` and raised as
    this event. `first`/`last` bound the data times of what was dropped.
    """

    lines: int
    points: int
    policy: str
    reason: str
    first: datetime | None = None
    last: datetime | None = None


@dataclass(frozen=True, slots=True)
class HistorianBatchQuarantined(Event):
    """The time-series server rejected data as malformed (HTTP 4xx); the rejected lines were
    set aside in the historian's quarantine (`openprepay historian status`, `replay`)."""

    lines: int
    status: int
    error: str


# -- prepayment ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlarmLevelChanged(Event):
    """Fee control moved an account to another state (`core.prepay.feecontrol.FeeState` values:
    NORMAL, ALARM1, ALARM2, OVER_ZERO, OVERDRAFT), after a deduction, top-up, refund or
    threshold change. `balance_fen` is the energy wallet that caused it."""

    account_id: str
    previous: str
    level: str
    balance_fen: int


@dataclass(frozen=True, slots=True)
class SupplyChanged(Event):
    """A relay or valve was switched and read back: `on` is the supply state now.

    `reason` says why (fee control with the balance, an operator's reason), `actor` who
    asked (`fee-control`, `cli:alice`, `opcua:operator1`); `confirmed` is False when the
    device could not be read back as expected (the command keeps being retried)."""

    meter_id: str
    account_id: str | None
    on: bool
    reason: str
    actor: str
    command_id: int
    confirmed: bool = True


@dataclass(frozen=True, slots=True)
class AuditRecord(Event):
    """One operator or service action (top-up, refund, disconnect, threshold change...):
    who, what, on which account or meter, the outcome and whether it was carried out."""

    actor: str
    action: str
    target: str
    detail: str
    ok: bool


@dataclass(frozen=True, slots=True)
class CommandFailed(Event):
    """A durable meter command ended FAILED: refused by the device or out of attempts."""

    command_id: int
    meter_id: str
    account_id: str | None
    command: str
    attempts: int
    error: str


@dataclass(frozen=True, slots=True)
class ReconciliationBreak(Event):
    """A LOCAL meter disagrees with the platform's mirror beyond the tolerance
    (domain.md §5.6): balance, purchase count or both. The meter's balance wins for fee
    control; an operator should look."""

    meter_id: str
    account_id: str
    meter_balance_fen: int
    platform_balance_fen: int
    meter_buy_count: int
    platform_buy_count: int
    detail: str


@dataclass(frozen=True, slots=True)
class PaymentDiscrepancy(Event):
    """Money at a payment provider and here disagree (issue 11): the daily trade-bill
    reconciliation found an order paid there and not credited here (`kind`
    "paid_not_credited", credited by the reconciliation when it could be), credited here
    and not paid there ("credited_not_paid"), another amount ("amount_mismatch"), a trade
    unknown here ("unknown_order"), or a refund the provider could not pay back
    ("refund_abnormal"). An operator should look at every one but the credited ones."""

    channel: str
    kind: str
    out_trade_no: str
    amount_fen: int
    detail: str
    #: The bill's day (ISO date) for reconciliation findings, "" otherwise.
    day: str = ""


@dataclass(frozen=True, slots=True)
class SupplyMismatch(Event):
    """A meter's Good readings disagree with the supply state the platform decided (possible
    tamper: a bypass, a manual reset, a power cycle or a swapped meter), for longer than the
    grace (`[prepay.engine] supply_grace_s`). `active` is True while it lasts — each time the
    command is re-asserted (`command_id`; 0 when the gate held it back) — and False once the
    meter obeys again. `count` is every re-assertion the meter ever needed, `consecutive`
    those since it last obeyed; the next one waits until `next_at` (exponential back-off)."""

    meter_id: str
    account_id: str | None
    desired_on: bool
    observed_on: bool
    active: bool
    count: int
    consecutive: int
    command_id: int
    next_at: datetime | None
    detail: str


@dataclass(frozen=True, slots=True)
class BillingAlarm(Event):
    """A meter of an open account is not billed (`active` True, with why: no tariff prices
    it, its tariff does not fit its registers, the ledger refused its usage), or is billed
    again (`active` False). Recorded on the meter (`prepay_meter.billing_problem`)."""

    meter_id: str
    account_id: str | None
    active: bool
    reason: str


@dataclass(frozen=True, slots=True)
class CommandResolved(Event):
    """An operator dealt with a FAILED command: retried it (`how` "retry", the new command
    in `new_command_id`) or refunded the top-up it should have delivered (`how` "refund").
    Published by the running service when it finds the resolution in the database, whichever
    process (CLI, OPC UA) recorded it."""

    command_id: int
    meter_id: str
    account_id: str | None
    command: str
    how: str
    new_command_id: int | None
    actor: str
    detail: str


@dataclass(frozen=True, slots=True)
class NotificationFailed(Event):
    """A notice could not be delivered on its channel after every retry."""

    notification_id: int
    account_id: str | None
    channel: str
    recipient: str
    error: str


# -- payments -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentConflict(Event):
    """An online payment order went to CONFLICT (core/operations/payments.py): a provider's
    notice did not match the order (amount, currency, merchant id, app id, transaction), a
    payment arrived for an order closed here, or the ledger refused the credit. Nothing was
    credited: a person must look at the order (`openprepay payments show`)."""

    out_trade_no: str
    channel: str
    account_id: str
    amount_fen: int
    reason: str
    actor: str


# -- billing ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApportionmentAlert(Event):
    """A common-area pool could not be allocated for a period (core/billing): `state`
    FAULT (negative loss — main < Σ sub + public: a meter fault, nothing allocated) or HELD
    (loss above the cap, or stale readings: waits for an operator's approval)."""

    pool_id: str
    period: str
    state: str
    reason: str


@dataclass(frozen=True, slots=True)
class MonthEndHeld(Event):
    """The month-end of `period` did not run: its freeze readings are missing or stale
    (`reason` names the meters). It runs at the next look once an operator has recorded the
    readings; or an operator runs it with an override reason (core/billing/closing.py)."""

    period: str
    reason: str


# -- events as records (the outbox carries them between processes) -------------------------


def event_record(event: Event) -> dict[str, Any]:
    """`event` as a JSON-able dict: its type name and its fields (times as ISO 8601)."""
    record: dict[str, Any] = {"type": type(event).__name__}
    for f in fields(event):
        value = getattr(event, f.name)
        record[f.name] = value.isoformat() if isinstance(value, datetime) else value
    return record


def event_from_record(record: dict[str, Any]) -> Event:
    """The event `event_record` wrote; `KeyError` for a type this process does not know
    (a newer instance's), `TypeError`/`ValueError` for a damaged record."""
    cls = _EVENT_TYPES[record["type"]]
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name not in record:
            continue
        value = record[f.name]
        if value is not None and datetime in (*typing.get_args(hints[f.name]), hints[f.name]):
            value = datetime.fromisoformat(value)
        values[f.name] = value
    return cls(**values)


#: Every event type of this module by name (read from the module: with `slots=True`
#: `__subclasses__()` can still list the classes dataclass replaced).
_EVENT_TYPES: dict[str, type[Event]] = {
    name: obj for name, obj in globals().items() if isinstance(obj, type) and issubclass(obj, Event)
}
