"""Failover of a link between instances on one PostgreSQL (issue 13), and PostgreSQL top-up
throughput from several writers.

Part 1, failover: two instances (`openprepay run`, real processes, `[cluster]` with the
default lease: TTL 10 s, heartbeat 2 s, margin 3 s) share a throwaway PostgreSQL database and
one simulated RS-485 gateway (a REMOTE meter and a LOCAL meter). Each instance reaches the
gateway through its own loopback relay, which notes who sent each frame and when. While
top-ups (a RECHARGE to the LOCAL meter for half of them) and supply commands stream in from
this process, the owner of the link is killed with SIGKILL `--rounds` times and restarted
as the standby; each time, the failover is the time from the kill to the first frame the
other instance sends to the gateway. Afterwards, with every command settled:

- `lost_payments`: top-ups acknowledged to the caller that are not in the ledger;
- `double_payments`: payment references credited more than once;
- `double_commands`: RECHARGEs the LOCAL meter took more than once (its purchase count and
  its money against the ledger), and interleavings of the two instances on the gateway;
- `openprepay ledger verify` must pass.

Part 2, throughput: durable top-ups per second from 16 callers split over two writers (two
engines, each with its own group commit, as two instances would have), beside a bare loop of
one INSERT per commit on the same database (`pg_topups_ratio`).

    .venv/bin/python benchmarks/failover.py [--rounds 5] [--seconds 6]

Ends with one JSON line. Target: failover median <= 10 s with the default TTL; zero doubles
and losses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import tomli_w
from _postgres import throwaway_database

from openprepay.core import ledger
from openprepay.core.app.demo import anytime_policy
from openprepay.core.app.drill import (
    PaymentStream,
    commands_settled,
    open_drill_accounts,
    verify_ledger,
)
from openprepay.core.app.plugins import DISABLE_ENV, Plugins
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.cluster import lease
from openprepay.core.config.site import load_site, parse_site
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.db import Database, open_database
from openprepay.core.db import schema as t
from openprepay.core.db.group import GroupCommit
from openprepay.core.operations import Operations
from openprepay.core.prepay import accounts as acc
from openprepay.core.prepay.feecontrol import FeeThresholds

OPENPREPAY = str(Path(sys.executable).parent / "openprepay")
CLIENTS = 16
NAMES = ("a", "b")


def site_data() -> dict[str, Any]:
    return {
        "site": {"id": "bench", "timezone": "Asia/Shanghai"},
        "poll": {"interval_s": 0.5, "stats_interval_s": 60},
        "links": {
            "gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 1, "timeout_ms": 300}
        },
        "buildings": {"A": {"floors": ["1"]}},
        "rooms": {
            "A-101": {"building": "A", "floor": "1"},
            "A-102": {"building": "A", "floor": "1"},
        },
        "devices": {
            "E-101": {
                "model": "acrel.DDSY1352",
                "link": "gw",
                "unit_id": 1,
                "room": "A-101",
                "control_mode": "REMOTE",
                "options": {"sim_load_kw": 0.2},
            },
            "E-102": {
                "model": "acrel.DDSY1352",
                "link": "gw",
                "unit_id": 3,
                "room": "A-102",
                "control_mode": "LOCAL",
                "options": {"sim_load_kw": 0.0, "sim_buy_count": 0, "sim_remaining": 0.0},
            },
        },
        "tariffs": {"flat": {"price": "0.5000"}},
        "prepay": {
            "policy": anytime_policy(),
            "engine": {
                "default_tariffs": {"electric": "flat"},
                "queue_poll_s": 0.1,
                "retry_initial_s": 0.5,
                "retry_max_s": 2.0,
                "command_lease_s": 5,
            },
        },
    }


class Relay:
    """Loopback relay to the gateway noting (time, instance) of every request frame."""

    def __init__(self, target: tuple[str, int], name: str, frames: list[tuple[float, str]]):
        self.target, self.name, self.frames = target, name, frames
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, log: bool) -> None:
            try:
                while data := await r.read(65536):
                    if log:
                        self.frames.append((time.monotonic(), self.name))
                    w.write(data)
                    await w.drain()
            except OSError:
                pass  # the instance was killed: its connection is reset
            w.close()

        await asyncio.gather(
            pump(reader, up_w, True), pump(up_r, writer, False), return_exceptions=True
        )


class Instance:
    def __init__(self, name: str, site_file: Path) -> None:
        self.name, self.site_file = name, site_file
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            OPENPREPAY,
            "run",
            str(self.site_file),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()


def owner(db: Database) -> str | None:
    with db.read() as conn:
        for row in lease.leases(conn):
            if row.name == "gw" and row.left_s is not None and row.left_s > 0:
                return row.owner
    return None


async def wait_for(predicate: Any, timeout: float, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not happen in time")
        await asyncio.sleep(step)


async def failover(db_url: str, rounds: int, tmp: Path) -> dict[str, Any]:
    os.environ[DISABLE_ENV] = "opcua,historian"
    plugins = Plugins.load()
    data = site_data()
    options = SimulatorOptions(ephemeral_ports=True, lean_server=True, advance_every_s=1.0)
    sims = SimulatedSite(parse_site(data), plugins, options)
    await sims.start()
    frames: list[tuple[float, str]] = []
    instances: dict[str, Instance] = {}
    stream: PaymentStream | None = None
    streamer: threading.Thread | None = None
    try:
        for name in NAMES:
            port = await Relay(sims.addresses["gw"], name, frames).start()
            mine = site_data()
            mine["links"]["gw"]["port"] = port
            mine["database"] = {"url": db_url}
            mine["cluster"] = {"instance_id": name}
            mine["prepay"]["engine"]["instance"] = name
            (tmp / name).mkdir()
            path = tmp / name / "site.toml"
            path.write_text(tomli_w.dumps(mine))
            instances[name] = Instance(name, path)
        site = load_site(instances["a"].site_file)
        db = open_database(site)
        ops = Operations(site, db, models=plugins.models)
        with db.begin() as conn:
            open_drill_accounts(conn, site, plugins.models)
        for instance in instances.values():
            await instance.start()
        await wait_for(lambda: owner(db) in NAMES, 120)
        stream = PaymentStream(ops, actor="bench", prefix="pay", amount_spread=50, command_every=6)
        streamer = threading.Thread(target=stream.run, daemon=True)
        streamer.start()
        times: list[float] = []
        rng = random.Random(13)
        for _ in range(rounds):
            await wait_for(lambda: owner(db) in NAMES, 120)
            victim = owner(db)
            assert victim is not None
            # The owner is busy with the stream's commands; the kill falls at a random point
            # of its heartbeat cycle (seeded: the same schedule every run).
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            killed_at = time.monotonic()
            await instances[victim].kill()
            await wait_for(
                lambda v=victim, k=killed_at: any(at > k and n != v for at, n in frames), 120
            )
            first = min(at for at, n in frames if at > killed_at and n != victim)
            times.append(first - killed_at)
            print(f"  killed {victim}: link polled again after {times[-1]:.2f} s", flush=True)
            await instances[victim].start()
        stream.stop.set()
        streamer.join()

        await wait_for(lambda: commands_settled(db), 180, step=0.2)
        verify_status, _ = await verify_ledger(instances["a"].site_file)
        with db.read() as conn:
            topups = conn.execute(
                sa.select(t.topup.c.reference, t.topup.c.account_id, t.topup.c.amount_fen)
            ).all()
        refs = [r.reference for r in topups]
        in_ledger = set(refs)
        lost = sum(1 for ref, _, _ in stream.ok if ref not in in_ledger)
        doubles = len(refs) - len(in_ledger) + sum(1 for ref in stream.failed if ref in in_ledger)
        local_fen = sum(r.amount_fen for r in topups if r.account_id == "A-102")
        local_count = sum(1 for r in topups if r.account_id == "A-102")
        sim: Any = sims.devices["E-102"]
        over_count = max(sim.buy_count - local_count, 0)
        over_money = max(round(sim.remaining * 100) - local_fen, 0)
        double_commands = over_count + (1 if over_money else 0) + interleavings(frames)
        return {
            "failover_s": times,
            "verify_ok": verify_status == 0,
            "acknowledged": len(stream.ok),
            "indeterminate": len(stream.info),
            "lost_payments": lost,
            "double_payments": doubles,
            "double_commands": double_commands,
            "meter_short_fen": max(local_fen - round(sim.remaining * 100), 0),
            "db": db,
        }
    finally:
        if stream is not None:
            stream.stop.set()
        if streamer is not None:
            streamer.join()
        for instance in instances.values():
            await instance.kill()
        await sims.stop()


def interleavings(frames: list[tuple[float, str]]) -> int:
    """Times an instance talked to the gateway again after the other had taken over while
    it was still alive (a kill ends a run; a restarted instance starts a new one)."""
    bad = 0
    ordered = sorted(frames)
    for (t1, n1), (_t2, n2), (t3, n3) in zip(ordered, ordered[1:], ordered[2:], strict=False):
        if n1 == n3 != n2 and t3 - t1 < 1.0:  # back and forth within a second
            bad += 1
    return bad


def throughput(db_url: str, seconds: float) -> tuple[float, float]:
    """(bare INSERT-per-commit/s, top-ups/s from CLIENTS callers over two writers)."""
    dbs = [Database(db_url), Database(db_url)]
    try:
        with dbs[0].begin() as conn:
            for a in range(200):
                acc.create_account(
                    conn,
                    acc.AccountSpec(
                        f"T-{a:04d}", "bench", thresholds=FeeThresholds(hoard_limit_fen=0)
                    ),
                )
            conn.execute(sa.text("CREATE TABLE bench_insert (id BIGINT PRIMARY KEY, v BIGINT)"))
        insert = sa.text("INSERT INTO bench_insert (id, v) VALUES (:id, :v)")
        n = 0
        stop_at = time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < stop_at:
            with dbs[0].begin() as conn:
                conn.execute(insert, {"id": n, "v": n})
            n += 1
        base = n / (time.perf_counter() - start)

        writers = [GroupCommit(db) for db in dbs]
        done = [0] * CLIENTS
        run = uuid.uuid4().hex[:6]
        stop_at = time.perf_counter() + seconds

        def client(c: int) -> None:
            writer = writers[c % 2]
            i = 0
            while time.perf_counter() < stop_at:
                account, key = f"T-{(c * 7919 + i) % 200:04d}", f"{run}-{c}-{i}"
                writer.run(lambda conn, a=account, k=key: ledger.topup(conn, a, 100, k))
                i += 1
            done[c] = i

        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        product = sum(done) / (time.perf_counter() - start)
        for writer in writers:
            writer.close()
        with dbs[0].read() as conn:
            if not ledger.verify(conn).ok:
                raise SystemExit("ledger broken after the throughput run")
        return base, product
    finally:
        for db in dbs:
            db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="kills of the owner")
    parser.add_argument("--seconds", type=float, default=6.0, help="throughput measurement")
    args = parser.parse_args()
    with throwaway_database("openprepay_failover") as db_url:
        with tempfile.TemporaryDirectory() as tmp:
            result = asyncio.run(failover(db_url, args.rounds, Path(tmp)))
        result.pop("db").dispose()
        base, product = throughput(db_url, args.seconds)
    times = sorted(result["failover_s"])
    median = statistics.median(times)
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    print(
        f"failover over {len(times)} kills: median {median:.2f} s, p95 {p95:.2f} s "
        f"(target median <= 10 s: {'met' if median <= 10 else 'NOT met'}); "
        f"{result['acknowledged']} top-ups acknowledged, {result['indeterminate']} unknown; "
        f"lost {result['lost_payments']}, doubled {result['double_payments']}, commands "
        f"twice {result['double_commands']}; ledger verify "
        f"{'ok' if result['verify_ok'] else 'FAILED'}"
    )
    print(
        f"PostgreSQL: bare INSERT-per-commit {base:,.0f}/s; durable top-ups from {CLIENTS} "
        f"callers over two writers {product:,.0f}/s; ratio {product / base:.2f}"
    )
    print(
        json.dumps(
            {
                "bench": "failover",
                "failover_median_s": round(median, 2),
                "failover_p95_s": round(p95, 2),
                "rounds": len(times),
                "double_commands": result["double_commands"],
                "lost_payments": result["lost_payments"],
                "double_payments": result["double_payments"],
                "indeterminate_payments": result["indeterminate"],
                "ledger_verify_ok": result["verify_ok"],
                "pg_topups_per_s": round(product),
                "pg_baseline_inserts_per_s": round(base),
                "pg_topups_ratio": round(product / base, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
