"""A history check in the style of Jepsen, for payments and commands across faults.

Two instances as processes run the site; this process streams top-ups through the door
(half of them RECHARGE a LOCAL meter) and supply commands, and records every outcome as
Jepsen does: ok (acknowledged), fail (refused: nothing written) or info (unknown). A seeded
schedule hits the link's owner with SIGKILL (then restarts it) or SIGSTOP (then SIGCONT
after its lease has passed on). Afterwards, with every command settled:

- every ok top-up is in the ledger exactly once, every info one at most once, no failed one;
- the LOCAL meter took each RECHARGE once (its purchase count and money match the ledger);
- the gateway saw no more changes of speaker than faults injected (no interleaving);
- `openprepay ledger verify` holds.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import threading
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from openprepay.core.app.drill import (
    PaymentStream,
    commands_settled,
    open_drill_accounts,
    verify_ledger,
)
from openprepay.core.config.site import load_site
from openprepay.core.db import schema as t
from openprepay.core.operations import Operations
from openprepay.core.prepay import commands as cmds
from tests.conftest import until

from .instances import CLUSTER, owner_of
from .test_failover import Cluster, owned_by
from .test_failover import cluster as cluster  # the fixture


@pytest.mark.parametrize("seed", [7, 11])
async def test_seeded_faults_lose_and_double_nothing(
    cluster: Cluster,
    plugins: Any,
    seed: int,
) -> None:
    c = cluster
    rng = random.Random(seed)
    site = load_site(c.instances["a"].site_file)
    ops = Operations(site, c.db, models=plugins.models)
    with c.db.begin() as conn:
        open_drill_accounts(conn, site, plugins.models)
    e101: Any = c.sims.devices["E-101"]
    energy_at_open = sum(e101.energy.values())
    names = ("a", "b")
    for name in names:
        await c.instances[name].start()
    await owned_by(c, names)
    history = PaymentStream(ops, actor="history", prefix="h", amount_spread=30, command_every=5)
    streamer = threading.Thread(target=history.run, daemon=True)
    streamer.start()
    faults = 0
    try:
        for _ in range(3):
            victim = await owned_by(c, names)
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            other = next(n for n in names if n != victim)
            if rng.random() < 0.5:
                await c.instances[victim].kill()
                faults += 1
                await owned_by(c, (other,), timeout=CLUSTER["lease_ttl_s"] * 10)
                await c.instances[victim].start()
            else:
                c.instances[victim].signal(signal.SIGSTOP)
                faults += 1
                await owned_by(c, (other,), timeout=CLUSTER["lease_ttl_s"] * 10)
                await asyncio.sleep(rng.uniform(0.0, 1.0))
                c.instances[victim].signal(signal.SIGCONT)
                await until(lambda v=victim: c.instances[v].logged(f"given up by {v}"), 30)
    finally:
        history.stop.set()
        await asyncio.to_thread(streamer.join)

    await until(lambda: commands_settled(c.db), 120, step=0.2)
    status, out = await verify_ledger(c.instances["a"].site_file)
    assert status == 0, out

    with c.db.read() as conn:
        rows = conn.execute(
            sa.select(t.topup.c.reference, t.topup.c.account_id, t.topup.c.amount_fen)
        ).all()
        commands = cmds.list_commands(conn, limit=10_000)
    count = Counter(r.reference for r in rows)
    assert history.ok, "the stream made no progress"
    assert all(count[ref] == 1 for ref, _, _ in history.ok), (
        "an acknowledged top-up lost or doubled"
    )
    assert all(count[ref] <= 1 for ref in history.info)
    assert not any(count[ref] for ref in history.failed)
    assert sum(count.values()) == len(count)  # one row per reference
    # No command lost, none left failed; the LOCAL meter took each RECHARGE once.
    assert all(cm.state in ("CONFIRMED", "SUPERSEDED") for cm in commands), [
        (cm.id, cm.kind, cm.state, cm.last_error) for cm in commands if cm.state == "FAILED"
    ]
    local = [r for r in rows if r.account_id == "A-102"]
    sim: Any = c.sims.devices["E-102"]
    assert sim.buy_count == len(local)
    assert round(sim.remaining * 100) == sum(r.amount_fen for r in local)
    # Metering billed no energy twice: no more than the meter's register advanced (a
    # paused owner's flush from an old baseline is fenced by the database).
    with c.db.read() as conn:
        billed = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(t.meter_usage_day.c.energy), 0)).where(
                t.meter_usage_day.c.meter_id == "E-101"
            )
        ).scalar()
    advanced = round((sum(e101.energy.values()) - energy_at_open) * 1000)
    assert billed <= advanced + 10, (billed, advanced)  # registers are read to 0.01 kWh
    # The gateway heard one speaker at a time: the speaker changes only where the previous
    # one was killed or gave the link up (a fault, or a heartbeat late under load).
    speakers = [f.instance for f in c.frames()]
    changes = sum(1 for x, y in itertools.pairwise(speakers) if x != y)
    given_up = sum(
        line.count("link gw: given up by") for i in c.instances.values() for line in i.log
    )
    assert changes <= faults + given_up, (changes, faults, given_up)
    assert owner_of(c.db)[1] >= faults + 1
