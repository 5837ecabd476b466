"""OPC UA publishing: OpenPrepay's server beside a bare asyncua server doing the same writes.

Both servers hold 2,000 meters × 15 Double variables (30,000), both offer Basic256Sha256
SignAndEncrypt, and one client in a separate process subscribes to all 30,000 variables
of the server under test (publishing interval 100 ms, queue size 1).

- Bare loop: a plain asyncua `Server` whose 30,000 variables are written directly with
  `write_attribute_value(nodeid, Value, DataValue(Variant, SourceTimestamp, ServerTimestamp))`,
  yielding to the loop every 400 writes like the product does.
- Product: the OpenPrepay server (typed meters with units and ranges, health, methods,
  events, security): samples of a 15-point model published on the core's event bus, as the
  link arbiter does; the publisher writes what changed.

Case 1 — throughput: every variable changes in every round, rounds as fast as the server
  takes them (the next round starts when the previous one is written). Sustained updates
  (variable writes with the client subscribed) per second; target ratio >= 0.50.
Case 2 — lag: realistic offered load, every variable changing once per 10 s (3,000
  updates/s, meters spread evenly over the 10 s). Time from the sample (its SourceTimestamp)
  to the client's notification: median and p95; target median < 1 s.
Case 3 — steady values: every round has the same values with a newer time (a site whose
  meters do not change). The product writes each variable again with the new
  SourceTimestamp (`[opcua] timestamp_refresh_s`, here 0: on every sample, the worst
  case); the bare loop writes the same DataValues. Subscribers with the default trigger
  are not notified. Rewrites per second; ratio reported, no target (it is the price of
  showing a frozen value from a steady one).

Ends with one JSON line: {"bench": "opcua", "ratio": ..., "updates_per_s": ...,
"median_lag_ms": ..., "p95_lag_ms": ..., "steady_ratio": ..., ...}.
Run: .venv/bin/python benchmarks/opcua.py [--meters 2000] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from asyncua import Client, Server, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

POINTS = 15
UNITS = ["kWh", "kWh", "kWh", "kWh", "kWh", "V", "A", "kW", "kvar", "kVA", "", "Hz", "kW",
         "kW", "kW"]  # fmt: skip
CLIENT_URI = "urn:openprepay:bench:client"
PUBLISHING_MS = 100
YIELD_EVERY = 400
#: The round number whose values every steady round repeats.
STEADY = -1


# -- the client process --------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.lags: list[float] = []
        self.measure_lag = False

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.count += 1
        if self.measure_lag:
            source = data.monitored_item.Value.SourceTimestamp
            if source is not None:
                if source.tzinfo is None:
                    source = source.replace(tzinfo=UTC)
                self.lags.append((datetime.now(UTC) - source).total_seconds())

    def status_change_notification(self, status: Any) -> None:
        pass


async def client_main() -> None:
    """Wait for a config file name on stdin, subscribe to every variable it names, then
    answer commands on stdin with counts and lags (started early: imports overlap the
    servers' start)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config_file = (await reader.readline()).decode().strip()
    if not config_file:
        return
    config = json.loads(Path(config_file).read_text())  # noqa: ASYNC240 (before any I/O)
    logging.basicConfig(level=logging.ERROR)
    # The client's health probe must not give up while the server is busy subscribing
    # 30,000 items (it waits 1 s by default).
    for attempt in range(600):  # the server may still be starting
        client = Client(config["url"], timeout=60, watchdog_intervall=30)
        client.application_uri = CLIENT_URI
        if config.get("user"):
            client.set_user(config["user"])
            client.set_password(config["password"])
        try:
            await client.set_security(
                SecurityPolicyBasic256Sha256,
                config["cert"],
                config["key"],
                mode=ua.MessageSecurityMode.SignAndEncrypt,
            )
            await client.connect()
            break
        except OSError:
            if attempt == 599:
                raise
            await asyncio.sleep(0.1)
    try:
        ns = await client.get_namespace_index(config["namespace"])
        nodes = [client.get_node(ua.NodeId(ident, ns)) for ident in config["nodes"]]
        counter = Counter()
        sub = await client.create_subscription(
            ua.CreateSubscriptionParameters(
                RequestedPublishingInterval=PUBLISHING_MS,
                RequestedLifetimeCount=10000,
                RequestedMaxKeepAliveCount=100,
                MaxNotificationsPerPublish=0,
                PublishingEnabled=True,
            ),
            counter,
        )
        for i in range(0, len(nodes), 5000):
            await sub.subscribe_data_change(nodes[i : i + 5000], queuesize=1)
        print(json.dumps({"ready": len(nodes)}), flush=True)
        while True:
            line = (await reader.readline()).decode().strip()
            if not line or line == "quit":
                break
            if line == "lag":
                counter.lags.clear()
                counter.measure_lag = True
            elif line == "count":
                print(json.dumps({"count": counter.count, "t": time.monotonic()}), flush=True)
            elif line == "lags":
                counter.measure_lag = False
                lags = sorted(counter.lags)
                print(json.dumps({"lags": _percentiles(lags)}), flush=True)
        await sub.delete()
    finally:
        await client.disconnect()


def _percentiles(lags: list[float]) -> dict[str, float]:
    if not lags:
        return {"n": 0, "median_ms": float("nan"), "p95_ms": float("nan")}
    return {
        "n": len(lags),
        "median_ms": round(statistics.median(lags) * 1000, 1),
        "p95_ms": round(lags[min(len(lags) - 1, int(len(lags) * 0.95))] * 1000, 1),
    }


class ClientProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls) -> ClientProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--client",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def begin(self, config: dict[str, Any], folder: Path) -> None:
        """Connect (retrying until the server listens) and subscribe to everything."""
        path = folder / f"client-{config['name']}.json"
        path.write_text(json.dumps(config))
        await self.ask(str(path))

    async def subscribed(self) -> None:
        ready = await self.read()
        assert "ready" in ready, ready

    async def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if not line:
            raise RuntimeError("the client process ended")
        return json.loads(line)

    async def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((command + "\n").encode())
        await self.proc.stdin.drain()
        return await self.read() if command in ("count", "lags") else {}

    async def close(self) -> None:
        if self.proc.returncode is None:
            await self.ask("quit")
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()


# -- the servers ----------------------------------------------------------------------------


def make_cert(folder: Path, name: str, uri: str, server: bool) -> tuple[Path, Path]:
    key = cert_gen.generate_private_key()
    usage = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = cert_gen.generate_self_signed_app_certificate(
        key, uri, {"commonName": name},
        [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")],
        extended=usage, days=2,
    )  # fmt: skip
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


def bench_model() -> Any:
    from openprepay.core.model import DeviceModel, MeterKind, PointRole, PointSpec

    points = tuple(
        PointSpec(
            f"p{i:02d}",
            UNITS[i],
            f"bench point {i}",
            PointRole.CUMULATIVE if UNITS[i] == "kWh" else PointRole.MEASUREMENT,
            low=0.0,
            high=1e9,
        )
        for i in range(POINTS)
    )
    return DeviceModel("bench.meter", "Bench", "Meter", MeterKind.ELECTRIC, "15 points", points)


def bench_site(meters: int) -> Any:
    from openprepay.core.config.site import parse_site

    per_gateway = 50
    floors = max(1, meters // 100)
    data: dict[str, Any] = {
        "site": {"id": "bench"},
        "links": {},
        "buildings": {"B": {"floors": [str(f) for f in range(floors)]}},
        "rooms": {},
        "devices": {},
    }
    for m in range(meters):
        gateway = f"gw{m // per_gateway:03d}"
        data["links"].setdefault(gateway, {"type": "rtu_over_tcp", "host": "127.0.0.1"})
        room = f"R{m:05d}"
        data["rooms"][room] = {"building": "B", "floor": str(m % floors)}
        data["devices"][f"M{m:05d}"] = {
            "model": "bench.meter",
            "link": gateway,
            "unit_id": m % per_gateway + 1,
            "room": room,
        }
    return parse_site(data, source="bench")


async def product_server(site: Any, folder: Path, client_cert: Path) -> Any:
    from openprepay.core.events import EventBus
    from openprepay.core.field.latest import LatestReadings
    from openprepay.opcua_server.assembly import make_service
    from openprepay.opcua_server.config import OpcUaConfig
    from openprepay.opcua_server.pki import Pki, trust
    from openprepay.opcua_server.users import add_user

    bus = EventBus()
    runtime = SimpleNamespace(
        site=site,
        plugins=SimpleNamespace(models={"bench.meter": bench_model()}),
        bus=bus,
        readings=LatestReadings(bus),
        history=None,
        operations=None,
        announcements=[],
    )
    pki_dir = folder / "product-pki"
    config = OpcUaConfig(
        port=0, hostname="localhost", pki_dir=pki_dir, history=False, timestamp_refresh_s=0.0
    )
    add_user(config.users_path, "bench", "bench-password", "viewer")
    trust(Pki(pki_dir), str(client_cert))
    service = make_service(config, runtime)  # type: ignore[arg-type]
    await service.start()
    return service


async def bare_server(
    meters: int, folder: Path, port: int = 0
) -> tuple[Server, list[ua.NodeId], int]:
    from openprepay.opcua_server.nodes import NodeWriter

    cert, key = make_cert(folder, "bare-server", "urn:bench:bare", server=True)
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bare/")
    await server.set_application_uri("urn:bench:bare")
    await server.load_certificate(cert.read_bytes())
    await server.load_private_key(key.read_bytes(), format="PEM")
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    ns = await server.register_namespace("urn:bench:bare")
    # 30,000 plain variables; created directly for speed (building is not measured).
    writer = NodeWriter(server.iserver.aspace)
    folder_id = ua.NodeId("Meters", ns)
    writer.object(folder_id, ua.QualifiedName("Meters", ns), ua.NodeId(ua.ObjectIds.ObjectsFolder),
                  ua.NodeId(ua.ObjectIds.FolderType))  # fmt: skip
    ids = []
    for m in range(meters):
        obj = ua.NodeId(f"M{m:05d}", ns)
        writer.object(obj, ua.QualifiedName(f"M{m:05d}", ns), folder_id,
                      ua.NodeId(ua.ObjectIds.BaseObjectType))  # fmt: skip
        for p in range(POINTS):
            nid = ua.NodeId(f"M{m:05d}/p{p:02d}", ns)
            value = ua.Variant(0.0, ua.VariantType.Double)
            writer.variable(
                nid, ua.QualifiedName(f"p{p:02d}", ns), obj, value, ua.NodeId(ua.ObjectIds.Double)
            )
            ids.append(nid)
    await server.start()
    return server, ids, server.bserver.port  # type: ignore[union-attr]


# -- the two drivers: same values, same cadence ----------------------------------------------


class BareDriver:
    def __init__(self, server: Server, ids: list[ua.NodeId], meters: int) -> None:
        self.write = server.iserver.aspace.write_attribute_value
        self.ids = ids
        self.meters = meters
        self.writes = 0

    async def meter(self, m: int, round_: int, at: datetime) -> None:
        now = datetime.now(UTC)
        base = m * POINTS
        for p in range(POINTS):
            dv = ua.DataValue(
                ua.Variant(float(round_ * 100 + p), ua.VariantType.Double),
                ua.StatusCode(),
                at,
                now,
            )
            await self.write(self.ids[base + p], ua.AttributeIds.Value, dv)
        self.writes += POINTS

    async def round(self, round_: int) -> None:
        at = datetime.now(UTC)
        since = 0
        for m in range(self.meters):
            await self.meter(m, round_, at)
            since += POINTS
            if since >= YIELD_EVERY:
                since = 0
                await asyncio.sleep(0)


class ProductDriver:
    def __init__(self, service: Any, meters: int) -> None:
        from openprepay.core.model import Sample

        self.Sample = Sample
        self.service = service
        self.bus = service.runtime.bus
        self.model = bench_model()
        self.meters = meters
        self.names = [f"p{p:02d}" for p in range(POINTS)]

    @property
    def writes(self) -> int:
        return self.service.publisher.writes

    async def meter(self, m: int, round_: int, at: datetime) -> None:
        values = {name: float(round_ * 100 + p) for p, name in enumerate(self.names)}
        self.bus.publish(self.Sample(f"M{m:05d}", self.model, at, values))

    async def round(self, round_: int) -> None:
        at = datetime.now(UTC)
        for m in range(self.meters):
            await self.meter(m, round_, at)
        await self.service.publisher.drained()


async def rounds(driver: Any, seconds: float, steady: bool = False) -> tuple[int, float]:
    """Whole rounds (every variable changes; with `steady`, every value stays and only
    the time moves on) until `seconds` passed, at least one: (variables written, seconds
    taken)."""
    if steady:
        await driver.round(STEADY)  # the values settle; what follows only rewrites
    gc.collect()  # start from a settled heap, whoever ran before
    start_writes, start = driver.writes, time.perf_counter()
    round_ = 1
    while round_ == 1 or time.perf_counter() - start < seconds:
        await driver.round(STEADY if steady else round_)
        round_ += 1
    return driver.writes - start_writes, time.perf_counter() - start


async def offer(driver: Any, meters: int, period_s: float, window_s: float) -> None:
    """Meters spread evenly over `period_s`, each once: `meters * 15 / period_s` updates/s,
    offered for `window_s` (the rate, not the window, is what the lag depends on)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    interval = period_s / meters
    for m in range(min(meters, int(meters * window_s / period_s))):
        delay = start + m * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await driver.meter(m, 10_000, datetime.now(UTC))


async def throughput(
    run: Callable[[float], Awaitable[tuple[int, float]]], client: ClientProcess, seconds: float
) -> dict[str, float]:
    start_count = (await client.ask("count"))["count"]
    writes, elapsed = await run(seconds)
    await asyncio.sleep(0.5)  # let the last notifications arrive
    received = (await client.ask("count"))["count"] - start_count
    return {
        "updates_per_s": writes / elapsed,
        "client_notifications_per_s": received / (elapsed + 0.5),
    }


async def lag(run: Callable[[], Awaitable[None]], client: ClientProcess) -> dict[str, float]:
    await client.ask("lag")
    await run()
    await asyncio.sleep(0.5)  # the last notifications
    return (await client.ask("lags"))["lags"]


# -- the bare server runs in its own process (it builds while the product builds) -------------


async def bare_main(meters: int, port: int) -> None:
    logging.basicConfig(level=logging.ERROR)
    folder = Path(tempfile.mkdtemp(prefix="opcua-bench-bare-"))
    server, ids, port = await bare_server(meters, folder, port)
    driver = BareDriver(server, ids, meters)
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        words = (await reader.readline()).decode().split()
        if not words or words[0] == "quit":
            break
        if words[0] in ("throughput", "steady"):
            writes, elapsed = await rounds(driver, float(words[1]), words[0] == "steady")
            print(json.dumps({"writes": writes, "elapsed": elapsed}), flush=True)
        elif words[0] == "lag":
            await offer(driver, meters, float(words[1]), float(words[2]))
            print(json.dumps({"done": True}), flush=True)
    await server.stop()


class BareProcess(ClientProcess):
    @classmethod
    async def spawn_server(cls, meters: int, port: int) -> BareProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--bare-server",
            str(meters),
            str(port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def command(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        await self.proc.stdin.drain()
        return await self.read()

    async def rounds(self, seconds: float, steady: bool = False) -> tuple[int, float]:
        reply = await self.command(f"{'steady' if steady else 'throughput'} {seconds}")
        return reply["writes"], reply["elapsed"]


# -- main ---------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Phases:
    """Elapsed time per phase, on stderr (the figures go to stdout)."""

    def __init__(self, t0: float) -> None:
        self.last = t0

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        print(f"  {name}: {now - self.last:.1f} s", file=sys.stderr, flush=True)
        self.last = now


async def main(meters: int, seconds: float, lag_period: float, lag_window: float) -> dict[str, Any]:
    logging.basicConfig(level=logging.ERROR)
    folder = Path(tempfile.mkdtemp(prefix="opcua-bench-"))
    nodes = [f"M{m:05d}/p{p:02d}" for m in range(meters) for p in range(POINTS)]

    t0 = time.perf_counter()
    # The bare server builds in its own process while this one builds the product; its
    # client subscribes as soon as it listens. Measurements start when both are subscribed
    # and run one after the other (nothing else busy).
    bare_port = free_port()
    bare_server_proc = await BareProcess.spawn_server(meters, bare_port)
    bare_client, product_client = await ClientProcess.spawn(), await ClientProcess.spawn()
    client_cert, client_key = make_cert(folder, "client", CLIENT_URI, server=False)
    common = {"cert": str(client_cert), "key": str(client_key), "nodes": nodes}
    await bare_client.begin(
        {**common, "name": "bare", "url": f"opc.tcp://127.0.0.1:{bare_port}/bare/",
         "namespace": "urn:bench:bare"},
        folder,
    )  # fmt: skip
    site = bench_site(meters)
    service = await product_server(site, folder, client_cert)
    build_s = time.perf_counter() - t0
    phase = Phases(t0)
    phase("both servers built")
    try:
        await product_client.begin(
            {**common, "nodes": [f"Meter:{n}" for n in nodes], "name": "product",
             "url": f"opc.tcp://127.0.0.1:{service.port}/openprepay",
             "namespace": "urn:openprepay:site:bench", "user": "bench",
             "password": "bench-password"},
            folder,
        )  # fmt: skip
        await bare_server_proc.read()  # {"port": ...}: it listens
        await asyncio.gather(bare_client.subscribed(), product_client.subscribed())
        phase("both clients subscribed to every variable")

        bare_tp = await throughput(bare_server_proc.rounds, bare_client, seconds)
        phase("bare: throughput")
        bare_lag = await lag(
            lambda: bare_server_proc.command(f"lag {lag_period} {lag_window}"), bare_client
        )
        phase("bare: lag")

        product = ProductDriver(service, meters)
        product_tp = await throughput(lambda s: rounds(product, s), product_client, seconds)
        phase("product: throughput")
        product_lag = await lag(
            lambda: offer(product, meters, lag_period, lag_window), product_client
        )
        phase("product: lag")

        bare_steady = await throughput(
            lambda s: bare_server_proc.rounds(s, steady=True), bare_client, seconds
        )
        phase("bare: steady values")
        product_steady = await throughput(
            lambda s: rounds(product, s, steady=True), product_client, seconds
        )
        phase("product: steady values")
    finally:
        for proc in (bare_client, product_client, bare_server_proc):
            if proc.proc.returncode is None:
                proc.proc.kill()
        await service.stop()
    offered = meters * POINTS / lag_period
    return {
        "bench": "opcua",
        "meters": meters,
        "variables": meters * POINTS,
        "ratio": round(product_tp["updates_per_s"] / bare_tp["updates_per_s"], 3),
        "updates_per_s": round(product_tp["updates_per_s"]),
        "bare_updates_per_s": round(bare_tp["updates_per_s"]),
        "client_notifications_per_s": round(product_tp["client_notifications_per_s"]),
        "bare_client_notifications_per_s": round(bare_tp["client_notifications_per_s"]),
        "offered_updates_per_s": round(offered),
        "median_lag_ms": product_lag["median_ms"],
        "p95_lag_ms": product_lag["p95_ms"],
        "lag_samples": product_lag["n"],
        "bare_median_lag_ms": bare_lag["median_ms"],
        "bare_p95_lag_ms": bare_lag["p95_ms"],
        "steady_ratio": round(product_steady["updates_per_s"] / bare_steady["updates_per_s"], 3),
        "steady_rewrites_per_s": round(product_steady["updates_per_s"]),
        "bare_steady_rewrites_per_s": round(bare_steady["updates_per_s"]),
        "publishing_interval_ms": PUBLISHING_MS,
        "build_s": round(build_s, 1),
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--client":
        asyncio.run(client_main())
        sys.exit(0)
    if len(sys.argv) >= 4 and sys.argv[1] == "--bare-server":
        asyncio.run(bare_main(int(sys.argv[2]), int(sys.argv[3])))
        os._exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=2000)
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="throughput: at least, per server"
    )
    parser.add_argument(
        "--lag-period", type=float, default=10.0, help="each variable changes once per"
    )
    parser.add_argument("--lag-window", type=float, default=4.0, help="lag: offered load, seconds")
    args = parser.parse_args()
    started = time.perf_counter()
    result = asyncio.run(main(args.meters, args.seconds, args.lag_period, args.lag_window))
    print(
        f"throughput: OpenPrepay {result['updates_per_s']:,} updates/s, bare asyncua loop "
        f"{result['bare_updates_per_s']:,} updates/s, ratio {result['ratio']:.2f} "
        f"(target >= 0.50); "
        f"client received {result['client_notifications_per_s']:,}/s vs "
        f"{result['bare_client_notifications_per_s']:,}/s"
    )
    print(
        f"lag at {result['offered_updates_per_s']:,} updates/s offered "
        f"({result['variables']:,} variables, each once per {args.lag_period:g} s, publishing "
        f"{PUBLISHING_MS} ms): median {result['median_lag_ms']} ms, p95 {result['p95_lag_ms']} ms "
        f"(bare loop: median {result['bare_median_lag_ms']} ms, p95 {result['bare_p95_lag_ms']} ms;"
        f" target median < 1000 ms)"
    )
    print(
        f"steady values (only the time moves on, rewritten on every sample): OpenPrepay "
        f"{result['steady_rewrites_per_s']:,} rewrites/s, bare asyncua loop "
        f"{result['bare_steady_rewrites_per_s']:,}/s, ratio {result['steady_ratio']:.2f}"
    )
    print(
        f"total {time.perf_counter() - started:.1f} s (building both servers {result['build_s']} s)"
    )
    print(json.dumps(result), flush=True)
    # Skip tearing down hundreds of thousands of nodes object by object at exit.
    os._exit(0)
