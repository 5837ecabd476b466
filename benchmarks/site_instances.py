"""`site_capacity.py --instances N`: the site served by N `openprepay run` processes.

The instances share a throwaway PostgreSQL database (127.0.0.1:5432, trust auth; created and
dropped here) and split the links by `[cluster] links`: the links, in building order, cut
into N runs of about the same number of meters. Each instance has its own folder (site
file, historian store, OPC UA port and PKI). The simulators run in their own process as in
the one-process run, and one OPC UA client process per instance subscribes to the main
register of every meter that instance owns.

Everything is measured from outside the instances:

- polls done ÷ due from each meter's `Communication/polls_ok` point, read over OPC UA at the
  start and the end of the window with its source timestamp (the time of the statistics
  sample that last changed it): per meter the polls done between the two stamps, against
  the stamps' distance ÷ the poll interval; exact up to the meter's one poll in flight;
- CPU per instance from /proc/PID/stat (utime + stime) over the window, RSS its VmHWM;
- the loop's worst stall, lag p99, the collector's worst pause and the longest database
  write transaction: the maximum over the window of each instance's `Diagnostics:service`
  points (a subscription);
- start-up (launch → every meter read once), `stop` (SIGTERM → exit, per instance);
- the heap settled: the window starts once every instance has frozen the state the site
  built after start-up (`core.app.vitals`, ~90 s after its start-up, after the clients
  subscribed); that pause and those of the scheduled full collections are read from the
  instances' logs (`settling_collection_ms`, `full_collection_ms`);
- commands left SENT (the database, after every instance stopped), historian lines dropped
  (each instance's `Diagnostics:historian` point at the end of the window).

`--instances 1 --process` runs one instance the same way (no `[cluster]`) on the site's SQLite
file, `--instances 1 --postgres` on PostgreSQL: what PostgreSQL costs against SQLite, and
what the measurement from outside says against the in-process one.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
import tomli_w
from _capacity import POLL_S, free_ports, process_cpu_s, spawn_client
from _postgres import throwaway_database

from openprepay.core.app.demo import open_demo_accounts
from openprepay.core.app.plugins import Plugins
from openprepay.core.app.services import command_services
from openprepay.core.config.site import load_site
from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.model import MeterKind

OPENPREPAY = str(Path(sys.executable).parent / "openprepay")
#: Nodes per OPC UA Read request (each is answered in one go on the instance's loop).
READ_BATCH = 1000
VITALS = (
    "loop_stall_max_ms", "loop_lag_p99_ms", "gc_pause_max_ms", "gc_pause_cpu_max_ms",
    "db_write_max_ms",
)  # fmt: skip
SERVICE_NODE = "Diagnostics:service/openprepay.service/{}"
SLOW_WRITE = re.compile(r"held the database (?P<s>[0-9.]+) s \((?P<where>[^)]*\))\)")
HISTORIAN_DROPPED = "Diagnostics:historian/openprepay.historian/dropped_lines"
SETTLING_PAUSE = "Diagnostics:service/openprepay.service/gc_settling_pause_ms"
SETTLED = re.compile(r"heap settled: (?P<ms>[0-9]+) ms")
FULL_COLLECTION = re.compile(r"scheduled full collection: (?P<ms>[0-9]+) ms")


# -- the database ------------------------------------------------------------------------
def open_accounts(site_file: Path) -> float:
    """The schema and an account per room with its opening top-up (the demo's), before any
    instance starts: every instance finds them in the shared database. Returns seconds."""
    started = time.perf_counter()
    site = load_site(site_file)
    plugins = Plugins.load()
    db = Database.for_site(site)
    try:
        db.upgrade()
        services = command_services(site, plugins.models, db)
        # open_demo_accounts needs what a runtime has: the door, the database, the bus.
        shim = SimpleNamespace(
            operations=services.operations, db=db, site=site, plugins=plugins, bus=services.bus
        )
        open_demo_accounts(shim)  # type: ignore[arg-type]
    finally:
        db.dispose()
    return time.perf_counter() - started


def commands_left_sent(db_url: str) -> int:
    db = Database(db_url)
    try:
        with db.read() as conn:
            c = t.meter_command
            query = sa.select(sa.func.count()).select_from(c).where(c.c.state == "SENT")
            return int(conn.execute(query).scalar() or 0)
    finally:
        db.dispose()


# -- splitting the site ------------------------------------------------------------------
def split_links(data: dict[str, Any], n: int) -> list[list[str]]:
    """The links in building order (`main-A`, `gw-A-…`, `main-B`, …) cut into `n` runs of
    about the same number of meters: each instance gets whole buildings where the cut
    allows, and its half of the meters either way."""
    per_link: dict[str, int] = dict.fromkeys(data["links"], 0)
    for device in data["devices"].values():
        per_link[device["link"]] += 1

    def building_order(link: str) -> tuple[str, str]:
        building = link.split("-")[1]
        return building, link

    ordered = sorted(per_link, key=building_order)
    total = sum(per_link.values())
    runs: list[list[str]] = [[] for _ in range(n)]
    done = 0
    for link in ordered:
        # The run whose share the middle of this link falls in.
        middle = done + per_link[link] / 2
        runs[min(n - 1, int(middle * n / total))].append(link)
        done += per_link[link]
    return runs


@dataclass
class Instance:
    """One `openprepay run` process: its site file, its links and meters, its OPC UA port."""

    name: str
    folder: Path
    site_file: Path
    port: int
    links: list[str]
    meters: list[str]
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    stop_s: float | None = None
    client: Any = None  # the measuring OPC UA client of this process
    ns: int = 0  # the site's namespace index on that client
    subscriber: Any = None  # the subscribing OPC UA client process
    vitals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(VITALS, 0.0))

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/openprepay"

    def cpu_s(self) -> float:
        assert self.proc is not None
        return process_cpu_s(self.proc.pid)

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


def instance_sites(
    data: dict[str, Any], folder: Path, db_url: str, n: int, ports: list[int]
) -> list[Instance]:
    """A site file per instance: the shared database, its own OPC UA port and PKI, and
    with several instances a `[cluster]` section whose `links` are its run of links."""
    models = Plugins.load().models
    out = []
    for i, links in enumerate(split_links(data, n)):
        name = f"box-{chr(ord('a') + i)}"
        mine = copy.deepcopy(data)
        mine["database"] = {"url": db_url}
        mine["opcua"] = {**data["opcua"], "port": ports[i], "pki_dir": str(folder / name / "pki")}
        mine["prepay"]["engine"]["instance"] = name
        if n > 1:
            mine["cluster"] = {"instance_id": name, "links": links}
        (folder / name).mkdir(parents=True)
        site_file = folder / name / "site.toml"
        site_file.write_text(tomli_w.dumps(mine))
        devices = data["devices"]
        meters = sorted(
            d
            for d in devices
            if devices[d]["link"] in links and is_metered(models[devices[d]["model"]].kind)
        )
        out.append(Instance(name, folder / name, site_file, ports[i], links, meters))
    return out


# -- OPC UA ------------------------------------------------------------------------------
async def connect(instance: Instance, timeout_s: float) -> None:
    """The measuring client, once the instance's OPC UA server answers."""
    from asyncua import Client

    deadline = time.monotonic() + timeout_s
    while True:
        client = Client(instance.url, timeout=120, watchdog_intervall=600)
        try:
            await client.connect()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)
            continue
        instance.client = client
        instance.ns = await client.get_namespace_index(
            f"urn:openprepay:site:{load_site(instance.site_file).id}"
        )
        return


async def read_polls(instance: Instance) -> dict[str, tuple[int, float]]:
    """Each meter's `polls_ok` and its source timestamp (epoch seconds); meters not read
    yet are left out."""
    from asyncua import ua

    client, ns = instance.client, instance.ns
    out: dict[str, tuple[int, float]] = {}
    for i in range(0, len(instance.meters), READ_BATCH):
        part = instance.meters[i : i + READ_BATCH]
        params = ua.ReadParameters()
        params.TimestampsToReturn = ua.TimestampsToReturn.Source
        for meter in part:
            rv = ua.ReadValueId()
            rv.NodeId = ua.NodeId(f"Meter:{meter}/Communication/polls_ok", ns)
            rv.AttributeId = ua.AttributeIds.Value
            params.NodesToRead.append(rv)
        values = await client.uaclient.read(params)
        for meter, dv in zip(part, values, strict=True):
            if dv.StatusCode.is_good() and dv.Value is not None and dv.Value.Value:
                out[meter] = (int(dv.Value.Value), dv.SourceTimestamp.timestamp())
    return out


async def read_value(instance: Instance, ident: str) -> Any:
    from asyncua import ua

    node = instance.client.get_node(ua.NodeId(ident, instance.ns))
    return await node.read_value()


class VitalsWatch:
    """Subscribed to an instance's service vitals: the maximum of each over the window."""

    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.names: dict[Any, str] = {}

    async def start(self) -> None:
        from asyncua import ua

        i = self.instance
        nodes = [i.client.get_node(ua.NodeId(SERVICE_NODE.format(v), i.ns)) for v in VITALS]
        self.names = {n.nodeid: v for n, v in zip(nodes, VITALS, strict=True)}
        self.sub = await i.client.create_subscription(1000, self)
        await self.sub.subscribe_data_change(nodes, queuesize=10)

    def reset(self) -> None:
        self.instance.vitals = dict.fromkeys(VITALS, 0.0)

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        name = self.names.get(node.nodeid)
        if name is not None and isinstance(val, int | float):
            v = self.instance.vitals
            v[name] = max(v[name], float(val))


async def wait_settled(instances: list[Instance], timeout_s: float) -> bool:
    """Until every instance's heap has settled (core/app/vitals.py)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = [float(await read_value(i, SETTLING_PAUSE) or -1) >= 0 for i in instances]
        if all(done):
            return True
        await asyncio.sleep(2.0)
    return False


def full_collections(instances: list[Instance]) -> tuple[list[int], list[int]]:
    """The pauses (ms) the instances logged settling their heaps, and those of their
    scheduled full collections."""
    settling: list[int] = []
    full: list[int] = []
    for i in instances:
        lines = (i.folder / "run.log").read_text(errors="replace").splitlines()
        settling.extend(int(hit["ms"]) for line in lines if (hit := SETTLED.search(line)))
        full.extend(int(hit["ms"]) for line in lines if (hit := FULL_COLLECTION.search(line)))
    return settling, full


async def wait_all_read(instances: list[Instance], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    said = time.monotonic()
    while time.monotonic() < deadline:
        read = [len(await read_polls(i)) for i in instances]
        if all(r >= len(i.meters) for r, i in zip(read, instances, strict=True)):
            return True
        if time.monotonic() - said > 10:
            print(f"  meters read: {read} of {[len(i.meters) for i in instances]}", flush=True)
            said = time.monotonic()
        await asyncio.sleep(3.0)
    return False


def polls_between(
    before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]], poll_s: float
) -> tuple[int, float]:
    """(polls done, polls due) over each meter's two stamps."""
    done, due = 0, 0.0
    for meter, (n0, t0) in before.items():
        n1, t1 = after.get(meter, (n0, t0))
        done += n1 - n0
        due += (t1 - t0) / poll_s
    return done, due


# -- the processes -----------------------------------------------------------------------
async def launch(instance: Instance) -> None:
    log = (instance.folder / "run.log").open("wb")
    instance.started_at = time.perf_counter()
    instance.proc = await asyncio.create_subprocess_exec(
        OPENPREPAY, "run", str(instance.site_file), stdout=log, stderr=log,
    )  # fmt: skip


async def stop(instance: Instance) -> None:
    """SIGTERM → exit, timed (killed after 60 s)."""
    proc = instance.proc
    assert proc is not None
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
    instance.stop_s = time.perf_counter() - started


# -- the run -----------------------------------------------------------------------------
async def run_instances(
    data: dict[str, Any], folder: Path, n: int, window_s: float, postgres: bool = True
) -> dict[str, Any]:

    site_file = folder / "site.toml"
    sims_log = (folder / "simulate.log").open("wb")
    sims = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "openprepay.core.cli", "simulate", str(site_file),
        "--speedup", "1", stdout=sims_log, stderr=sims_log,
    )  # fmt: skip
    instances: list[Instance] = []
    errors: list[str] = []
    database = (
        throwaway_database("openprepay_capacity")
        if postgres
        else contextlib.nullcontext(data["database"]["url"])
    )
    with database as db_url:
        try:
            await asyncio.sleep(3 + len(data["links"]) / 200)  # the simulators listen
            if sims.returncode is not None:
                raise RuntimeError(f"the simulators exited: see {folder / 'simulate.log'}")
            instances = instance_sites(data, folder, db_url, n, free_ports(n))
            meters = sum(len(i.meters) for i in instances)
            accounts_s = await asyncio.to_thread(open_accounts, instances[0].site_file)
            print(f"{meters} meters on {len(data['links'])} links, {n} instance(s) "
                  f"({[len(i.meters) for i in instances]} meters); accounts opened in "
                  f"{accounts_s:.1f} s", flush=True)  # fmt: skip
            t0 = time.perf_counter()
            await asyncio.gather(*(launch(i) for i in instances))
            await asyncio.gather(*(connect(i, 600) for i in instances))
            startup_s = time.perf_counter() - t0  # every OPC UA server answers
            all_read = await wait_all_read(instances, 600)
            all_read_s = time.perf_counter() - t0
            print(f"start-up {startup_s:.1f} s, every meter read after {all_read_s:.1f} s"
                  f"{'' if all_read else ' (not every meter answered)'}", flush=True)  # fmt: skip
            models = Plugins.load().models
            for i in instances:
                i.subscriber = await spawn_client(
                    i.url,
                    f"urn:openprepay:site:{data['site']['id']}",
                    [f"Meter:{m}/{models[data['devices'][m]['model']].total_point}"
                     for m in i.meters],
                    i.folder,
                )  # fmt: skip
            watches = [VitalsWatch(i) for i in instances]
            for w in watches:
                await w.start()
            await asyncio.sleep(POLL_S)  # the subscriptions settle
            if not await wait_settled(instances, 600):
                errors.append("an instance ran no scheduled full collection in 600 s")
            settled_s = time.perf_counter() - t0
            print(f"the heap settled after {settled_s:.1f} s", flush=True)
            for w in watches:
                w.reset()
            before = [await read_polls(i) for i in instances]
            cpu0, w0 = [i.cpu_s() for i in instances], time.perf_counter()
            sims_cpu0 = process_cpu_s(sims.pid)
            clients_cpu0 = sum(process_cpu_s(i.subscriber.pid) for i in instances)
            await asyncio.sleep(window_s)
            cpu = [i.cpu_s() - c for i, c in zip(instances, cpu0, strict=True)]
            sims_cpu = process_cpu_s(sims.pid) - sims_cpu0
            clients_cpu = sum(process_cpu_s(i.subscriber.pid) for i in instances) - clients_cpu0
            window = time.perf_counter() - w0
            after = [await read_polls(i) for i in instances]
            rss = [i.peak_rss_mb() for i in instances]
            dropped = [int(await read_value(i, HISTORIAN_DROPPED) or 0) for i in instances]
            vitals = [dict(i.vitals) for i in instances]
            for i in instances:
                assert i.subscriber.stdin is not None
                i.subscriber.stdin.write(b"done\n")  # the clients leave before the servers
                await asyncio.wait_for(i.subscriber.wait(), 60)
                await i.client.disconnect()
                i.client = None
            await asyncio.gather(*(stop(i) for i in instances))
            lost = await asyncio.to_thread(commands_left_sent, db_url)
        finally:
            for i in instances:
                if i.subscriber is not None and i.subscriber.returncode is None:
                    i.subscriber.kill()
                if i.proc is not None and i.proc.returncode is None:
                    i.proc.kill()
                    await i.proc.wait()
            if sims.returncode is None:
                sims.terminate()
                await sims.wait()
    settling, later = full_collections(instances)
    per = [polls_between(b, a, POLL_S) for b, a in zip(before, after, strict=True)]
    done, due = sum(p[0] for p in per), sum(p[1] for p in per)
    ratio = done / due if due else 0.0
    samples_per_s = ratio * meters / POLL_S
    in_window = samples_per_s * window
    return {
        "bench": "site_capacity",
        "instances": n,
        "database": "postgresql" if postgres else "sqlite",
        "meters": meters,
        "polls_done_ratio": round(ratio, 3),
        "samples_per_s": round(samples_per_s, 1),
        "cpu_ms_per_sample": round(1000 * sum(cpu) / max(in_window, 1), 3),
        "service_cpu_percent": round(100 * sum(cpu) / window, 1),
        "instance_cpu_percent": [round(100 * c / window, 1) for c in cpu],
        # The simulated field devices share the box: what they take the service cannot.
        "simulator_cpu_percent": round(100 * sims_cpu / window, 1),
        "client_cpu_percent": round(100 * clients_cpu / window, 1),
        "instance_polls_done_ratio": [round(d / u, 3) if u else 0.0 for d, u in per],
        "loop_lag_p99_ms": max(v["loop_lag_p99_ms"] for v in vitals),
        "max_loop_stall_ms": max(v["loop_stall_max_ms"] for v in vitals),
        "max_gc_pause_ms": max(v["gc_pause_max_ms"] for v in vitals),
        # The most CPU one collection used: a pause longer than that waited for a core.
        "max_gc_cpu_ms": max(v["gc_pause_cpu_max_ms"] for v in vitals),
        # The longest write transaction (SQLite: the writer lock; PostgreSQL: its row locks).
        "max_write_lock_s": round(max(v["db_write_max_ms"] for v in vitals) / 1000, 3),
        "billing_lag_s": None,
        "rss_mb_per_meter": round(sum(rss) / meters, 3),
        "instance_rss_mb": [round(r, 1) for r in rss],
        "accounts_s": round(accounts_s, 1),
        "startup_s": round(startup_s, 1),
        "all_read_s": round(all_read_s, 1),
        "settled_s": round(settled_s, 1),
        "settling_collection_ms": max(settling, default=None),
        "full_collection_ms": max(later, default=None),
        "stop_s": round(max(i.stop_s or 0.0 for i in instances), 2),
        "instance_stop_s": [round(i.stop_s or 0.0, 2) for i in instances],
        "lost_commands": lost,
        "historian_dropped": sum(dropped),
        "errors": errors,
        "slow_writes_whole_run": slow_writes(instances),
        "ratio": round(ratio, 3),
        "loadavg": os.getloadavg(),
    }


def slow_writes(instances: list[Instance], most: int = 5) -> list[str]:
    """The longest write transactions the instances logged over the whole run (core/db/
    write_times.py logs those over a second with the code that ran them), longest first."""
    found: list[tuple[float, str]] = []
    for i in instances:
        for line in (i.folder / "run.log").read_text(errors="replace").splitlines():
            hit = SLOW_WRITE.search(line)
            if hit:
                found.append((float(hit["s"]), f"{hit['s']} s, {i.folder.name}: {hit['where']}"))
    return [text for _, text in sorted(found, reverse=True)[:most]]


def is_metered(kind: MeterKind) -> bool:
    return kind in (MeterKind.ELECTRIC, MeterKind.WATER)
