"""A historian process for the kill -9 test: `python spool_child.py SITE COUNT BASE`.

Publishes samples k = 0, 1, 2 ... (meter k % 5, index k // 5) in bursts and, after each
commit, prints `ACCEPTED n`: the first n samples are durable. Then it keeps running (trying to
reach its server) until it is killed.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import conftest as helpers

from openprepay.core.config.site import load_site
from openprepay.core.events import EventBus
from openprepay.historian.config import read_config
from openprepay.historian.service import make_historian


def kth(k: int, base: datetime):
    return helpers.sample(k % 5, k // 5, base)


async def main(site_file: str, count: int, base: datetime) -> None:
    site = load_site(site_file)
    bus = EventBus()
    historian = make_historian(read_config(site), site, bus, helpers.MODELS)
    assert historian is not None
    await historian.start()
    k = 0
    while k < count:
        for _ in range(50):
            bus.publish(kth(k, base))
            k += 1
        await historian.commit()
        print(f"ACCEPTED {historian.accepted_lines}", flush=True)
        await asyncio.sleep(0.002)
    print("DONE", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), datetime.fromisoformat(sys.argv[3])))
