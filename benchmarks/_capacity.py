"""What the site-capacity benchmarks share (site_capacity.py, site_instances.py,
opcua_subscribe_all.py): the poll interval, free ports, the CPU a process used, and the
OPC UA client that subscribes to every meter in a process of its own (this file run as
`python _capacity.py SPEC`)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POLL_S = 10.0
#: Monitored items per CreateMonitoredItems request: asyncua's server answers a request
#: in one go on its loop, so 2,000 at a time stalled the service's loop (and polls) for
#: seconds; 500 keep each stall short (benchmarks/opcua_subscribe_all.py measures it).
SUBSCRIBE_BATCH = 500


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports (each socket held until all are chosen, so none repeats)."""
    held = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def process_cpu_s(pid: int) -> float:
    """CPU seconds a process has used (utime + stime from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


# -- the OPC UA client (a process of its own) ----------------------------------------------
async def client_main(url: str, namespace: str, nodes: list[str]) -> None:
    from asyncua import Client, ua

    class Count:
        n = 0

        def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
            Count.n += 1

    client = Client(url, timeout=120, watchdog_intervall=60)
    await client.connect()
    try:
        ns = await client.get_namespace_index(namespace)
        sub = await client.create_subscription(1000, Count())
        handles = [client.get_node(ua.NodeId(n, ns)) for n in nodes]
        started = time.perf_counter()
        for i in range(0, len(handles), SUBSCRIBE_BATCH):
            await sub.subscribe_data_change(handles[i : i + SUBSCRIBE_BATCH], queuesize=1)
        took = time.perf_counter() - started
        print(json.dumps({"ready": len(handles), "subscribe_s": round(took, 2)}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        print(json.dumps({"notifications": Count.n}), flush=True)
    finally:
        await client.disconnect()


async def spawn_client(url: str, namespace: str, nodes: list[str], folder: Path) -> Any:
    spec = folder / "client.json"
    spec.write_text(json.dumps({"url": url, "namespace": namespace, "nodes": nodes}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, str(spec),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 600)
    if not line:
        raise RuntimeError("the OPC UA client did not subscribe")
    proc.subscribed = json.loads(line)  # type: ignore[attr-defined]
    return proc


if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(client_main(spec["url"], spec["namespace"], spec["nodes"]))
