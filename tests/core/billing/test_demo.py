"""The demo's [billing] on the running service with simulated meters: the billing service
starts with the runtime, captures the registers of every pool meter from the sample
stream, and the common-area pool of a building computed from two captures shows a main
meter that measured at least what its room meters did (the loss is never negative)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import tomli_w

from openprepay.core.app.demo import demo_site_data, open_demo_accounts
from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.billing.readings import Reading, readings_at
from openprepay.core.config.site import load_site, parse_site
from openprepay.core.contracts import SimulatorOptions


async def test_demo_pools_are_captured_from_the_meters(plugins: Plugins, tmp_path: Path) -> None:
    data = demo_site_data(
        buildings=1, floors=1, rooms_per_floor=3, water=False, poll_interval_s=0.2
    )
    assert set(data["billing"]["pools"]) == {"A"}
    data["billing"]["reading_flush_s"] = 3600  # flushed by the test
    data["billing"]["month_end_poll_s"] = 3600
    data["poll"]["time_scale"] = 600  # the simulators' speed-up below
    site = parse_site(data)
    sims = SimulatedSite(
        site,
        plugins,
        SimulatorOptions(speedup=600, ephemeral_ports=True, timezone=site.info.timezone),
    )
    await sims.start()
    try:
        for link_id, (host, port) in sims.addresses.items():
            data["links"][link_id]["host"], data["links"][link_id]["port"] = host, port
        site_file = tmp_path / "site.toml"
        site_file.write_text(tomli_w.dumps(data))
        runtime = Runtime(load_site(site_file), plugins)
        async with runtime:
            assert runtime.billing is not None
            open_demo_accounts(runtime)
            billing = runtime.billing
            pool = billing.settings.pools["A"]
            assert pool.subs == ("E-A-101", "E-A-102", "E-A-103") and pool.main == "M-A"

            async def capture() -> dict[str, Reading]:
                since = dt.datetime.now(dt.UTC)

                def fresh(meter: str) -> bool:
                    s = runtime.readings.get(meter, runtime.site.devices[meter].model)
                    return s is not None and s.quality.is_good and s.read_at > since

                for _ in range(200):  # a new Good sample of every pool meter
                    await asyncio.sleep(0.1)
                    if all(fresh(m) for m in pool.meters):
                        break
                await asyncio.to_thread(billing.flush_readings)
                at = billing.calendar.capture_instant(dt.datetime.now(dt.UTC))
                with runtime.db.read() as conn:
                    return readings_at(conn, pool.meters, at)

            first = await capture()
            await asyncio.sleep(1.0)
            second = await capture()
        assert set(first) == set(pool.meters) == set(second)
        # The same instant for everyone: the pool from two captures, as at a month's end.
        instant = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
        start = {m: Reading(m, instant, instant, r.energy) for m, r in first.items()}
        end = {m: Reading(m, instant, instant, r.energy) for m, r in second.items()}
        figures, why = billing.billing.apportionment.figures(pool, start, end)
        assert figures is not None, why
        assert figures.subs > 0 and figures.main >= figures.subs  # the loss is not negative
    finally:
        await sims.stop()
