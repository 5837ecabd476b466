"""The embedded history store: one SQLite file (WAL), no server needed.

The default for the demo and small sites. It keeps one row per point value, keyed by
series (a source's point) and time, and serves `core.field.history.HistoryReader` for OPC UA
HistoryRead and reports. A Bad sample is stored as a row without a value for every point of
its model, with the sample's quality, so a gap is visible in history instead of a stale
value. Writing the same (series, time) again replaces the row, as InfluxDB does.

Rows older than `retention_days` are pruned every hour. Commits use synchronous=FULL: once
`store()` returns, the values survive kill -9 and power loss.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from openprepay.core.events import Event
from openprepay.core.field.history import HistoryPage, HistoryValue
from openprepay.core.model import Quality, Sample, ValueType
from openprepay.core.private_files import private_file

from .lineprotocol import from_ns, to_ns
from .schema import event_measurement, event_parts, series_kind

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    point TEXT NOT NULL,
    measurement TEXT NOT NULL,
    model TEXT NOT NULL,
    unit TEXT NOT NULL,
    value_type TEXT,
    UNIQUE (source, point)
);
CREATE TABLE IF NOT EXISTS value (
    series INTEGER NOT NULL,
    t INTEGER NOT NULL,
    value,
    quality INTEGER NOT NULL,
    PRIMARY KEY (series, t)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event (
    t INTEGER NOT NULL,
    measurement TEXT NOT NULL,
    type TEXT NOT NULL,
    tags TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS event_t ON event (t);
"""

_BAD = int(Quality.BAD_DEVICE_FAILURE)


@dataclass(frozen=True, slots=True)
class StoredSeries:
    id: int
    source: str
    point: str
    measurement: str
    model: str
    unit: str
    value_type: ValueType | None


class EmbeddedStore:
    """Writes happen on one thread (the historian's store thread), reads on another."""

    def __init__(self, path: Path | None, retention_days: float = 30.0) -> None:
        self.path = path
        self.retention_s = retention_days * 86400
        self._target = (
            str(path) if path is not None else f"file:openprepay-{uuid.uuid4().hex}?mode=memory"
        )
        self._uri = path is None
        if self._uri:
            self._target += "&cache=shared"
        self._db: sqlite3.Connection | None = None
        self._series: dict[tuple[str, str], int] = {}
        self._ids: dict[str, dict[str, int]] = {}
        self._read_db: sqlite3.Connection | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="historian-read")
        self._last_prune = 0.0
        self.values_written = 0

    # -- lifecycle (store thread) ---------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self._target, uri=self._uri, timeout=30, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def open(self) -> EmbeddedStore:
        if self.path is not None:
            private_file(self.path)  # 0600 before SQLite opens it (and its -wal, -shm)
        db = self._connect()
        if self.path is not None:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._db = db
        self._series = {
            (source, point): sid
            for sid, source, point in db.execute("SELECT id, source, point FROM series")
        }
        self._ids = {}
        return self

    def close(self) -> None:
        self._reader.submit(self._close_reader).result()
        self._reader.shutdown(wait=True)
        if self._db is not None:
            self._db.close()
            self._db = None

    def _close_reader(self) -> None:
        if self._read_db is not None:
            self._read_db.close()
            self._read_db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("embedded store is not open")
        return self._db

    # -- writing (store thread) -----------------------------------------------------------
    def _series_id(self, sample: Sample, point: str) -> int:
        key = (sample.source, point)
        sid = self._series.get(key)
        if sid is None:
            model = sample.model
            try:
                spec = model.point(point)
                unit, vt = spec.unit, spec.value_type.value
            except KeyError:
                unit, vt = "", None
            self.db.execute(
                "INSERT OR IGNORE INTO series(source, point, measurement, model, unit, value_type)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (sample.source, point, series_kind(model).measurement, model.name, unit, vt),
            )
            sid = self.db.execute(
                "SELECT id FROM series WHERE source = ? AND point = ?", key
            ).fetchone()[0]
            self._series[key] = sid
        return sid

    def store(self, items: Iterable[Sample | Event]) -> int:
        """Store samples and events in one durable transaction; the values written."""
        rows: list[tuple[int, int, Any, int]] = []
        events: list[tuple[int, str, str, str, str]] = []
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for item in items:
                if isinstance(item, Sample):
                    self._sample_rows(item, rows)
                elif isinstance(item, Event):
                    tags, fields, at = event_parts(item, None)
                    events.append(
                        (
                            to_ns(at),
                            event_measurement(item),
                            type(item).__name__,
                            json.dumps(tags),
                            json.dumps(fields, default=str),
                        )
                    )
            db.executemany("INSERT OR REPLACE INTO value VALUES (?, ?, ?, ?)", rows)
            if events:
                db.executemany("INSERT INTO event VALUES (?, ?, ?, ?, ?)", events)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.values_written += len(rows)
        if time.monotonic() - self._last_prune > 3600:
            self.prune()
        return len(rows)

    def _sample_rows(self, sample: Sample, rows: list[tuple[int, int, Any, int]]) -> None:
        t = to_ns(sample.device_time or sample.read_at)
        quality = int(sample.quality)
        # The source's series ids by point: one lookup per sample, not a tuple key per value.
        ids = self._ids.get(sample.source)
        if ids is None:
            ids = self._ids[sample.source] = {}
        if sample.quality > Quality.UNCERTAIN:
            for spec in sample.model.points:
                sid = ids.get(spec.name) or self._new_id(sample, spec.name, ids)
                rows.append((sid, t, None, quality))
            return
        overrides = sample.point_quality
        for point, value in sample.values.items():
            sid = ids.get(point) or self._new_id(sample, point, ids)
            q = max(quality, int(overrides.get(point, 0))) if overrides else quality
            if isinstance(value, float) and not math.isfinite(value):
                value, q = None, max(q, _BAD)
            rows.append((sid, t, value, q))

    def _new_id(self, sample: Sample, point: str, ids: dict[str, int]) -> int:
        sid = ids[point] = self._series_id(sample, point)
        return sid

    def prune(self, now_ns: int | None = None) -> None:
        self._last_prune = time.monotonic()
        cutoff = (now_ns or time.time_ns()) - int(self.retention_s * 1e9)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sid in list(self._series.values()):
                db.execute("DELETE FROM value WHERE series = ? AND t < ?", (sid, cutoff))
            db.execute("DELETE FROM event WHERE t < ?", (cutoff,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # -- reading (reader thread) ----------------------------------------------------------
    def _reader_db(self) -> sqlite3.Connection:
        if self._read_db is None:
            self._read_db = self._connect()
        return self._read_db

    def series(self, source: str | None = None) -> list[StoredSeries]:
        db = self._reader_db()
        sql = "SELECT id, source, point, measurement, model, unit, value_type FROM series"
        rows = db.execute(sql + " WHERE source = ?", (source,)) if source else db.execute(sql)
        return [StoredSeries(*row[:6], ValueType(row[6]) if row[6] else None) for row in rows]

    def read_raw_sync(
        self, source: str, point: str, start: datetime, end: datetime, limit: int
    ) -> HistoryPage:
        db = self._reader_db()
        try:
            found = db.execute(
                "SELECT id, value_type FROM series WHERE source = ? AND point = ?", (source, point)
            ).fetchone()
        except sqlite3.OperationalError:  # read before the store was created
            return HistoryPage([])
        if found is None:
            return HistoryPage([])
        sid, vt_name = found
        vt = ValueType(vt_name) if vt_name else None
        rows = db.execute(
            "SELECT t, value, quality FROM value WHERE series = ? AND t >= ? AND t < ?"
            " ORDER BY t LIMIT ?",
            (sid, to_ns(start), to_ns(end), int(limit) + 1),
        ).fetchall()
        continuation = from_ns(rows[limit][0]) if len(rows) > limit else None
        values = [
            HistoryValue(from_ns(t), _typed(value, vt), Quality(quality))
            for t, value, quality in rows[:limit]
        ]
        return HistoryPage(values, continuation)

    def values_between(
        self, start_ns: int, end_ns: int
    ) -> Iterable[tuple[StoredSeries, int, Any, int]]:
        """Every stored value with start <= t < end, by series (for replay)."""
        db = self._reader_db()
        for s in self.series():
            for t, value, quality in db.execute(
                "SELECT t, value, quality FROM value WHERE series = ? AND t >= ? AND t < ?"
                " ORDER BY t",
                (s.id, start_ns, end_ns),
            ):
                yield s, t, _typed(value, s.value_type), quality

    def stats(self) -> dict[str, Any]:
        db = self._reader_db()
        series = db.execute("SELECT COUNT(*) FROM series").fetchone()[0]
        events = db.execute("SELECT COUNT(*) FROM event").fetchone()[0]
        size = 0
        if self.path is not None:
            size = sum(
                p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists()
            )
        return {"series": series, "events": events, "bytes": size}

    async def run_read(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn, *args)


class EmbeddedHistoryReader:
    """`core.field.history.HistoryReader` over the embedded store."""

    def __init__(self, store: EmbeddedStore) -> None:
        self.store = store

    async def read_raw(
        self, source: str, point: str, start: datetime, end: datetime, limit: int
    ) -> HistoryPage:
        return await self.store.run_read(self.store.read_raw_sync, source, point, start, end, limit)


def _typed(value: Any, vt: ValueType | None) -> Any:
    if value is None or vt is None:
        return value
    if vt is ValueType.BOOL:
        return bool(value)
    if vt is ValueType.INT:
        return int(value)
    return float(value)
