"""Top-up to supply restored: how long from `Operations.topup` to the relay read back closed.

A simulated RS-485 gateway (RTU over TCP, 9600-baud serial timing) hosts 41 prepaid
meters that are polled continuously; one of them belongs to an account in arrears whose
relay is tripped. Each round tops the account up through `Operations.topup` (as the CLI and
the OPC UA TopUp method do, on a worker thread) and waits for the `SupplyChanged` event
that follows the read-back of the CLOSE: the top-up's transaction, fee control, the
durable command, the executor claiming it, the arbiter putting it ahead of the polls, the
write and the confirmation read. A refund of the same amount then empties the account and
fee control trips the relay again for the next round.

Baseline, measured in the same run on the same busy gateway: the same CLOSE sent directly
through the link arbiter (`arbiter.execute`, write + read-back), after a direct TRIP. The
ratio says what the durable, audited path costs on top of the bare device command.

Target: median at most 1 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENPREPAY_DISABLE_PLUGINS", "opcua,historian")

from _site import GATEWAY, METERS, gateway_runtime, gateway_site_data, percentile

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import parse_site
from openprepay.core.events import SupplyChanged
from openprepay.core.model import DeviceCommand
from openprepay.core.prepay import accounts as acc

ROUNDS = 15


async def main() -> dict[str, Any]:
    plugins = Plugins.load()
    data = gateway_site_data()
    async with SimulatedSite(parse_site(data), plugins, GATEWAY) as sims:
        folder = Path(tempfile.mkdtemp(prefix="openprepay-bench-"))
        runtime = gateway_runtime(data, sims, folder, plugins)
        async with runtime:
            ops = runtime.operations
            assert ops is not None and runtime.db is not None
            changes: asyncio.Queue[SupplyChanged] = asyncio.Queue()
            runtime.bus.subscribe(SupplyChanged, changes.put_nowait)
            with runtime.db.begin() as conn:
                acc.create_account(
                    conn,
                    acc.AccountSpec(
                        "A-1", "bench", (acc.resolve_meter(runtime.site, plugins.models, "E1"),)
                    ),
                )

            async def supply(on: bool) -> float:
                while True:
                    event = await asyncio.wait_for(changes.get(), 30)
                    if event.meter_id == "E1" and event.on is on:
                        return time.perf_counter()

            # Into arrears: a top-up, then a refund of all of it trips the relay.
            await asyncio.to_thread(ops.topup, "A-1", 1000, "warm-up", actor="bench")
            await asyncio.to_thread(ops.refund, "A-1", 1000, "warm-up-r", actor="bench")
            await supply(False)
            await asyncio.sleep(2)  # let the poll cycle of 41 meters settle in

            product = []
            for i in range(ROUNDS):
                start = time.perf_counter()
                await asyncio.to_thread(ops.topup, "A-1", 1000, f"t{i}", actor="bench")
                product.append(await supply(True) - start)
                await asyncio.to_thread(ops.refund, "A-1", 1000, f"r{i}", actor="bench")
                await supply(False)

            baseline = []
            arbiter = runtime.arbiter
            for _ in range(ROUNDS):
                await arbiter.execute(DeviceCommand("E1", "TRIP", reason="bench"))
                start = time.perf_counter()
                outcome = await arbiter.execute(DeviceCommand("E1", "CLOSE", reason="bench"))
                baseline.append(time.perf_counter() - start)
                assert outcome.confirmed
            polls = runtime.arbiter.worker_of("E1").stats.published or {}
    result = {
        "bench": "topup_latency",
        "meters_on_gateway": METERS,
        "rounds": ROUNDS,
        "median_ms": round(1000 * statistics.median(product), 1),
        "p95_ms": round(1000 * percentile(product, 95), 1),
        "baseline_median_ms": round(1000 * statistics.median(baseline), 1),
        "baseline_p95_ms": round(1000 * percentile(baseline, 95), 1),
    }
    result["ratio"] = round(result["median_ms"] / result["baseline_median_ms"], 2)
    result["link_utilisation_pct"] = polls.get("utilisation")
    return result


if __name__ == "__main__":
    r = asyncio.run(main())
    print(
        f"top-up → relay closed (Operations.topup → SupplyChanged), {r['rounds']} rounds, "
        f"gateway with {r['meters_on_gateway']} polled meters at 9600 baud:"
    )
    print(f"  product : median {r['median_ms']:8.1f} ms   p95 {r['p95_ms']:8.1f} ms")
    print(
        f"  baseline: median {r['baseline_median_ms']:8.1f} ms   p95 "
        f"{r['baseline_p95_ms']:8.1f} ms   (CLOSE straight through the arbiter)"
    )
    print(f"  ratio   : {r['ratio']}× the bare command; target median ≤ 1000 ms")
    sys.stdout.flush()
    print(json.dumps(r))
