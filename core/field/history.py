"""Reading history back: the contract between the historian and its readers.

The historian service provides a `HistoryReader` (the embedded store or InfluxDB through
InfluxQL) and registers it on the runtime as `runtime.history`. The OPC UA server serves
HistoryRead from it and reports read it; neither knows which backend answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from ..model import Quality, Value


@dataclass(frozen=True, slots=True)
class HistoryValue:
    time: datetime
    value: Value | None
    quality: Quality = Quality.GOOD


@dataclass(frozen=True, slots=True)
class HistoryPage:
    values: list[HistoryValue]
    #: Where the next page starts (exclusive), None when there is no more data.
    continuation: datetime | None = None


@runtime_checkable
class HistoryReader(Protocol):
    async def read_raw(
        self,
        source: str,
        point: str,
        start: datetime,
        end: datetime,
        limit: int,
    ) -> HistoryPage:
        """Values of `point` of `source` (a meter, link or account id) with start <= time
        < end, oldest first, at most `limit`; `continuation` is set when more remain."""
