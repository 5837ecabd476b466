"""HistoryRead served from the historian (`runtime.history`), read-only.

asyncua's history manager calls `read_node_history` for every ReadRawModifiedDetails
request and packs the continuation point (a timestamp) itself. Nothing is stored here:
the historian already stores every sample; this backend only translates NodeIds to
(source, point) and the historian's values to DataValues with their quality.

Semantics (OPC UA Part 11 §6.4.3): start < end reads forward, oldest first; start > end
(or no start) reads backward, newest first; start and end are inclusive; at most
`NumValuesPerNode` values per call (0 = the server's page size), with a continuation point
when more remain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from asyncua import ua
from asyncua.server.history import HistoryStorageInterface

from openprepay.core.field.history import HistoryReader, HistoryValue
from openprepay.core.model import Quality

from .bindings import STATUS_OF_QUALITY, HistoryTarget

_TICK = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Backward reads scan forward pages of this size up to this many values.
_SCAN_PAGE = 5000
_SCAN_MAX = 200_000


def _unset(t: datetime | None) -> bool:
    return t is None or t.year <= 1601


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


class HistorianBackend(HistoryStorageInterface):
    def __init__(
        self,
        targets: Mapping[ua.NodeId, HistoryTarget],
        reader: Callable[[], HistoryReader | None],
        max_values: int = 10_000,
    ) -> None:
        super().__init__(max_values)
        self.targets = targets
        self.reader = reader
        self.reads = 0

    async def init(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def new_historized_node(self, node_id: ua.NodeId, period: Any, count: int = 0) -> None:
        return None

    async def save_node_value(self, node_id: ua.NodeId, datavalue: ua.DataValue) -> None:
        return None  # the historian stores samples; nothing to do

    async def new_historized_event(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def save_event(self, event: Any) -> None:
        return None

    async def read_event_history(self, *args: Any, **kwargs: Any) -> tuple[list[Any], None]:
        return [], None

    async def read_node_history(
        self, node_id: ua.NodeId, start: datetime | None, end: datetime | None, nb_values: int
    ) -> tuple[list[ua.DataValue], datetime | None]:
        target = self.targets.get(node_id)
        reader = self.reader()
        if target is None or reader is None:
            return [], None
        self.reads += 1
        limit = (
            min(nb_values, self.max_history_data_response_size)
            if nb_values > 0
            else (self.max_history_data_response_size)
        )
        if _unset(start) and _unset(end):
            return [], None
        if not _unset(start) and (_unset(end) or _utc(start) <= _utc(end)):  # type: ignore[arg-type]
            lo = _utc(start)  # type: ignore[arg-type]
            hi = _utc(end) if not _unset(end) else datetime.now(UTC) + timedelta(days=3650)  # type: ignore[arg-type]
            page = await reader.read_raw(target.source, target.point, lo, hi + _TICK, limit)
            return [self._datavalue(target, v) for v in page.values], page.continuation
        # Backward: newest first, from `start` (or `end` when there is no start) down.
        if _unset(start):
            hi, lo = _utc(end), _EPOCH  # type: ignore[arg-type]
        else:
            hi = _utc(start)  # type: ignore[arg-type]
            lo = _utc(end) if not _unset(end) else _EPOCH  # type: ignore[arg-type]
        newest: list[HistoryValue] = []
        cursor = lo
        scanned = 0
        while scanned < _SCAN_MAX:
            page = await reader.read_raw(
                target.source, target.point, cursor, hi + _TICK, _SCAN_PAGE
            )
            newest.extend(page.values)
            newest = newest[-(limit + 1) :]
            scanned += len(page.values)
            if page.continuation is None:
                break
            cursor = page.continuation
        newest.reverse()
        more = newest[limit].time if len(newest) > limit else None
        return [self._datavalue(target, v) for v in newest[:limit]], more

    @staticmethod
    def _datavalue(target: HistoryTarget, hv: HistoryValue) -> ua.DataValue:
        status = STATUS_OF_QUALITY.get(hv.quality, STATUS_OF_QUALITY[Quality.BAD_DEVICE_FAILURE])
        if hv.value is None or status.is_bad():
            variant = ua.Variant(None, ua.VariantType.Null)
        else:
            variant = ua.Variant(target.convert(hv.value), target.vtype)
        return ua.DataValue(variant, status, SourceTimestamp=hv.time, ServerTimestamp=hv.time)
