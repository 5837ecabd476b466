"""Historian throughput: point values per second from Sample to acknowledged write.

Server: a local VictoriaMetrics (Debian `victoria-metrics`) started by this script; it takes
/api/v2/write, the endpoint influxdb-client writes to.

Baseline: influxdb-client's Point-object path — one `Point` per sample with a field per
value, written with a synchronous `write_api` in batches of `batch_size` (acknowledged when
`write()` returns).
Product: the historian service — samples published on the event bus, encoded by layout
templates, appended (fdatasync) to the segment-file spool and forwarded to the same server
(gzip off on both paths); acknowledged when the spool's `sent_lines` counts them all.

Both paths write the same samples (DDSY1352 meters, 28 values per line with `quality`) to
the same, pre-created series, in the same run, best of `--rounds` runs each. The server's
own CPU per line (read from /proc) is printed too: on a 2-CPU machine VictoriaMetrics needs
about 30 µs per 28-value line whoever sends it, which bounds the end-to-end ratio near
(client + server) / server; `cpu_ratio` is the client-side CPU per point of the Point path
over the historian's. A "point" is one value of one meter point
(an InfluxDB field value); lines/s is points/s divided by 28. Target: >= 200,000 points/s
and >= 4x the baseline.

Ends with one JSON line: {"bench": "historian", "points_per_s": ..., "ratio": ..., ...}.
Run: .venv/bin/python benchmarks/historian.py [--samples 60000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from openprepay.core.app.plugins import Plugins
from openprepay.core.config.site import parse_site
from openprepay.core.events import EventBus
from openprepay.core.model import DeviceModel, Sample, ValueType
from openprepay.historian.config import read_config
from openprepay.historian.lineprotocol import to_ns
from openprepay.historian.service import SpoolingHistorian

METERS = 500
BATCH = 5000


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vm(folder: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("victoria-metrics")
    if binary is None:
        sys.exit("victoria-metrics not installed (apt-get install victoria-metrics)")
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"-storageDataPath={folder}/vm",
            f"-httpListenAddr=127.0.0.1:{port}",
            "-loggerLevel=ERROR",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("victoria-metrics did not start")


def make_samples(model: DeviceModel, n: int, start: datetime, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    samples = []
    for i in range(n):
        meter = i % METERS
        values: dict[str, float | int | bool] = {}
        for p in model.points:
            if p.value_type is ValueType.FLOAT:  # as a register scaled by its resolution
                step = p.resolution or 0.01
                values[p.name] = rng.randrange(0, 10_000_000) / round(1 / step)
            elif p.value_type is ValueType.INT:
                values[p.name] = rng.randrange(0, 65535)
            else:
                values[p.name] = rng.random() < 0.5
        t = start + timedelta(milliseconds=(i // METERS) * 1000 + meter)
        samples.append(Sample(f"E{meter:04d}", model, t, values))
    return samples


def point_path(url: str, samples: list[Sample], site_id: str) -> float:
    """influxdb-client's Point objects, synchronous writes of BATCH points; seconds."""
    with InfluxDBClient(url=url, token="bench", org="bench", timeout=60_000) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        start = time.perf_counter()
        for i in range(0, len(samples), BATCH):
            points = []
            for s in samples[i : i + BATCH]:
                p = (
                    Point("electric")
                    .tag("meter", s.source)
                    .tag("model", s.model.name)
                    .tag("site", site_id)
                )
                for name, value in s.values.items():
                    p.field(name, value)
                p.field("quality", int(s.quality))
                p.time(to_ns(s.time), WritePrecision.NS)
                points.append(p)
            write.write(bucket="bench", record=points, write_precision=WritePrecision.NS)
        return time.perf_counter() - start


async def product_path(
    url: str,
    folder: Path,
    samples: list[Sample],
    plugins: Plugins,
    model: DeviceModel,
    in_flight: int = 1,
) -> tuple[float, dict]:
    site = parse_site(
        {
            "site": {"id": "bench"},
            "links": {"gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 1}},
            "historian": {
                "url": url,
                "bucket": "bench",
                "spool_dir": str(folder),
                "batch_size": BATCH,
                "stats_interval_s": 3600,
                "gzip": False,
                "max_in_flight": in_flight,
            },
        }
    )
    bus = EventBus()
    historian = SpoolingHistorian(read_config(site), site, bus, plugins.models)
    await historian.start()
    try:
        # Warm-up (series and connections), not timed.
        for s in make_samples(model, METERS, samples[0].time - timedelta(hours=1), 99):
            bus.publish(s)
        await historian.flush(60)
        base = historian.spool.counters()["sent_lines"]
        start = time.perf_counter()
        for i in range(0, len(samples), 1000):  # as a poller would: a burst, then yield
            for s in samples[i : i + 1000]:
                bus.publish(s)
            await asyncio.sleep(0)
        while historian.spool.counters()["sent_lines"] - base < len(samples):
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        stats = await historian.stats()
    finally:
        await historian.stop()
    return elapsed, stats


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2, help="best of this many runs each")
    parser.add_argument("--in-flight", type=int, default=1, help="historian max_in_flight")
    args = parser.parse_args()
    plugins = Plugins.load()
    model = plugins.models["acrel.DDSY1352"]
    values_per_line = len(model.points) + 1  # + quality
    now = datetime.now(UTC).replace(microsecond=0)
    span = timedelta(seconds=args.samples // METERS + 10)
    baseline_s: list[float] = []
    product_s: list[float] = []
    #: (server CPU s, this process's CPU s) per run.
    baseline_cpu: list[tuple[float, float]] = []
    product_cpu: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-historian-") as tmp:
        proc, url = start_vm(Path(tmp))
        try:
            # Create every series once so neither path pays for it.
            point_path(url, make_samples(model, METERS, now - timedelta(hours=3), 7), "bench")
            for r in range(args.rounds):
                offset = now - timedelta(hours=2) - (2 * r + 2) * span
                samples = make_samples(model, args.samples, offset, 2 * r + 1)
                cpu = (process_cpu(proc.pid), time.process_time())
                baseline_s.append(point_path(url, samples, "bench"))
                baseline_cpu.append((process_cpu(proc.pid) - cpu[0], time.process_time() - cpu[1]))
                samples = make_samples(model, args.samples, offset + span, 2 * r + 2)
                cpu = (process_cpu(proc.pid), time.process_time())
                elapsed, stats = await product_path(
                    url, Path(tmp) / f"spool{r}", samples, plugins, model, args.in_flight
                )
                product_cpu.append((process_cpu(proc.pid) - cpu[0], time.process_time() - cpu[1]))
                product_s.append(elapsed)
                print(
                    f"round {r + 1}: baseline {baseline_s[-1]:.2f} s, product {elapsed:.2f} s",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(10)
    points = args.samples * values_per_line
    baseline = points / min(baseline_s)
    product = points / min(product_s)
    ratio = product / baseline
    print(
        f"{args.samples} samples x {values_per_line} values = {points} points per run, "
        f"{METERS} meters, batches of {BATCH} lines; best of {args.rounds} runs each"
    )
    print(
        f"baseline (influxdb-client Point objects, sync writes): "
        f"{baseline:,.0f} points/s ({baseline / values_per_line:,.0f} lines/s)"
    )
    print(
        f"product  (bus -> encode -> fsync'd spool -> acked write): "
        f"{product:,.0f} points/s ({product / values_per_line:,.0f} lines/s)"
    )
    lines = args.samples

    def per_line(cpu: list[tuple[float, float]], which: int) -> float:
        return round(min(c[which] for c in cpu) / lines * 1e6, 1)

    print(
        f"CPU per line: server {per_line(baseline_cpu, 0)} µs + client "
        f"{per_line(baseline_cpu, 1)} µs (baseline); server {per_line(product_cpu, 0)} µs + "
        f"historian {per_line(product_cpu, 1)} µs (product, {args.in_flight} requests in "
        f"flight); {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    print(f"ratio {ratio:.2f}x  (spool after the last run: {stats['queue_depth']} lines waiting)")
    print(
        json.dumps(
            {
                "bench": "historian",
                "points_per_s": round(product),
                "ratio": round(ratio, 3),
                "baseline_points_per_s": round(baseline),
                "lines_per_s": round(product / values_per_line),
                "samples": args.samples,
                "values_per_line": values_per_line,
                "rounds": args.rounds,
                "server_cpu_us_per_line": per_line(product_cpu, 0),
                "historian_cpu_us_per_line": per_line(product_cpu, 1),
                "baseline_client_cpu_us_per_line": per_line(baseline_cpu, 1),
                # Client-side CPU per point, Point objects / historian: what the encoding
                # saves, whatever the server and the other load on the machine do.
                "cpu_ratio": round(per_line(baseline_cpu, 1) / per_line(product_cpu, 1), 2),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
