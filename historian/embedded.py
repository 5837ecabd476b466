"""The embedded history store: one SQLite file (WAL), no server needed.

The default for the demo and small sites. It keeps one row per sample — the sample's values
as a JSON object, keyed by stream (a source's samples of one model) and time — and serves
`core.field.history.HistoryReader` for OPC UA HistoryRead and reports by taking one point out
of each row. A Bad sample is stored as a row whose every point of the model is null, with
the sample's quality, so a gap is visible in history instead of a stale value. Writing the
same (stream, time) again replaces the row, as InfluxDB does.

Why a row per sample and not per value: a meter's 28 values in 28 rows of a (series, time)
tree put each value on a page of its own series, so a commit of 100 samples dirtied ~2,800
pages and the store thread cost as much CPU as the event loop at 20,000 meters
(docs/historian.md, "The embedded store"). A store of the old layout is converted when it
is opened.

Rows older than `retention_days` are pruned every hour. Commits use synchronous=FULL: once
`store()` returns, the values survive kill -9 and power loss.
"""

from __future__ import annotations

import asyncio
import json
import logging
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

log = logging.getLogger("openprepay.historian")

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
CREATE TABLE IF NOT EXISTS stream (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    model TEXT NOT NULL,
    UNIQUE (source, model)
);
CREATE TABLE IF NOT EXISTS sample (
    stream INTEGER NOT NULL,
    t INTEGER NOT NULL,
    quality INTEGER NOT NULL,
    point_values TEXT NOT NULL,
    point_quality TEXT,
    PRIMARY KEY (stream, t)
);
CREATE TABLE IF NOT EXISTS event (
    t INTEGER NOT NULL,
    measurement TEXT NOT NULL,
    type TEXT NOT NULL,
    tags TEXT NOT NULL,
    fields TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS event_t ON event (t);
"""

# The old layout's values (one row per value, `value` table), regrouped into one row per
# sample: the sample's quality is the best of its values', a point's own is kept where worse.
_CONVERT_LEGACY = """
INSERT OR IGNORE INTO stream (source, model) SELECT DISTINCT source, model FROM series;
CREATE TEMP TABLE legacy AS
    SELECT st.id AS stream, v.t AS t, se.point AS point, v.value AS value, v.quality AS quality
    FROM value AS v
    JOIN series AS se ON se.id = v.series
    JOIN stream AS st ON st.source = se.source AND st.model = se.model;
INSERT OR REPLACE INTO sample (stream, t, quality, point_values, point_quality)
    SELECT l.stream, l.t, b.quality, json_group_object(l.point, l.value),
           NULLIF(json_group_object(l.point, l.quality) FILTER (WHERE l.quality > b.quality),
                  '{}')
    FROM legacy AS l
    JOIN (SELECT stream, t, MIN(quality) AS quality FROM legacy GROUP BY stream, t) AS b
      ON b.stream = l.stream AND b.t = l.t
    GROUP BY l.stream, l.t;
DROP TABLE legacy;
DROP TABLE value;
"""

_BAD = int(Quality.BAD_DEVICE_FAILURE)
#: Compact, and refusing NaN and infinities (not JSON: SQLite's json functions reject them).
_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class StoredSeries:
    id: int
    source: str
    point: str
    measurement: str
    model: str
    unit: str
    value_type: ValueType | None


@dataclass(frozen=True, slots=True)
class StoredSample:
    """One stored row: what `samples_between` yields for a replay."""

    source: str
    model: str
    t: int
    quality: int
    values: dict[str, Any]
    point_quality: dict[str, int]


@dataclass(slots=True)
class _Stream:
    id: int
    points: set[str]


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
        # (source, model name) -> its stream id and the points that have a series row.
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._gaps: dict[str, str] = {}
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
        self._convert_legacy()
        points: dict[tuple[str, str], set[str]] = {}
        for source, model, point in db.execute("SELECT source, model, point FROM series"):
            points.setdefault((source, model), set()).add(point)
        self._streams = {
            (source, model): _Stream(sid, points.get((source, model), set()))
            for sid, source, model in db.execute("SELECT id, source, model FROM stream")
        }
        return self

    def _convert_legacy(self) -> None:
        db = self.db
        legacy = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'value'"
        ).fetchone()
        if legacy is None:
            return
        rows = db.execute("SELECT COUNT(*) FROM value").fetchone()[0]
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _CONVERT_LEGACY.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        log.info(
            "embedded history store converted to one row per sample",
            extra={
                "path": str(self.path),
                "values": rows,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

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
    def store(self, items: Iterable[Sample | Event]) -> int:
        """Store samples and events in one durable transaction; the values written."""
        rows: list[tuple[int, int, int, str, str | None]] = []
        events: list[tuple[int, str, str, str, str]] = []
        written = 0
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for item in items:
                if isinstance(item, Sample):
                    written += self._sample_row(item, rows)
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
            db.executemany("INSERT OR REPLACE INTO sample VALUES (?, ?, ?, ?, ?)", rows)
            if events:
                db.executemany("INSERT INTO event VALUES (?, ?, ?, ?, ?)", events)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.values_written += written
        if time.monotonic() - self._last_prune > 3600:
            self.prune()
        return written

    def _sample_row(self, sample: Sample, rows: list[tuple[int, int, int, str, str | None]]) -> int:
        """Append the sample's row; the number of point values it holds."""
        model = sample.model
        stream = self._streams.get((sample.source, model.name)) or self._new_stream(sample)
        t = to_ns(sample.device_time or sample.read_at)
        quality = int(sample.quality)
        if sample.quality > Quality.UNCERTAIN:
            names = [spec.name for spec in model.points]
            if not stream.points.issuperset(names):
                self._new_points(sample, stream, names)
            gap = self._gaps.get(model.name)
            if gap is None:
                gap = self._gaps[model.name] = _JSON.encode(dict.fromkeys(names))
            rows.append((stream.id, t, quality, gap, None))
            return len(names)
        values = sample.values
        if not stream.points.issuperset(values):
            self._new_points(sample, stream, values)
        overrides = {p: int(q) for p, q in (sample.point_quality or {}).items() if q > quality}
        try:
            text = _JSON.encode(values)
        except ValueError:  # NaN or an infinity: no value, and the point's quality is Bad
            clean: dict[str, Any] = {}
            for point, value in values.items():
                if isinstance(value, float) and not math.isfinite(value):
                    clean[point] = None
                    overrides[point] = max(overrides.get(point, 0), _BAD)
                else:
                    clean[point] = value
            text = _JSON.encode(clean)
        rows.append((stream.id, t, quality, text, _JSON.encode(overrides) if overrides else None))
        return len(values)

    def _new_stream(self, sample: Sample) -> _Stream:
        key = (sample.source, sample.model.name)
        self.db.execute("INSERT OR IGNORE INTO stream (source, model) VALUES (?, ?)", key)
        sid = self.db.execute(
            "SELECT id FROM stream WHERE source = ? AND model = ?", key
        ).fetchone()[0]
        stream = self._streams[key] = _Stream(sid, set())
        return stream

    def _new_points(self, sample: Sample, stream: _Stream, points: Iterable[str]) -> None:
        """Series rows (what `series()` lists, with unit and type) for points seen first."""
        model = sample.model
        for point in points:
            if point in stream.points:
                continue
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
            stream.points.add(point)

    def prune(self, now_ns: int | None = None) -> None:
        self._last_prune = time.monotonic()
        cutoff = (now_ns or time.time_ns()) - int(self.retention_s * 1e9)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            # Stream by stream: each a range of the primary key, not a scan of every row.
            for stream in list(self._streams.values()):
                db.execute("DELETE FROM sample WHERE stream = ? AND t < ?", (stream.id, cutoff))
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
            # The point's values are in the stream of the model that first brought it.
            found = db.execute(
                "SELECT st.id, se.value_type FROM series AS se JOIN stream AS st"
                " ON st.source = se.source AND st.model = se.model"
                " WHERE se.source = ? AND se.point = ?",
                (source, point),
            ).fetchone()
        except sqlite3.OperationalError:  # read before the store was created
            return HistoryPage([])
        if found is None:
            return HistoryPage([])
        stream, vt_name = found
        vt = ValueType(vt_name) if vt_name else None
        path = "$." + json.dumps(point)
        rows = db.execute(
            "SELECT t, json_extract(point_values, ?1), quality, json_extract(point_quality, ?1)"
            " FROM sample WHERE stream = ?2 AND t >= ?3 AND t < ?4"
            " AND json_type(point_values, ?1) IS NOT NULL ORDER BY t LIMIT ?5",
            (path, stream, to_ns(start), to_ns(end), int(limit) + 1),
        ).fetchall()
        continuation = from_ns(rows[limit][0]) if len(rows) > limit else None
        values = [
            HistoryValue(from_ns(t), _typed(value, vt), Quality(max(quality, own or 0)))
            for t, value, quality, own in rows[:limit]
        ]
        return HistoryPage(values, continuation)

    def samples_between(self, start_ns: int, end_ns: int) -> Iterable[StoredSample]:
        """Every stored sample with start <= t < end, stream by stream (for a replay)."""
        db = self._reader_db()
        # Typed by the series' value type: a converted old store holds booleans as 0 and 1.
        types: dict[tuple[str, str], dict[str, ValueType | None]] = {}
        for s in self.series():
            types.setdefault((s.source, s.model), {})[s.point] = s.value_type
        streams = db.execute("SELECT id, source, model FROM stream ORDER BY id").fetchall()
        for sid, source, model in streams:
            typed = types.get((source, model), {})
            for t, quality, text, own in db.execute(
                "SELECT t, quality, point_values, point_quality FROM sample"
                " WHERE stream = ? AND t >= ? AND t < ? ORDER BY t",
                (sid, start_ns, end_ns),
            ):
                values = {p: _typed(v, typed.get(p)) for p, v in json.loads(text).items()}
                yield StoredSample(
                    source, model, t, quality, values, json.loads(own) if own else {}
                )

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
