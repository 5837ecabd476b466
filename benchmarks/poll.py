"""Polling throughput and bus efficiency, against simulators in a separate process.

Case 1 — throughput: 2,000 simulated DDSY1352 meters behind 40 RTU-over-TCP gateways.
  Baseline: a bare pymodbus loop, one client per gateway, reading the same three register
  blocks of every meter in turn. Product: the whole pipeline (link arbiter, profile driver
  with bulk decoding, samples on the event bus, latest-value store) polling as fast as it
  can. Both run against the same simulators in the same run; target ratio >= 0.60.
Case 2 — bus efficiency: one gateway with emulated 9600-baud timing, 32 meters of which 2
  are silent. Efficiency = polls the 30 healthy meters got / polls the baud rate allows in
  the same time (wire time of the three request/answer pairs plus device turnaround).
  Target >= 0.85.

Case 1 also gives the CPU this process spent per sample in each loop (the simulators run
in their own process); `--client pymodbus` puts the pipeline's TCP links on the pymodbus
client instead of the transport's lean one, to compare.

Ends with one JSON line: {"bench": "poll", "ratio": ..., "bus_efficiency": ..., ...}.
Run: .venv/bin/python benchmarks/poll.py [--seconds 8] [--client lean|pymodbus]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.framer import FramerType

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.config.site import load_site
from openprepay.core.logs import setup_logging
from openprepay.core.model import MeterKind, Sample
from openprepay.plugins.meter_acrel.plugin import profiles
from openprepay.plugins.modbus import transport
from openprepay.plugins.modbus.simulation import frame_bytes

GATEWAYS = 40
METERS_PER_GATEWAY = 50
MODEL = "acrel.DDSY1352"
TURNAROUND_S = 0.005
#: The register blocks one poll of the model reads: the bare loop reads exactly these.
BLOCKS = tuple((b.start, b.count) for b in profiles()[MODEL].blocks)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def site_data(gateways: int, per_gateway: int, timeout_ms: int) -> dict:
    links, devices = {}, {}
    for g in range(gateways):
        link = f"gw{g:02d}"
        links[link] = {
            "type": "rtu_over_tcp",
            "host": "127.0.0.1",
            "port": free_port(),
            "timeout_ms": timeout_ms,
            "baudrate": 9600,
        }
        for u in range(1, per_gateway + 1):
            devices[f"E{g:02d}-{u:02d}"] = {
                "model": MODEL,
                "link": link,
                "unit_id": u,
                "building": "A",
            }
    return {
        "site": {"id": "bench"},
        "poll": {
            "interval_s": 0,
            "stats_interval_s": 60,
            "backoff_initial_s": 1,
            "backoff_max_s": 60,
            "quarantine_after": 5,
            "quarantine_probe_s": 300,
        },
        "links": links,
        "buildings": {"A": {"floors": ["1"]}},
        "devices": devices,
    }


class Simulators:
    """`openprepay simulate` in its own process, so it does not share our core."""

    def __init__(self, data: dict, folder: Path, *extra: str) -> None:
        self.path = folder / "site.toml"
        self.path.write_text(tomli_w.dumps(data))
        self.ports = [link["port"] for link in data["links"].values()]
        self.argv = [
            sys.executable,
            "-m",
            "openprepay.core.cli",
            "--log-level",
            "WARNING",
            "simulate",
            str(self.path),
            *extra,
        ]

    def __enter__(self) -> Simulators:
        self.log = (self.path.parent / "simulate.log").open("wb")
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        for port in self.ports:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise RuntimeError("simulators did not start") from None
                    time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def bare_loop(data: dict, seconds: float) -> int:
    """One pymodbus client per gateway reading every meter's blocks in turn."""
    done = 0
    stop_at = time.monotonic() + seconds

    async def gateway(link: dict, units: list[int]) -> None:
        nonlocal done
        client = AsyncModbusTcpClient(
            "127.0.0.1", port=link["port"], framer=FramerType.RTU, timeout=1, retries=0
        )
        await client.connect()
        while True:
            for unit in units:
                if time.monotonic() >= stop_at:
                    client.close()
                    return
                for start, count in BLOCKS:
                    rr = await client.read_holding_registers(start, count=count, device_id=unit)
                    assert not rr.isError()
                done += 1

    by_link: dict[str, list[int]] = {}
    for device in data["devices"].values():
        by_link.setdefault(device["link"], []).append(device["unit_id"])
    await asyncio.gather(*(gateway(data["links"][lid], units) for lid, units in by_link.items()))
    return done


async def pipeline(path: Path, seconds: float, plugins: Plugins) -> tuple[int, float, Runtime]:
    """Good electric samples in `seconds` of steady polling, and the CPU seconds spent."""
    runtime = Runtime(load_site(path), plugins)
    counted = 0

    def count(sample: Sample) -> None:
        nonlocal counted
        if sample.model.kind is MeterKind.ELECTRIC and sample.quality.is_good:
            counted += 1

    runtime.bus.subscribe(Sample, count)
    async with runtime:
        await asyncio.sleep(1.0)  # connections open, polling in steady state
        start, cpu = counted, time.process_time()
        await asyncio.sleep(seconds)
        return counted - start, time.process_time() - cpu, runtime


def allowed_polls_per_s(baudrate: int, bits_per_char: int) -> float:
    wire_bytes = sum(
        frame_bytes(3, count, False) + frame_bytes(3, count, True) for _, count in BLOCKS
    )
    per_poll = wire_bytes * bits_per_char / baudrate + len(BLOCKS) * TURNAROUND_S
    return 1 / per_poll


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement time per case")
    parser.add_argument(
        "--client",
        choices=("lean", "pymodbus"),
        default="lean",
        help="the Modbus client of the pipeline's TCP links",
    )
    args = parser.parse_args()
    transport.LEAN_TCP = args.client == "lean"
    setup_logging("WARNING")
    os.environ.setdefault("OPENPREPAY_DISABLE_PLUGINS", "historian,opcua")
    plugins = Plugins.load()

    with tempfile.TemporaryDirectory() as tmp:
        # -- case 1: throughput ---------------------------------------------------------
        data = site_data(GATEWAYS, METERS_PER_GATEWAY, timeout_ms=1000)
        with Simulators(data, Path(tmp)) as sims:
            cpu = time.process_time()
            bare_samples = await bare_loop(data, args.seconds)
            bare_cpu_us = (time.process_time() - cpu) / bare_samples * 1e6
            polled, cpu_s, _ = await pipeline(sims.path, args.seconds, plugins)
            bare = bare_samples / args.seconds
            product = polled / args.seconds
            cpu_us = cpu_s / polled * 1e6
        ratio = product / bare
        print(
            f"throughput: bare pymodbus loop {bare:,.0f} samples/s, "
            f"pipeline ({args.client} client) {product:,.0f} samples/s, ratio {ratio:.2f} "
            f"({GATEWAYS} gateways x {METERS_PER_GATEWAY} meters)"
        )
        print(
            f"CPU per sample in this process: bare pymodbus loop {bare_cpu_us:.0f} us, "
            f"pipeline {cpu_us:.0f} us"
        )

        # -- case 2: one 9600-baud bus with 2 silent meters ------------------------------
        bus_seconds = max(args.seconds * 2.5, 20.0)
        data = site_data(1, 32, timeout_ms=200)
        folder = Path(tmp) / "bus"
        folder.mkdir()
        silent = ["E00-07", "E00-23"]
        extra = ["--serial-timing", *(f"--silent={m}" for m in silent)]
        with Simulators(data, folder, *extra) as sims:
            polled, _, runtime = await pipeline(sims.path, bus_seconds, plugins)
        site = runtime.site
        link = next(iter(site.links.values()))
        allowed = allowed_polls_per_s(link.baudrate, link.bits_per_char) * bus_seconds
        efficiency = polled / allowed
        failures = sum(runtime.arbiter.health(m).polls_failed for m in silent)
        print(
            f"bus efficiency: {polled} healthy polls in {bus_seconds:.0f} s, the baud rate "
            f"allows {allowed:.0f} -> {efficiency:.2%} ({failures} attempts on the silent meters)"
        )

    print(
        json.dumps(
            {
                "bench": "poll",
                "client": args.client,
                "ratio": round(ratio, 3),
                "bus_efficiency": round(efficiency, 3),
                "samples_per_s": round(product),
                "bare_samples_per_s": round(bare),
                "cpu_us_per_sample": round(cpu_us),
                "bare_cpu_us_per_sample": round(bare_cpu_us),
                "bus_polls": polled,
                "bus_allowed_polls": round(allowed),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
