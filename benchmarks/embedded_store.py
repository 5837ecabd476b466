"""Embedded history store: CPU and wall time per sample stored, at site scale.

Baseline and product in the same run, on the same samples, each in its own SQLite file with
the store's settings (WAL, synchronous=FULL, one transaction per commit of `--batch` samples,
as the historian's store thread commits them):
- baseline: the layout before, one row per value keyed by (series, time) — a meter's 28
  values in 28 places of the tree;
- product: `historian.embedded.EmbeddedStore`, one row per sample keyed by (stream, time).

Each of `--meters` DDSY1352 meters is polled `--polls` times (10 s apart); the first poll
creates the series and is left out of the figures. CPU is the process's (user + system),
so SQLite's own work is counted. Prints both, the ratio (product CPU ÷ baseline CPU), and one
JSON line.

    .venv/bin/python benchmarks/embedded_store.py [--meters 10000] [--polls 8]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from openprepay.core.app.plugins import Plugins
from openprepay.core.model import Quality, Sample, ValueType
from openprepay.historian.embedded import EmbeddedStore
from openprepay.historian.lineprotocol import to_ns

START = datetime(2026, 1, 1, tzinfo=UTC)


def poll(model: Any, meters: int, n: int) -> list[Sample]:
    """Poll `n` of every meter: values that move as a meter's do."""
    samples = []
    for m in range(meters):
        values: dict[str, float | int | bool] = {}
        for i, p in enumerate(model.points):
            if p.value_type is ValueType.FLOAT:
                values[p.name] = round(1000 + m + n * 0.01 * (i + 1), 2)
            elif p.value_type is ValueType.INT:
                values[p.name] = (m + i) % 65535
            else:
                values[p.name] = (m + n) % 2 == 0
        at = START + timedelta(seconds=10 * n, milliseconds=m % 10_000)
        samples.append(Sample(f"E{m:05d}", model, at, values))
    return samples


class PerValueStore:
    """The layout before: one row per value, a series per (source, point)."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE value (series INTEGER NOT NULL, t INTEGER NOT NULL, value,"
            " quality INTEGER NOT NULL, PRIMARY KEY (series, t)) WITHOUT ROWID"
        )
        self.ids: dict[tuple[str, str], int] = {}

    def store(self, samples: list[Sample]) -> None:
        rows = []
        for s in samples:
            t, q = to_ns(s.time), int(s.quality)
            for point, value in s.values.items():
                sid = self.ids.setdefault((s.source, point), len(self.ids) + 1)
                if isinstance(value, float) and not math.isfinite(value):
                    value, q = None, int(Quality.BAD_DEVICE_FAILURE)
                rows.append((sid, t, value, q))
        self.db.execute("BEGIN IMMEDIATE")
        self.db.executemany("INSERT OR REPLACE INTO value VALUES (?, ?, ?, ?)", rows)
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


def measure(store: Any, polls: list[list[Sample]], batch: int) -> tuple[float, float, int]:
    """CPU and wall seconds over every poll after the first, and the samples they held."""
    cpu = wall = 0.0
    counted = 0
    for n, samples in enumerate(polls):
        c0, w0 = time.process_time(), time.perf_counter()
        for i in range(0, len(samples), batch):
            store.store(samples[i : i + batch])
        if n:  # the first poll creates the series
            cpu += time.process_time() - c0
            wall += time.perf_counter() - w0
            counted += len(samples)
    return cpu, wall, counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=10_000)
    parser.add_argument("--polls", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100, help="samples per commit")
    args = parser.parse_args()
    model = Plugins.load().models["acrel.DDSY1352"]
    polls = [poll(model, args.meters, n) for n in range(args.polls)]
    with tempfile.TemporaryDirectory() as tmp:
        before = PerValueStore(Path(tmp) / "per-value.sqlite")
        try:
            b_cpu, b_wall, n = measure(before, polls, args.batch)
        finally:
            before.close()
        after = EmbeddedStore(Path(tmp) / "per-sample.sqlite").open()
        try:
            p_cpu, p_wall, _ = measure(after, polls, args.batch)
        finally:
            after.close()
        sizes = {f: os.path.getsize(Path(tmp) / f) for f in os.listdir(tmp) if ".sqlite" in f}
    us = 1e6 / n
    print(f"{args.meters:,} meters x {args.polls - 1} polls, {args.batch} samples per commit")
    print(f"one row per value (before): {b_cpu * us:.1f} µs CPU, {b_wall * us:.1f} µs wall")
    print(f"one row per sample (store): {p_cpu * us:.1f} µs CPU, {p_wall * us:.1f} µs wall")
    print(f"files: {', '.join(f'{k} {v / 1e6:.0f} MB' for k, v in sorted(sizes.items()))}")
    print(
        json.dumps(
            {
                "bench": "embedded_store",
                "ratio": round(p_cpu / b_cpu, 3),
                "cpu_us_per_sample": round(p_cpu * us, 1),
                "wall_us_per_sample": round(p_wall * us, 1),
                "baseline_cpu_us_per_sample": round(b_cpu * us, 1),
                "baseline_wall_us_per_sample": round(b_wall * us, 1),
                "samples_per_s": round(n / p_wall),
                "meters": args.meters,
            }
        )
    )


if __name__ == "__main__":
    main()
