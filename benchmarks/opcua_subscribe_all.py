"""OPC UA at scale: one client subscribes to every meter's value at N meters.

The site of benchmarks/site_capacity.py (the demo estate sized to N meters, simulators in a
separate process, the whole service in this one with its OPC UA server), and one asyncua
client in a third process that subscribes to each meter's main register in batches of
`SUBSCRIBE_BATCH` (500) items per CreateMonitoredItems call. Reported: how long the
subscription took and items per second, the service's worst event-loop stall while it
was made (the server answers each request on the service's loop), and after one poll
interval how many meters' first notifications arrived — the ratio against the baseline of
one per subscribed meter.

    .venv/bin/python benchmarks/opcua_subscribe_all.py [--meters 4000]

Ends with one JSON line: {"bench": "opcua_subscribe_all", "items": ..., "subscribe_s": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tomli_w

sys.path.insert(0, str(Path(__file__).parent))

from _capacity import POLL_S, SUBSCRIBE_BATCH, spawn_client  # the client: _capacity.py
from site_capacity import Polls, site_data, wait_all_read

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.config.site import load_site


async def main(meters: int) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="opcua-subscribe-all-"))
    data = site_data(meters, folder)
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
        runtime = Runtime(load_site(site_file), Plugins.load())
        polls = Polls(runtime)
        await runtime.start()
        all_read = await wait_all_read(polls, 600)
        nodes = [
            f"Meter:{m}/{runtime.models[runtime.site.devices[m].model].total_point}"
            for m in sorted(polls.meters)
        ]
        runtime.vitals.worst_stall_s = 0.0
        client = await spawn_client(
            f"opc.tcp://127.0.0.1:{data['opcua']['port']}/openprepay",
            f"urn:openprepay:site:{runtime.site.id}",
            nodes,
            folder,
        )
        subscribed = client.subscribed
        stall_ms = round(1000 * runtime.vitals.worst_stall_s, 1)
        await asyncio.sleep(POLL_S + 2)  # every meter polled once more
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"done\n")
        notified = json.loads(await asyncio.wait_for(client.stdout.readline(), 60))
        await asyncio.wait_for(client.wait(), 60)
        started = time.perf_counter()
        await runtime.stop()
        stop_s = time.perf_counter() - started
        items = subscribed["ready"]
        return {
            "bench": "opcua_subscribe_all",
            "meters": len(runtime.site.devices),
            "items": items,
            "batch": SUBSCRIBE_BATCH,
            "subscribe_s": subscribed["subscribe_s"],
            "items_per_s": round(items / max(subscribed["subscribe_s"], 1e-9)),
            "max_loop_stall_ms_while_subscribing": stall_ms,
            "notifications": notified["notifications"],
            "ratio": round(notified["notifications"] / max(items, 1), 3),
            "all_read": all_read,
            "stop_s": round(stop_s, 2),
        }
    finally:
        if client is not None and client.returncode is None:
            client.kill()
        if sims.returncode is None:
            sims.terminate()
            await sims.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--meters", type=int, default=4000)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    figures = asyncio.run(main(args.meters))
    print(
        f"{figures['items']} items subscribed in {figures['subscribe_s']} s "
        f"({figures['items_per_s']} items/s, batches of {figures['batch']}); worst loop "
        f"stall meanwhile {figures['max_loop_stall_ms_while_subscribing']} ms; "
        f"first notifications {figures['notifications']} (ratio {figures['ratio']})"
    )
    print(json.dumps(figures))
