"""The whole service across a real freeze instant, on a clock the test controls: simulated
meters polled every half second, the link's health figures published four times a second
under the meters' ids, readings saved several times a second, the month-end run by the
service itself at the freeze. Every captured freeze reading is the last Good register
reading the meter gave at or before the instant (with its read time), and every post-paid
bill of the month is billed from it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
import tomli_w

from openprepay.core.app.demo import demo_site_data, open_demo_accounts
from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.billing.readings import Reading, energy_of, readings_at, save_captured
from openprepay.core.config.site import load_site, parse_site
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.db import schema as t
from openprepay.core.events import EventBus, set_wall_clock, utcnow
from openprepay.core.model import Quality, Sample

SHANGHAI = ZoneInfo("Asia/Shanghai")
#: The freeze instant closing December 2026, and the one opening it.
FREEZE = dt.datetime(2027, 1, 1, tzinfo=SHANGHAI).astimezone(dt.UTC)
DECEMBER = dt.datetime(2026, 12, 1, tzinfo=SHANGHAI).astimezone(dt.UTC)


@pytest.fixture
def before_the_freeze() -> Iterator[None]:
    set_wall_clock(FREEZE - dt.timedelta(minutes=1))
    yield
    set_wall_clock(None)


def _site_data() -> dict:
    data = demo_site_data(buildings=1, floors=1, rooms_per_floor=3, poll_interval_s=0.5)
    data["poll"]["stats_interval_s"] = 0.25  # health figures between most readings
    data["poll"]["time_scale"] = 60
    shop = sorted(d for d in data["devices"] if d.startswith("E-"))[0]
    for meter in (shop, "W" + shop[1:]):  # a post-paid shop: electricity and water
        data["devices"][meter]["control_mode"] = "POSTPAID"
    data["billing"].update(reading_flush_s=0.3, month_end_poll_s=0.2, run_delay_h=0)
    return data


async def test_the_month_end_bills_every_meter_from_its_last_real_reading(
    plugins: Plugins, tmp_path: Path, before_the_freeze: None
) -> None:
    data = _site_data()
    site = parse_site(data)
    sims = SimulatedSite(
        site, plugins, SimulatorOptions(speedup=60, ephemeral_ports=True, timezone="Asia/Shanghai")
    )
    await sims.start()
    bus = EventBus()
    given: list[Sample] = []  # everything the meters (and the links) said
    bus.subscribe(Sample, given.append)
    try:
        for link_id, (host, port) in sims.addresses.items():
            data["links"][link_id]["host"], data["links"][link_id]["port"] = host, port
        site_file = tmp_path / "site.toml"
        site_file.write_text(tomli_w.dumps(data))
        runtime = Runtime(load_site(site_file), plugins, bus)
        async with runtime:
            billing = runtime.billing
            assert billing is not None and runtime.db is not None
            open_demo_accounts(runtime)
            captured = sorted(billing.capture.layouts)
            assert len(captured) == 5  # the main meter, 3 room meters, the shop's water meter
            first = await _first_readings(runtime, captured)
            with runtime.db.begin() as conn:  # the readings that opened December
                save_captured(conn, first, now=utcnow())
            set_wall_clock(FREEZE - dt.timedelta(seconds=3))
            for _ in range(300):  # across the freeze, until the service's own month-end ran
                await asyncio.sleep(0.1)
                if billing.month_ends:
                    break
            assert [r.period for r in billing.month_ends] == ["2026-12"]
            with runtime.db.read() as conn:
                at_freeze = readings_at(conn, captured, FREEZE)
                bills = conn.execute(sa.select(t.bill).where(t.bill.c.period == "2026-12")).all()
    finally:
        await sims.stop()

    for meter in captured:
        layout = billing.capture.layouts[meter]
        real = [
            s
            for s in given
            if s.source == meter
            and s.read_at <= FREEZE
            and s.quality is Quality.GOOD
            and all(p in s.values and s.quality_of(p).is_good for p in layout.points)
        ]
        last = max(real, key=lambda s: s.read_at)
        assert FREEZE - last.read_at < dt.timedelta(seconds=2), meter  # polled to the end
        reading = at_freeze[meter]
        assert (reading.read_at, reading.source) == (last.read_at, "meter"), meter
        assert (reading.energy, reading.registers) == energy_of(layout, last.values), meter

    shop_meters = {m for m in captured if runtime.site.devices[m].control_mode.value == "POSTPAID"}
    shop_meters.discard(f"M-{next(iter(runtime.site.buildings))}")
    billed = {
        ln["meter"]: ln["energy"] for b in bills for ln in b.lines if ln["kind"] == "meter_reading"
    }
    opening = {r.meter_id: r.energy for r in first}
    assert billed == {m: at_freeze[m].energy - opening[m] for m in shop_meters}
    assert all(not b.problems for b in bills)


async def _first_readings(runtime: Runtime, meters: list[str]) -> list[Reading]:
    """A Good register reading of every captured meter, as December's opening readings."""
    billing = runtime.billing
    assert billing is not None
    for _ in range(200):
        latest = {m: runtime.readings.get(m, runtime.site.devices[m].model) for m in meters}
        if all(s is not None and s.quality.is_good for s in latest.values()):
            break
        await asyncio.sleep(0.05)
    out = []
    for meter, sample in latest.items():
        assert sample is not None, f"{meter} never read"
        energy, registers = energy_of(billing.capture.layouts[meter], sample.values)
        out.append(Reading(meter, DECEMBER, DECEMBER - dt.timedelta(minutes=1), energy, registers))
    return out
