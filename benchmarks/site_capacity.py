"""Site capacity: the whole service on one box at N meters, every service on.

The demo estate sized to N meters (a bus per three floors for each medium, a main meter per
building) is served by `openprepay simulate` in a separate process at real-time consumption
(speed-up 1); the service runs in this process as `openprepay run` would (the link arbiter,
the prepayment engine with an account per room, billing, the embedded historian, the OPC UA
server), polling at the README's default interval (10 s); one OPC UA client in a third
process subscribes to every meter's main register. After every meter has answered, a steady
window is measured:

- polls done ÷ due — the baseline is the schedule itself: N meters × window ÷ interval;
- service CPU per sample (this process's CPU time over the Good register samples);
- event-loop lag p99 and the worst stall, the worst collector pause (`core.app.vitals`);
- the longest database write lock (BEGIN IMMEDIATE → COMMIT, every write transaction);
- billing lag (how old the oldest unbilled sample got, `Metering.oldest_unbilled`);
- RSS per meter, start-up time (start → every meter read once, accounts opened), and the
  time `stop` takes; commands left SENT and historian lines dropped (both must be 0).

Ends with one JSON line, e.g. {"bench": "site_capacity", "meters": 20026,
"polls_done_ratio": 0.99, "max_loop_stall_ms": ..., "max_write_lock_s": ..., ...}.
Target (issue 15): 20,000 meters at 10 s: polls_done_ratio >= 0.99, max_loop_stall_ms <= 200,
max_write_lock_s <= 1, lost_commands = 0, historian_dropped = 0, stop_s <= 5.

With `--instances N` (N >= 2) the site is served by N `openprepay run` processes on a
throwaway PostgreSQL database, splitting the links by `[cluster] links`, and everything is
measured from outside them (benchmarks/site_instances.py); `--postgres` does that for one
instance too, `--process` one instance as a process on SQLite. The JSON line then says
`instances` and `database`.

`--full-collection-s S` sets the site's `[poll] full_collection_s`, so the window holds the
scheduled full collections (hourly by default) and `max_gc_pause_ms` measures them.

    .venv/bin/python benchmarks/site_capacity.py [--meters 2000] [--window 60]
        [--instances 1] [--postgres | --process] [--full-collection-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import tomli_w
from _capacity import POLL_S, free_ports, process_cpu_s, spawn_client

from openprepay.core.app.demo import demo_site_data, open_demo_accounts
from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.config.site import load_site
from openprepay.core.db import schema as t
from openprepay.core.events import utcnow
from openprepay.core.model import MeterKind, Sample

ROOMS_PER_FLOOR = 10
MAX_FLOORS = 40


def site_data(meters: int, folder: Path, full_collection_s: float | None = None) -> dict[str, Any]:
    """The demo estate with about `meters` meters (two per room, a main meter per
    building), every link on its own loopback port, every service on; `full_collection_s`
    brings the service's scheduled full collections into the window (default: hourly)."""
    rooms = max(1, meters // 2)
    floors = min(MAX_FLOORS, math.ceil(rooms / ROOMS_PER_FLOOR))
    buildings = math.ceil(rooms / (floors * ROOMS_PER_FLOOR))
    data = demo_site_data(buildings, floors, ROOMS_PER_FLOOR, poll_interval_s=POLL_S)
    ports = free_ports(len(data["links"]) + 1)
    for link, port in zip(data["links"].values(), ports, strict=False):
        link["host"], link["port"] = "127.0.0.1", port
    data["database"] = {"url": f"sqlite:///{folder / 'site.db'}"}
    if full_collection_s is not None:
        data.setdefault("poll", {})["full_collection_s"] = full_collection_s
    data["opcua"] = {
        "port": ports[-1],
        "host": "127.0.0.1",
        "allow_none": True,
        "allow_anonymous": True,
        "pki_dir": str(folder / "opcua"),
    }
    return data


# -- measuring ---------------------------------------------------------------------------
class WriteLocks:
    """The longest SQLite write transaction (the writer lock is held from BEGIN IMMEDIATE
    to COMMIT or ROLLBACK), and where the longest ones began (the product's frames)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.longest = 0.0
        #: (seconds, where it began) of transactions over a second.
        self.slow: list[tuple[float, str]] = []
        sa.event.listen(engine, "begin", self._begin)
        sa.event.listen(engine, "commit", self._end)
        sa.event.listen(engine, "rollback", self._end)

    def _begin(self, conn: sa.Connection) -> None:
        if conn.get_execution_options().get("sqlite_begin", "IMMEDIATE") == "IMMEDIATE":
            conn.info["locked_at"] = time.perf_counter()
            conn.info["begun_in"] = traceback.extract_stack(limit=14)

    def _end(self, conn: sa.Connection) -> None:
        started = conn.info.pop("locked_at", None)
        stack = conn.info.pop("begun_in", None)
        if started is None:
            return
        held = time.perf_counter() - started
        self.longest = max(self.longest, held)
        if held > 1.0 and stack is not None:
            ours = [f"{Path(f.filename).stem}.{f.name}" for f in stack if "/openprepay" in
                    f.filename or "/core/" in f.filename or "/plugins/" in f.filename]  # fmt: skip
            self.slow.append((held, " < ".join(reversed(ours[-4:]))))

    def worst(self, n: int = 5) -> list[str]:
        return [f"{s:.1f} s in {where}" for s, where in sorted(self.slow, reverse=True)[:n]]


class Polls:
    """Good register samples of the site's meters (not health figures or accounts)."""

    def __init__(self, runtime: Runtime) -> None:
        models = runtime.models
        self.meters = {
            d.id
            for d in runtime.site.devices.values()
            if models[d.model].kind in (MeterKind.ELECTRIC, MeterKind.WATER)
        }
        self.count = 0
        self.seen: set[str] = set()
        runtime.bus.subscribe(Sample, self.on_sample)

    def on_sample(self, sample: Sample) -> None:
        source = sample.source
        if (
            source in self.meters
            and sample.model.kind in (MeterKind.ELECTRIC, MeterKind.WATER)  # not its health
            and sample.quality.is_good
            and sample.values
        ):
            self.count += 1
            self.seen.add(source)


async def wait_all_read(polls: Polls, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    said = time.monotonic()
    while time.monotonic() < deadline:
        if len(polls.seen) >= len(polls.meters):
            return True
        if time.monotonic() - said > 10:
            print(f"  {len(polls.seen)}/{len(polls.meters)} meters read", flush=True)
            said = time.monotonic()
        await asyncio.sleep(0.5)
    return False


async def billing_lag(runtime: Runtime, stop: asyncio.Event, worst: list[float]) -> None:
    metering = runtime.prepay.metering if runtime.prepay is not None else None
    while not stop.is_set() and metering is not None:
        oldest = metering.oldest_unbilled()
        if oldest is not None:
            worst[0] = max(worst[0], (utcnow() - oldest).total_seconds())
        await asyncio.sleep(1.0)


# -- the run -----------------------------------------------------------------------------
async def main(
    meters: int, window_s: float, folder: Path, full_collection_s: float | None
) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    data = site_data(meters, folder, full_collection_s)
    site_file = folder / "site.toml"
    site_file.write_text(tomli_w.dumps(data))
    sims_log = (folder / "simulate.log").open("wb")
    sims = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "openprepay.core.cli", "simulate", str(site_file),
        "--speedup", "1", stdout=sims_log, stderr=sims_log,
    )  # fmt: skip
    client = None
    try:
        await asyncio.sleep(3 + len(data["links"]) / 200)  # the simulators listen
        if sims.returncode is not None:
            raise RuntimeError(f"the simulators exited: see {folder / 'simulate.log'}")
        runtime = Runtime(load_site(site_file), Plugins.load())
        n = len(runtime.site.devices)
        polls = Polls(runtime)
        t0 = time.perf_counter()
        await runtime.start()
        assert runtime.db is not None
        locks = WriteLocks(runtime.db.engine)
        errors: list[str] = []
        try:  # the product losing work under load is a finding, not the end of the run
            await asyncio.to_thread(open_demo_accounts, runtime)
        except Exception as exc:
            errors.append(f"opening the accounts: {type(exc).__name__}: {exc}"[:300])
        startup_s = time.perf_counter() - t0  # migrations, address space, accounts
        all_read = await wait_all_read(polls, 600)
        all_read_s = time.perf_counter() - t0
        print(f"{n} meters on {len(data['links'])} links; start-up {startup_s:.1f} s, every "
              f"meter read after {all_read_s:.1f} s"
              f"{'' if all_read else ' (not every meter answered)'}", flush=True)  # fmt: skip
        nodes = [
            f"Meter:{m}/{runtime.models[runtime.site.devices[m].model].total_point}"
            for m in sorted(polls.meters)
        ]
        client = await spawn_client(
            f"opc.tcp://127.0.0.1:{data['opcua']['port']}/openprepay",
            f"urn:openprepay:site:{runtime.site.id}",
            nodes,
            folder,
        )
        await asyncio.sleep(POLL_S)  # the subscription settles
        vitals = runtime.vitals
        # The window starts once the heap has settled: what the site built after start-up
        # is frozen (core/app/vitals.py).
        deadline = time.monotonic() + 600
        while vitals.settling_pause_s is None and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
        if vitals.settling_pause_s is None:
            errors.append("the heap did not settle in 600 s")
        settled_s = time.perf_counter() - t0
        print(f"the heap settled after {settled_s:.1f} s", flush=True)
        polls.count, locks.longest = 0, 0.0
        vitals.worst_stall_s = vitals.worst_gc_s = vitals.worst_gc_cpu_s = 0.0
        vitals.worst_gc_generation = -1
        vitals.gc_total_s = 0.0
        vitals.recent_lags.clear()
        lag_stop, lag_worst = asyncio.Event(), [0.0]
        lagging = asyncio.create_task(billing_lag(runtime, lag_stop, lag_worst))
        cpu0, w0 = time.process_time(), time.perf_counter()
        sims_cpu0 = process_cpu_s(sims.pid)
        client_cpu0 = process_cpu_s(client.pid)
        await asyncio.sleep(window_s)
        cpu, window = time.process_time() - cpu0, time.perf_counter() - w0
        sims_cpu = process_cpu_s(sims.pid) - sims_cpu0
        client_cpu = process_cpu_s(client.pid) - client_cpu0
        done, summary, longest_lock = polls.count, vitals.summary(), locks.longest
        slow_writes = locks.worst()
        lag_stop.set()
        await lagging
        dropped = await historian_dropped(runtime)
        assert client.stdin is not None
        client.stdin.write(b"done\n")  # the client leaves before the server stops
        await asyncio.wait_for(client.wait(), 60)
        t1 = time.perf_counter()
        await runtime.stop()
        stop_s = time.perf_counter() - t1
        runtime.db = None
        lost = await asyncio.to_thread(_lost_commands, site_file)
        due = len(polls.meters) * window / POLL_S
        return {
            "bench": "site_capacity",
            "meters": n,
            "polls_done_ratio": round(done / due, 3),
            "samples_per_s": round(done / window, 1),
            "cpu_ms_per_sample": round(1000 * cpu / max(done, 1), 3),
            "service_cpu_percent": round(100 * cpu / window, 1),
            "simulator_cpu_percent": round(100 * sims_cpu / window, 1),
            "client_cpu_percent": round(100 * client_cpu / window, 1),
            "loop_lag_p99_ms": summary["loop_lag_p99_ms"],
            "max_loop_stall_ms": summary["max_loop_stall_ms"],
            "max_gc_pause_ms": summary["max_gc_pause_ms"],
            "max_gc_pause_generation": summary["max_gc_pause_generation"],
            "max_gc_cpu_ms": summary["max_gc_cpu_ms"],
            "gc_cpu_share": round(summary["gc_total_s"] / max(cpu, 1e-9), 3),
            "max_write_lock_s": round(longest_lock, 3),
            "billing_lag_s": round(lag_worst[0], 1),
            "rss_mb_per_meter": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / n, 3
            ),
            "startup_s": round(startup_s, 1),
            "all_read_s": round(all_read_s, 1),
            "settled_s": round(settled_s, 1),
            "settling_collection_ms": summary["settling_collection_ms"],
            "full_collection_ms": summary["full_collection_ms"] or None,
            "stop_s": round(stop_s, 2),
            "lost_commands": lost,
            "historian_dropped": dropped,
            "errors": errors,
            "slow_writes_whole_run": slow_writes,
            "ratio": round(done / due, 3),
            "instances": 1,
            "database": "sqlite",
            "loadavg": os.getloadavg(),
        }
    finally:
        if client is not None and client.returncode is None:
            client.kill()
        if sims.returncode is None:
            sims.terminate()
            await sims.wait()


async def main_instances(
    meters: int,
    window_s: float,
    instances: int,
    postgres: bool,
    folder: Path,
    full_collection_s: float | None,
) -> dict[str, Any]:
    """The site served by `instances` processes (benchmarks/site_instances.py)."""
    from site_instances import run_instances

    logging.basicConfig(level=logging.WARNING)
    data = site_data(meters, folder, full_collection_s)
    (folder / "site.toml").write_text(tomli_w.dumps(data))
    return await run_instances(data, folder, instances, window_s, postgres)


async def historian_dropped(runtime: Runtime) -> int:
    """Lines the historian threw away, in memory or by its drop policy (its statistics)."""
    for service in runtime.services:
        if service.name == "historian":
            stats = await service.stats()  # type: ignore[attr-defined]
            return int(stats.get("dropped_lines", 0)) + service.memory_dropped_lines  # type: ignore[attr-defined]
    raise RuntimeError("the historian is not running: every service must be on")


def _lost_commands(site_file: Path) -> int:
    """Meter commands left SENT after the service stopped (each should have ended)."""
    from openprepay.core.db import Database

    data = load_site(site_file)
    url = data.sections["database"]["url"]
    db = Database(url)
    try:
        with db.read() as conn:
            c = t.meter_command
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(c).where(c.c.state == "SENT")
                ).scalar()
            )
    finally:
        db.dispose()


def report(figures: dict[str, Any]) -> None:
    f = figures
    if f["max_write_lock_s"] is None:  # PostgreSQL: no writer lock, no in-process billing
        f = {**f, "max_write_lock_s": "-", "billing_lag_s": "-"}
    print(
        f"{f['meters']} meters at a {POLL_S:g} s poll: polls done / due {f['polls_done_ratio']}"
        f" ({f['samples_per_s']} samples/s), simulators' CPU {f['simulator_cpu_percent']}%, "
        f"service CPU {f['service_cpu_percent']}% "
        f"({f['cpu_ms_per_sample']} ms per sample)\n"
        f"event loop: lag p99 {f['loop_lag_p99_ms']} ms, worst stall {f['max_loop_stall_ms']} ms"
        f"; worst collector pause {f['max_gc_pause_ms']} ms "
        f"(the most CPU one collection used: {f['max_gc_cpu_ms']} ms)\n"
        f"longest write lock {f['max_write_lock_s']} s; billing lag {f['billing_lag_s']} s; "
        f"RSS {f['rss_mb_per_meter']} MB per meter\n"
        f"start-up {f['startup_s']} s (every meter read after {f['all_read_s']} s, the heap "
        f"settled after {f['settled_s']} s: {f['settling_collection_ms']} ms; later full "
        f"collections {f['full_collection_ms'] or '-'} ms), stop "
        f"{f['stop_s']} s; commands left SENT "
        f"{f['lost_commands']}, historian lines dropped {f['historian_dropped']}"
    )
    for line in [*f["errors"], *(f"write lock held {w}" for w in f["slow_writes_whole_run"])]:
        print(f"  {line}")
    if f["instances"] > 1:
        print(f"  per instance: polls done / due {f['instance_polls_done_ratio']}, CPU "
              f"{f['instance_cpu_percent']}%, RSS {f['instance_rss_mb']} MB, stop "
              f"{f['instance_stop_s']} s")  # fmt: skip
    print(f"  load average {f['loadavg']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=2000)
    parser.add_argument("--window", type=float, default=60.0, help="steady window, seconds")
    parser.add_argument(
        "--instances", type=int, default=1, help="openprepay run processes on one PostgreSQL"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="one instance, as a process, on PostgreSQL"
    )
    parser.add_argument(
        "--process", action="store_true", help="one instance, as a process, on SQLite"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's folder (logs, stores) after it"
    )
    parser.add_argument(
        "--full-collection-s",
        type=float,
        help="[poll] full_collection_s: scheduled full collections inside the window",
    )
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # The site, its logs and stores (GBs at 20k meters): kept only when the run failed.
    folder = Path(tempfile.mkdtemp(prefix="site-capacity-"))
    try:
        if args.instances > 1 or args.postgres or args.process:
            postgres = args.instances > 1 or args.postgres
            figures = asyncio.run(
                main_instances(
                    args.meters,
                    args.window,
                    args.instances,
                    postgres,
                    folder,
                    args.full_collection_s,
                )
            )
        else:
            figures = asyncio.run(main(args.meters, args.window, folder, args.full_collection_s))
    except BaseException:
        print(f"the run failed; its folder is kept: {folder}", file=sys.stderr)
        raise
    if args.keep:
        print(f"the run's folder: {folder}", file=sys.stderr)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    report(figures)
