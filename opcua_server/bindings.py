"""Which variable shows which point: the bindings the publisher writes through, and what
HistoryRead and method calls look up by NodeId."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from asyncua import ua

from openprepay.core.model import Quality

STATUS_OF_QUALITY = {
    Quality.GOOD: ua.StatusCode(ua.StatusCodes.Good),
    Quality.UNCERTAIN: ua.StatusCode(ua.StatusCodes.Uncertain),
    Quality.BAD_COMM_FAILURE: ua.StatusCode(ua.StatusCodes.BadNoCommunication),
    Quality.BAD_DEVICE_FAILURE: ua.StatusCode(ua.StatusCodes.BadDeviceFailure),
    Quality.BAD_OUT_OF_SERVICE: ua.StatusCode(ua.StatusCodes.BadOutOfService),
}
WAITING = ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData)
NULL = ua.Variant(None, ua.VariantType.Null)


class SharedDataValue(ua.DataValue):
    """A DataValue nobody changes once it is built. asyncua deep-copies every value it
    hands to a monitored item (`MonitoredItemValues.set_current_datavalue`), in case the
    writer changes its object later; the publisher builds a fresh one per write and never
    touches it again (its Variant is frozen), so the copy can be the value itself — the
    copy was a fifth of the publisher's time with one client on every meter."""

    __slots__ = ()

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedDataValue:
        return self


_STATUS_OF_CODE: dict[int, ua.StatusCode] = {}


def status_of(code: int) -> ua.StatusCode:
    status = _STATUS_OF_CODE.get(code)
    if status is None:
        status = _STATUS_OF_CODE[code] = ua.StatusCode(code)
    return status


@dataclass(slots=True)
class PointBinding:
    """One variable fed by one point of one source; remembers what it shows.

    Several bindings may read the same point (an account's balance in fen is shown as
    `Balance` in CNY and as `BalanceFen`), and one binding may be fed by two sources (an
    account's sample and its snapshot): with `guard`, a value older than the one shown is
    not written.
    """

    nodeid: ua.NodeId
    vtype: ua.VariantType
    convert: Callable[[Any], Any]
    value: Any = None
    status: int = ua.StatusCodes.BadWaitingForInitialData
    #: Skip values older than `at` (only for variables fed by two sources: a meter clock
    #: set back must not freeze its variables).
    guard: bool = False
    at: datetime | None = None
    #: When the server stored the value shown (its ServerTimestamp).
    stored_at: datetime | None = None
    #: asyncua's storage of the variable's Value, once `DirectWriter` has looked it up.
    target: Any = None

    def data_value(self, *_: Any) -> ua.DataValue:
        """The DataValue of what the variable shows (`value`, `status`, `at`,
        `stored_at`); asyncua calls it as the variable's value callback when a client
        reads a variable nobody monitors (see `direct_write`)."""
        variant = NULL if self.value is None else ua.Variant(self.value, self.vtype)
        return SharedDataValue(variant, status_of(self.status), self.at, self.stored_at)

    #: The binding is the variable's value callback itself (see `direct_write`).
    __call__ = data_value


@dataclass(slots=True)
class SourceBinding:
    """The variables of one (source, model): a meter, its health, a link, an account."""

    source: str
    node: ua.NodeId
    #: (point name in the sample, the variable it feeds)
    points: list[tuple[str, PointBinding]] = field(default_factory=list)
    #: A meter's Online variable: true after a Good or Uncertain poll, false after a Bad one.
    online: PointBinding | None = None
    #: A steady Good value is written again with a newer sample's time once the time it
    #: shows is this old (meters only; None: only changes are written).
    refresh: timedelta | None = None


@dataclass(frozen=True, slots=True)
class HistoryTarget:
    source: str
    point: str
    vtype: ua.VariantType
    convert: Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Target:
    """What a method call is about: ("meter", id) or ("account", id)."""

    kind: str
    id: str
