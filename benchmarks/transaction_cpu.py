"""CPU of one Modbus read transaction in the service's process, against a simulator in
another process.

One `ModbusTransport` per link type (RTU over TCP, Modbus TCP) reads the register blocks of
one simulated DDSY1352 in turn (17, 1, 28 and 2 registers); the figure is the client
process's CPU (time.process_time) per read: request framed and sent, answer received,
checked and its registers decoded. The simulator (pymodbus' server) runs in its own
process, so its CPU is not counted.

Paths: `pymodbus` (the pymodbus client, kept for serial links and as a fallback), `lean`
(the transport's own framing on TCP links), `default` (what a site gets), and `floor`: a
bare asyncio protocol that writes prebuilt request bytes and wakes the reader when the
answer's length has arrived, checking nothing. The floor is what any asyncio client pays
for the loop and the socket calls; a path's cost above it is its transaction layer.

The paths take turns, `--rounds` rounds of `--reads` reads each, so that load from other
processes on the machine falls on all of them alike; each path's figure is the median
round (the lowest is printed too). With `pymodbus` and `lean`, the ratios pymodbus/lean of
the whole CPU per read and of the cost above the floor are measured in the same run.

Ends with one JSON line: {"bench": "transaction_cpu", "rtu_over_tcp": {...}, ...}.
Run: .venv/bin/python benchmarks/transaction_cpu.py [--reads 4000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from poll import Simulators, free_port

from openprepay.core.config.site import LinkConfig, LinkType
from openprepay.core.logs import setup_logging
from openprepay.plugins.meter_acrel.plugin import profiles
from openprepay.plugins.modbus import ModbusTransport
from openprepay.plugins.modbus.frames import mbap_frame, read_pdu, rtu_frame

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
        f"E-{name}": {"model": MODEL, "link": name, "unit_id": 1, "building": "A"} for name in links
    }
    return {
        "site": {"id": "bench"},
        "poll": {"interval_s": 60, "stats_interval_s": 60},
        "links": links,
        "buildings": {"A": {"floors": ["1"]}},
        "devices": devices,
    }


class BareReader(asyncio.Protocol):
    """The floor: wakes the waiting reader once `expected` bytes have arrived."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = b""
        self.expected = 0
        self.answered: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected and self.answered is not None:
            self.answered.set_result(self.received)


class Floor:
    """The same reads as bare bytes: prebuilt requests, answers only counted."""

    def __init__(self, link: LinkConfig) -> None:
        self.link = link
        rtu = link.type is LinkType.RTU_OVER_TCP
        self.requests = {
            (start, count): (
                rtu_frame(1, read_pdu(3, start, count))
                if rtu
                else mbap_frame(1, 1, read_pdu(3, start, count)),
                (5 if rtu else 9) + 2 * count,
            )
            for start, count in BLOCKS
        }
        self.reader = BareReader()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self.reader, self.link.host, self.link.port)

    async def close(self) -> None:
        assert self.reader.transport is not None
        self.reader.transport.close()

    async def read(self, unit: int, function: int, start: int, count: int) -> list[int]:
        request, expected = self.requests[start, count]
        reader = self.reader
        assert reader.transport is not None
        reader.received = b""
        reader.expected = expected
        reader.answered = asyncio.get_running_loop().create_future()
        reader.transport.write(request)
        await reader.answered
        return [0] * count


def make_client(link: LinkConfig, path: str) -> ModbusTransport | Floor:
    if path == "floor":
        return Floor(link)
    if path == "default":
        return ModbusTransport(link)
    return ModbusTransport(link, lean=path == "lean")  # type: ignore[call-arg]


async def cpu_per_read(client: ModbusTransport | Floor, reads: int) -> float:
    """CPU microseconds per read over `reads` reads."""
    cpu0 = time.process_time()
    for i in range(reads):
        start, count = BLOCKS[i % len(BLOCKS)]
        registers = await client.read(1, 3, start, count)
        assert len(registers) == count
    return (time.process_time() - cpu0) / reads * 1e6


async def measure(link: LinkConfig, paths: list[str], reads: int, rounds: int) -> dict:
    """Per path: the median and lowest round of CPU microseconds per read."""
    clients = {path: make_client(link, path) for path in paths}
    for client in clients.values():
        await client.connect()
    samples: dict[str, list[float]] = {path: [] for path in paths}
    try:
        for client in clients.values():
            await cpu_per_read(client, WARMUP_READS)
        for _ in range(rounds):
            for path, client in clients.items():
                samples[path].append(await cpu_per_read(client, reads))
    finally:
        for client in clients.values():
            await client.close()
    return {
        path: {"cpu_us": round(statistics.median(s), 1), "lowest_cpu_us": round(min(s), 1)}
        for path, s in samples.items()
    }


def ratios(figures: dict) -> dict[str, float]:
    """pymodbus/lean: of the whole CPU per read, and of the cost above the floor."""
    out = {"cpu_ratio": round(figures["pymodbus"]["cpu_us"] / figures["lean"]["cpu_us"], 2)}
    if "floor" in figures:
        floor = figures["floor"]["cpu_us"]
        above = {p: figures[p]["cpu_us"] - floor for p in ("pymodbus", "lean")}
        if above["lean"] > 0:
            out["above_floor_ratio"] = round(above["pymodbus"] / above["lean"], 2)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=4_000, help="reads per path and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the paths take turns)")
    parser.add_argument(
        "--path",
        action="append",
        choices=("pymodbus", "lean", "default", "floor"),
        help="transaction path(s) to measure (default: floor, pymodbus and lean)",
    )
    args = parser.parse_args()
    paths = args.path or ["floor", "pymodbus", "lean"]
    setup_logging("WARNING")
    data = site_data()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, Simulators(data, Path(tmp)):
        for name, spec in data["links"].items():
            link = LinkConfig(
                id=name, type=LinkType(spec["type"]), host=spec["host"], port=spec["port"]
            )
            figures = await measure(link, paths, args.reads, args.rounds)
            for path, f in figures.items():
                print(
                    f"{name:13s} {path:9s} {f['cpu_us']:7.1f} us CPU per read "
                    f"(median of {args.rounds} rounds; lowest {f['lowest_cpu_us']:.1f})"
                )
            if {"pymodbus", "lean"} <= set(paths):
                figures.update(ratios(figures))
                above = figures.get("above_floor_ratio")
                print(
                    f"{name:13s} pymodbus/lean: {figures['cpu_ratio']:.2f}x CPU per read"
                    + (f", {above:.2f}x above the floor" if above else "")
                )
            results[name] = figures
    print(
        json.dumps(
            {"bench": "transaction_cpu", "reads": args.reads, "rounds": args.rounds, **results}
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
