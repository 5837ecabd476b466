"""The core's event stream: samples and events, fanned out to whoever listens.

Producers (the link arbiter, the prepayment engine) call `EventBus.publish(item)`; consumers
(OPC UA publisher, historian, metering) subscribe to a message type. Listeners are called
synchronously on the publisher's task and must be cheap: they store the item or put it on
their own queue. That keeps the poll path from ever waiting on a subscriber; a listener that
raises is logged and kept, so one faulty consumer cannot stop polling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


def utcnow() -> datetime:
    return datetime.now(UTC)


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
class DeviceQuarantined(Event):
    meter_id: str
    link_id: str
    failures: int


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
