"""Simulator cost: CPU milliseconds the simulator process spends per meter poll.

The demo estate without its DL/T 645 / CJ/T 188 floor (`--buildings` × 6 floors × 10 rooms:
a DDSY1352 and a valve water meter per room on RTU-over-TCP buses, a DTSD1352 main meter
per building on Modbus TCP) is served at real-time consumption (speed-up 1) by a simulator
process of its own, built as `openprepay simulate` builds it. This process polls it with a
plain raw-socket client: one connection per link, one request in flight on each, every
meter's register blocks in turn (an optional block that answers "illegal data address" is
dropped, as the driver drops it), each meter once per 1.5 s. After a warm-up, a window is
measured: meter polls answered and the simulator process's CPU time (utime + stime from
/proc).

- baseline: the old path — pymodbus' server, physics advanced on every request;
- product: what `openprepay simulate` now runs — the lean Modbus server, physics advanced
  at most once per simulated second per device (the reads of one poll share a step).

Both simulators run side by side in the same invocation, on the same site; their measured
windows alternate (`--rounds` each), so a busy moment of a shared box falls on both. Ends
with one JSON line: {"bench": "simulator", "ratio": baseline ÷ product CPU per poll,
"cpu_ms_per_poll": ..., "baseline_cpu_ms_per_poll": ..., ...}. Target: ratio >= 3
(cpu_ms_per_poll <= 0.2). On a shared box the figures move with its load (printed).

    .venv/bin/python benchmarks/simulator.py [--buildings 4] [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
from _capacity import process_cpu_s

from openprepay.core.app.demo import demo_site_data
from openprepay.core.app.plugins import Plugins
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import LinkType, Site, load_site
from openprepay.core.contracts import SimulatorOptions
from openprepay.plugins.modbus.frames import crc16, rtu_frame
from openprepay.plugins.modbus.simulation import RegisterDeviceSimulator

#: How each side serves: the SimulatorOptions fields that differ.
MODES: dict[str, dict[str, Any]] = {
    "baseline": {"lean_server": False, "advance_every_s": 0.0},
    "product": {"lean_server": True, "advance_every_s": 1.0},
}
#: Each meter is polled every POLL_S (as the service polls, with a shorter interval so that
#: a short run has many polls); longer than `advance_every_s`, so every poll pays for one
#: physics step, as at the service's 10 s.
POLL_S = 1.5
WARMUP_S = 2.0


# -- the simulator process -----------------------------------------------------------------
async def serve(mode: str, site_file: str) -> None:
    """Serve the site's simulators; print their addresses as one JSON line; run until killed."""
    site = load_site(site_file)
    options = SimulatorOptions(
        speedup=1.0, ephemeral_ports=True, timezone=site.info.timezone, **MODES[mode]
    )
    sims = SimulatedSite(site, Plugins.load(), options)
    addresses = await sims.start()
    print(json.dumps(addresses), flush=True)
    await asyncio.Event().wait()


# -- the polling client --------------------------------------------------------------------
@dataclass
class MeterBlocks:
    unit: int
    #: (function, start, count, optional) of every block the meter is read by.
    blocks: list[tuple[int, int, int, bool]]


@dataclass
class Counts:
    polls: int = 0
    requests: int = 0
    errors: list[str] = field(default_factory=list)


class LinkPoller:
    """One connection to one simulated link, one request in flight."""

    def __init__(self, rtu: bool, meters: list[MeterBlocks], counts: Counts) -> None:
        self.rtu = rtu
        self.meters = meters
        self.counts = counts
        self._tid = 0

    async def run(self, host: str, port: int, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        loop = asyncio.get_running_loop()
        try:
            # The link's polls spread evenly over the interval: a steady rate, no bursts.
            spacing = POLL_S / len(self.meters)
            due = loop.time()
            while not stop.is_set():
                for meter in self.meters:
                    for block in list(meter.blocks):
                        if not await self._read(reader, writer, meter.unit, block):
                            meter.blocks.remove(block)  # optional block the firmware lacks
                    self.counts.polls += 1
                    due += spacing
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), due - loop.time())
                    if stop.is_set():
                        return
        finally:
            writer.close()

    async def _read(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        unit: int,
        block: tuple[int, int, int, bool],
    ) -> bool:
        function, start, count, optional = block
        pdu = struct.pack(">BHH", function, start, count)
        self.counts.requests += 1
        if self.rtu:
            writer.write(rtu_frame(unit, pdu))
            head = await reader.readexactly(3)
            rest = await reader.readexactly(2 if head[1] & 0x80 else head[2] + 2)
            answer = head + rest
            ok = crc16(answer) == 0  # over the whole frame, CRC included
            body = answer[1:-2]
        else:
            self._tid = (self._tid + 1) & 0xFFFF
            writer.write(struct.pack(">HHHB", self._tid, 0, len(pdu) + 1, unit) + pdu)
            head = await reader.readexactly(7)
            tid, _, length, _ = struct.unpack(">HHHB", head)
            body = await reader.readexactly(length - 1)
            ok = tid == self._tid
        if ok and body[0] == function and body[1] == 2 * count:
            return True
        if ok and body[0] == function | 0x80 and optional:
            return False
        raise RuntimeError(f"unit {unit} block {start:#06x}: unexpected answer {body.hex()}")


def meters_by_link(site: Site, plugins: Plugins) -> dict[str, list[MeterBlocks]]:
    """The register blocks of every Modbus meter, by link, from the simulators' profiles."""
    options = SimulatorOptions(speedup=0)
    out: dict[str, list[MeterBlocks]] = {}
    for link_id in site.links:
        for device in site.devices_on(link_id):
            sim = plugins.make_simulator(plugins.model(device.model), device, options)
            if not isinstance(sim, RegisterDeviceSimulator):
                continue
            blocks = [(b.function, b.start, b.count, b.optional) for b in sim.profile.blocks]
            out.setdefault(link_id, []).append(MeterBlocks(device.unit_id, blocks))
    return out


@dataclass
class Totals:
    """What one side did over its measured windows."""

    seconds: float = 0.0
    cpu_s: float = 0.0
    polls: int = 0
    requests: int = 0

    def figures(self) -> dict[str, float]:
        return {
            "polls_per_s": round(self.polls / self.seconds, 1),
            "requests_per_s": round(self.requests / self.seconds, 1),
            "cpu_percent": round(100 * self.cpu_s / self.seconds, 1),
            "cpu_ms_per_poll": round(1000 * self.cpu_s / self.polls, 4),
            "cpu_ms_per_request": round(1000 * self.cpu_s / self.requests, 4),
        }


async def start_simulator(mode: str, site_file: Path) -> tuple[Any, dict[str, Any]]:
    """The simulator process of `mode` and the address of each of its links."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", mode, str(site_file),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 120)
    if not line:
        raise RuntimeError(f"the {mode} simulator exited before it served")
    return child, json.loads(line)


async def window(
    pid: int, addresses: dict[str, Any], site: Site, plugins: Plugins, seconds: float
) -> Totals:
    """Poll one simulator process: a warm-up, then `seconds` measured."""
    counts = Counts()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(
            LinkPoller(site.links[link_id].type is not LinkType.MODBUS_TCP, meters, counts).run(
                *addresses[link_id], stop
            )
        )
        for link_id, meters in meters_by_link(site, plugins).items()
    ]
    await asyncio.sleep(WARMUP_S)
    cpu0, polls0, requests0, t0 = process_cpu_s(pid), counts.polls, counts.requests, time.time()
    await asyncio.sleep(seconds)
    cpu1, polls1, requests1, t1 = process_cpu_s(pid), counts.polls, counts.requests, time.time()
    stop.set()
    await asyncio.gather(*tasks)
    return Totals(t1 - t0, cpu1 - cpu0, polls1 - polls0, requests1 - requests0)


async def main(buildings: int, seconds: float, rounds: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="simulator-bench-"))
    data = demo_site_data(buildings, 6, 10, framed=False)
    site_file = folder / "site.toml"
    site_file.write_text(tomli_w.dumps(data))
    site = load_site(site_file)
    plugins = Plugins.load()
    children: dict[str, Any] = {}
    totals = {mode: Totals() for mode in MODES}
    try:
        served = {}
        for mode in MODES:
            children[mode], served[mode] = await start_simulator(mode, site_file)
        # Both sides stay up; their windows alternate, so a busy moment of a shared box
        # falls on both alike.
        for _ in range(rounds):
            for mode, child in children.items():
                measured = await window(child.pid, served[mode], site, plugins, seconds)
                total = totals[mode]
                total.seconds += measured.seconds
                total.cpu_s += measured.cpu_s
                total.polls += measured.polls
                total.requests += measured.requests
    finally:
        for child in children.values():
            if child.returncode is None:
                child.kill()
            await child.wait()
    baseline, product = totals["baseline"].figures(), totals["product"].figures()
    return {
        "bench": "simulator",
        "ratio": round(baseline["cpu_ms_per_poll"] / product["cpu_ms_per_poll"], 2),
        "cpu_ms_per_poll": product["cpu_ms_per_poll"],
        "baseline_cpu_ms_per_poll": baseline["cpu_ms_per_poll"],
        "meters": len(site.devices),
        "links": len(site.links),
        "baseline": baseline,
        "product": product,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def report(figures: dict[str, Any]) -> None:
    print(f"simulator: {figures['meters']} meters on {figures['links']} links (one poller each)")
    for mode in MODES:
        f = figures[mode]
        print(f"  {mode:<9} {f['polls_per_s']:>8} polls/s {f['requests_per_s']:>8} requests/s "
              f"CPU {f['cpu_percent']:>5}%  {f['cpu_ms_per_poll']} ms/poll "
              f"({f['cpu_ms_per_request']} ms/request)")  # fmt: skip
    print(f"  ratio {figures['ratio']} (target >= 3), load average {figures['loadavg']}")
    print(json.dumps({k: v for k, v in figures.items() if k not in MODES}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--buildings", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per round")
    parser.add_argument("--rounds", type=int, default=2, help="windows per side, alternating")
    parser.add_argument("--serve", nargs=2, metavar=("MODE", "SITE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(*args.serve))
    else:
        report(asyncio.run(main(args.buildings, args.seconds, args.rounds)))
