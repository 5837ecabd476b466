"""Reading history back from InfluxDB with InfluxQL over HTTP `/query`.

InfluxQL over `/query` is the one read path that works on 1.x, on 2.x (its v1
compatibility API, through a DBRP mapping) and on 3.x; Flux does not exist on 1.x/3.x and
influxdb-client has no InfluxQL API, so this is a small HTTP client of its own.

`read_raw(source, point, start, end, limit)` asks for `limit + 1` rows, oldest first:
the extra row, when there is one, is where the next page starts (`continuation`, inclusive
for the next call, exclusive of this page). A series never holds two rows at one timestamp
(InfluxDB overwrites), so pages neither repeat nor skip a value.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from openprepay.core.field.history import HistoryPage, HistoryValue
from openprepay.core.model import Quality, ValueType

from .lineprotocol import from_ns, to_ns
from .schema import Catalogue, field_name, series_kind
from .writer import InfluxWriter


class InfluxQLError(RuntimeError):
    pass


def quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxQLClient:
    def __init__(self, writer: InfluxWriter) -> None:
        self.writer = writer
        self.target = writer.target

    def query(self, q: str) -> list[dict[str, Any]]:
        """Run one statement; its series (name, columns, values). Blocking."""
        params = {"db": self.target.read_db, "q": q, "epoch": "ns"}
        rp = self.target.read_rp
        if rp:
            params["rp"] = rp
        response = self.writer.request("GET", "/query", params)
        if response.status != 200:
            raise InfluxQLError(f"HTTP {response.status}: {response.data[:500]!r}")
        data = json.loads(response.data)
        results = data.get("results") or [{}]
        if "error" in data:
            raise InfluxQLError(data["error"])
        result = results[0]
        if "error" in result:
            raise InfluxQLError(result["error"])
        return result.get("series") or []


class InfluxHistoryReader:
    """`core.field.history.HistoryReader` over InfluxQL."""

    def __init__(self, client: InfluxQLClient, catalogue: Catalogue) -> None:
        self.client = client
        self.catalogue = catalogue
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="historian-query")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def statement(
        self, source: str, point: str, start: datetime, end: datetime, limit: int
    ) -> tuple[str, ValueType | None] | None:
        """The InfluxQL query for a page; None when no known model has this point."""
        resolved = self.catalogue.resolve(source, point)
        if resolved is None:
            return None
        model, spec = resolved
        kind = series_kind(model)
        name = field_name(point)
        q = (
            f'SELECT {quote_ident(name)}, "quality", {quote_ident("quality_" + point)}'
            f" FROM {quote_ident(kind.measurement)}"
            f" WHERE {quote_ident(kind.source_tag)} = {quote_string(source)}"
            f" AND time >= {to_ns(start)} AND time < {to_ns(end)}"
            f" ORDER BY time ASC LIMIT {int(limit) + 1}"
        )
        return q, spec.value_type

    def read_raw_sync(
        self, source: str, point: str, start: datetime, end: datetime, limit: int
    ) -> HistoryPage:
        statement = self.statement(source, point, start, end, limit)
        if statement is None:
            return HistoryPage([])
        q, vt = statement
        rows = [row for series in self.client.query(q) for row in series.get("values") or []]
        continuation = from_ns(rows[limit][0]) if len(rows) > limit else None
        values: list[HistoryValue] = []
        for t, value, quality, point_quality in rows[:limit]:
            q_value = min(max(int(quality or 0), int(point_quality or 0)), int(max(Quality)))
            if value is None and q_value <= Quality.UNCERTAIN:
                continue  # a line of this source that does not carry this point
            values.append(HistoryValue(from_ns(t), _typed(value, vt), Quality(q_value)))
        return HistoryPage(values, continuation)

    async def read_raw(
        self, source: str, point: str, start: datetime, end: datetime, limit: int
    ) -> HistoryPage:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self.read_raw_sync, source, point, start, end, limit
        )


def _typed(value: Any, vt: ValueType | None) -> Any:
    if value is None or vt is None:
        return value
    if vt is ValueType.FLOAT:
        return float(value)
    if vt is ValueType.INT:
        return int(value)
    return bool(value)
