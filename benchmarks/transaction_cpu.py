"""CPU of one Modbus read transaction in the service's process, against a simulator in
another process.

One `ModbusTransport` per link type (RTU over TCP, Modbus TCP) reads the register blocks of
one simulated DDSY1352 in turn (17, 1, 28 and 2 registers) `--reads` times; the figure is
the client process's CPU (time.process_time) per read: request framed and sent, answer
received, checked and its registers decoded. The simulator (pymodbus' server) runs in its
own process, so its CPU is not counted.

Paths: `pymodbus` (the pymodbus client, kept for serial links and as a fallback), `lean`
(the transport's own framing on TCP links), `default` (what a site gets). With both
`pymodbus` and `lean`, the ratio pymodbus/lean is measured in the same run.

Ends with one JSON line: {"bench": "transaction_cpu", "rtu_over_tcp": {...}, ...}.
Run: .venv/bin/python benchmarks/transaction_cpu.py [--reads 20000] [--path pymodbus --path lean]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from poll import Simulators, free_port

from openprepay.core.config.site import LinkConfig, LinkType
from openprepay.core.logs import setup_logging
from openprepay.plugins.meter_acrel.plugin import profiles
from openprepay.plugins.modbus import ModbusTransport

MODEL = "acrel.DDSY1352"
BLOCKS = tuple((b.start, b.count) for b in profiles()[MODEL].blocks)
WARMUP_READS = 500


def site_data() -> dict:
    links = {
        link_type.value: {
            "type": link_type.value,
            "host": "127.0.0.1",
            "port": free_port(),
            "timeout_ms": 1000,
        }
        for link_type in (LinkType.RTU_OVER_TCP, LinkType.MODBUS_TCP)
    }
    devices = {
        f"E-{name}": {"model": MODEL, "link": name, "unit_id": 1, "building": "A"}
        for name in links
    }
    return {
        "site": {"id": "bench"},
        "poll": {"interval_s": 60, "stats_interval_s": 60},
        "links": links,
        "buildings": {"A": {"floors": ["1"]}},
        "devices": devices,
    }


def make_transport(link: LinkConfig, path: str) -> ModbusTransport:
    if path == "default":
        return ModbusTransport(link)
    return ModbusTransport(link, lean=path == "lean")  # type: ignore[call-arg]


async def measure(link: LinkConfig, path: str, reads: int) -> dict[str, float]:
    """CPU and wall microseconds per read over `reads` reads (after a warm-up)."""
    transport = make_transport(link, path)
    await transport.connect()
    try:
        for i in range(WARMUP_READS):
            start, count = BLOCKS[i % len(BLOCKS)]
            await transport.read(1, 3, start, count)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(reads):
            start, count = BLOCKS[i % len(BLOCKS)]
            registers = await transport.read(1, 3, start, count)
            assert len(registers) == count
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - wall0
    finally:
        await transport.close()
    return {"cpu_us": round(cpu / reads * 1e6, 1), "wall_us": round(wall / reads * 1e6, 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=20_000, help="reads measured per case")
    parser.add_argument(
        "--path",
        action="append",
        choices=("pymodbus", "lean", "default"),
        help="transaction path(s) to measure (default: pymodbus and lean)",
    )
    args = parser.parse_args()
    paths = args.path or ["pymodbus", "lean"]
    setup_logging("WARNING")
    data = site_data()
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp, Simulators(data, Path(tmp)):
        for name, spec in data["links"].items():
            link = LinkConfig(
                id=name, type=LinkType(spec["type"]), host=spec["host"], port=spec["port"]
            )
            results[name] = {}
            for path in paths:
                figures = await measure(link, path, args.reads)
                results[name][path] = figures
                print(
                    f"{name:13s} {path:9s} {figures['cpu_us']:7.1f} us CPU per read "
                    f"({figures['wall_us']:.1f} us wall)"
                )
            if {"pymodbus", "lean"} <= set(paths):
                ratio = results[name]["pymodbus"]["cpu_us"] / results[name]["lean"]["cpu_us"]
                results[name]["cpu_ratio"] = round(ratio, 2)  # type: ignore[assignment]
                print(f"{name:13s} pymodbus/lean CPU per read: {ratio:.2f}x")
    print(json.dumps({"bench": "transaction_cpu", "reads": args.reads, **results}))


if __name__ == "__main__":
    asyncio.run(main())
