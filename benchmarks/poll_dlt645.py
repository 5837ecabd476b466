"""Bus efficiency of DL/T 645 polling on a simulated 2400-baud RS-485 bus with one dead meter.

The bus: 8 simulated `dlt645.single_phase` meters behind one serial link (a `socket://`
device server), 2400 baud 8E1; one meter never answers. The simulated bus delivers every
byte at the baud rate, one transaction at a time, and each meter answers after 20 ms (the
shortest response time DL/T 645 allows). One poll of a meter reads the profile's 7 DIs.

Product: the whole pipeline (link arbiter with back-off and quarantine, framed transport
with its preamble, inter-frame silence and reply timeout, the DL/T 645 driver with every
check, samples on the event bus) polling as fast as it can for `--seconds`.

bus_efficiency = healthy polls completed ÷ the polls the baud rate allows in the same time
for the frames sent (each poll's request and answer frames with their FE preambles at 11
bits a character, plus the meters' 20 ms turnaround). Target >= 0.85. The dead meter's
back-off slots, the inter-frame silence and all software time count against it.

Baseline, measured in the same run on the same bus: a bare loop that sends the same
request frames to the healthy meters only, with no silence, no checks and no arbiter.
ratio = product healthy polls/s ÷ baseline polls/s.

Ends with one JSON line: {"bench": "poll_dlt645", "bus_efficiency": ..., "polls_per_s": ...,
"ratio": ...}. Run: .venv/bin/python benchmarks/poll_dlt645.py [--seconds 25]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from openprepay.core.app.plugins import DISABLE_ENV, Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import parse_site
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.logs import setup_logging
from openprepay.plugins.dlt645.codec import FRAMING, OVERHEAD, PREAMBLE, read_request
from openprepay.plugins.dlt645.plugin import PROFILES

MODEL = "dlt645.single_phase"
METERS = 8
DEAD = "M8"
BAUD = 2400
TURNAROUND_S = 0.020
WARMUP_S = 2.0


def address(i: int) -> str:
    return f"{i:012d}"


def site_data() -> dict:
    return {
        "site": {"id": "bench"},
        "poll": {
            "interval_s": 0,
            "stats_interval_s": 60,
            "backoff_initial_s": 1.0,
            "backoff_max_s": 60,
            "quarantine_after": 5,
            "quarantine_probe_s": 300,
        },
        "links": {
            "bus": {
                "type": "serial",
                "device": "socket://127.0.0.1:1",
                "protocol": "dlt645",
                "baudrate": BAUD,
                "timeout_ms": 300,
            }
        },
        "buildings": {"A": {"floors": ["1"]}},
        "rooms": {"A-1": {"building": "A", "floor": "1"}},
        "devices": {
            f"M{i}": {
                "model": MODEL,
                "link": "bus",
                "address": address(i),
                "room": "A-1",
                "control_mode": "POSTPAID",
            }
            for i in range(1, METERS + 1)
        },
    }


def wire_s_per_poll(bits_per_char: int) -> float:
    """Request + answer frames of one poll, with preambles, at the baud rate, plus turnaround."""
    chars = 0
    for read in PROFILES[MODEL].reads:
        chars += len(PREAMBLE) + OVERHEAD + 4  # request: DI
        chars += len(PREAMBLE) + OVERHEAD + 4 + read.size  # answer: DI + data
    return chars * bits_per_char / BAUD + TURNAROUND_S * len(PROFILES[MODEL].reads)


async def bare_loop(host: str, port: int, seconds: float) -> float:
    """The same requests to the healthy meters, back to back, nothing checked: polls/s."""
    reader, writer = await asyncio.open_connection(host, port)
    requests = [
        PREAMBLE + read_request(address(i), r.di).encode()
        for i in range(1, METERS)
        for r in PROFILES[MODEL].reads
    ]
    done = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            writer.write(requests[done % len(requests)])
            buffer = b""
            while not FRAMING.scan(buffer).complete:
                buffer += await reader.read(256)
            done += 1
    finally:
        writer.close()
    return done / len(PROFILES[MODEL].reads) / (time.monotonic() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--baseline-seconds", type=float, default=8.0)
    args = parser.parse_args()
    setup_logging("WARNING")
    os.environ.setdefault(DISABLE_ENV, "historian,opcua,web")
    plugins = Plugins.load()
    site = parse_site(site_data())
    options = SimulatorOptions(serial_timing=True, turnaround_s=TURNAROUND_S, ephemeral_ports=True)
    async with SimulatedSite(site, plugins, options) as sims:
        sims.devices[DEAD].silent = True
        runtime = Runtime(sims.service_site(), plugins)
        healthy = [m for m in site.devices if m != DEAD]
        bus = sims.links["bus"]
        reads = len(PROFILES[MODEL].reads)
        async with runtime:
            await asyncio.sleep(WARMUP_S)
            # Healthy polls in DI answers the bus delivered (a poll is `reads` of them), so
            # that a poll under way at either end of the window counts for its part.
            before = bus.answered  # type: ignore[attr-defined]
            started = time.monotonic()
            await asyncio.sleep(args.seconds)
            polled = (bus.answered - before) / reads  # type: ignore[attr-defined]
            elapsed = time.monotonic() - started
            complete = sum(runtime.arbiter.health(m).polls_ok for m in healthy)
            dead = runtime.arbiter.health(DEAD)
            dead_attempts, dead_state = dead.polls_failed, dead.state.name
        link = site.links["bus"]
        per_poll = wire_s_per_poll(link.bits_per_char)
        allowed = elapsed / per_poll
        efficiency = polled / allowed
        product = polled / elapsed
        print(
            f"product: {polled:.1f} healthy polls in {elapsed:.1f} s = {product:.3f} polls/s "
            f"({reads} DIs each, {per_poll * 1000:.0f} ms of bus per poll; "
            f"{complete} complete polls since start)"
        )
        print(
            f"bus efficiency: the baud rate allows {allowed:.1f} polls -> {efficiency:.2%}; "
            f"dead meter {DEAD}: {dead_attempts} attempts, now {dead_state}"
        )
        host, port = sims.addresses["bus"]
        bare = await bare_loop(host, port, args.baseline_seconds)
        ratio = product / bare
        print(f"baseline: bare loop {bare:.3f} polls/s on the healthy meters -> ratio {ratio:.3f}")
    print(
        json.dumps(
            {
                "bench": "poll_dlt645",
                "bus_efficiency": round(efficiency, 3),
                "polls_per_s": round(product, 3),
                "ratio": round(ratio, 3),
                "baseline_polls_per_s": round(bare, 3),
                "baud": BAUD,
                "meters": METERS,
                "dead_meter_attempts": dead_attempts,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
