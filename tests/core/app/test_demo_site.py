"""The demo site builds any size the CLI accepts, up to a 20,000-meter estate, wired as an
installer would: a bus per few floors for each medium, unit ids within Modbus's 1–247 and
unique on their bus, a main meter per building feeding its rooms."""

from __future__ import annotations

from collections import Counter

from openprepay.core.app.demo import (
    CJT188_MODEL,
    DLT645_MODEL,
    FLOORS_PER_GATEWAY,
    demo_site_data,
)
from openprepay.core.app.plugins import Plugins
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import LinkProtocol, parse_site
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.model import Quality


def test_the_demo_builds_twenty_thousand_meters_on_real_buses():
    site = parse_site(demo_site_data(buildings=26, floors=40, rooms_per_floor=10))
    assert len(site.devices) >= 20_000
    on_bus = Counter((d.link, d.unit_id or d.address) for d in site.devices.values())
    assert max(on_bus.values()) == 1  # no two meters answer to one address on a bus
    modbus = [d for d in site.devices.values() if d.address is None]
    assert all(d.unit_id is not None and 1 <= d.unit_id <= 247 for d in modbus)
    per_link = Counter(d.link for d in site.devices.values())
    assert max(per_link.values()) == FLOORS_PER_GATEWAY * 10  # a bus's load, not a tower's
    water = [d for d in site.devices.values() if d.id.startswith("W-")]
    assert len(water) == 26 * 40 * 10 and all(d.link.startswith("gw-") for d in water)


def test_the_default_demo_keeps_its_shape():
    site = parse_site(demo_site_data())
    assert len(site.devices) == 2 * 5 * 6 * 2 + 2
    assert {d.link for d in site.devices.values() if d.id.startswith("W-A")} == {
        "gw-A-w1",
        "gw-A-w2",
    }


def test_floor_one_of_the_last_building_speaks_dlt645_and_cjt188_on_its_own_feeder():
    data = demo_site_data()
    site = parse_site(data)
    floor = [d for d in site.devices.values() if d.room and site.rooms[d.room].floor == "1"]
    framed = {d.id: d for d in floor if site.rooms[d.room or ""].building == "B"}
    assert len(framed) == 12
    for d in framed.values():
        link = site.links[d.link]
        if d.id.startswith("E-"):
            assert (d.model, d.link, link.protocol) == (
                DLT645_MODEL,
                "gw-B-dlt645",
                LinkProtocol.DLT645,
            )
            assert d.address is not None and len(d.address) == 12
        else:
            assert (d.model, d.link, link.protocol) == (
                CJT188_MODEL,
                "gw-B-cjt188",
                LinkProtocol.CJT188,
            )
            assert d.address is not None and len(d.address) == 14
        assert d.unit_id is None and d.control_mode.value == "REMOTE"
        assert link.baudrate == 2400
    # Building A keeps Modbus on every floor.
    assert all(d.address is None for d in floor if site.rooms[d.room or ""].building == "A")
    # Their own feeder: neither fed by the main meter nor shared in the pool.
    feeds = data["devices"]["M-B"]["options"]["sim_feeds"]
    assert not set(feeds) & set(framed)
    assert data["billing"]["pools"]["B"]["subs"] == feeds
    assert "E-B-201" in feeds
    # A single-floor demo stays all Modbus.
    small = parse_site(demo_site_data(buildings=1, floors=1, rooms_per_floor=3))
    assert all(d.address is None for d in small.devices.values())


async def test_the_demo_floors_dlt645_and_cjt188_meters_answer_on_their_buses() -> None:
    plugins = Plugins.load()
    site = parse_site(demo_site_data(buildings=1, floors=2, rooms_per_floor=2))
    sims = SimulatedSite(site, plugins, SimulatorOptions(speedup=0, ephemeral_ports=True))
    await sims.start()
    served = sims.service_site()
    transports = []
    try:
        for link_id in ("gw-A-dlt645", "gw-A-cjt188"):
            transport = plugins.make_transport(served.links[link_id])
            await transport.connect()
            transports.append(transport)
            for device in served.devices_on(link_id):
                model = plugins.model(device.model)
                sample = await plugins.make_driver(model, device, transport).read()
                assert sample.quality is Quality.GOOD, (device.id, sample.error)
                assert sample.values[model.total_point or ""] > 0
    finally:
        for transport in transports:
            await transport.close()
        await sims.stop()


def test_a_towers_main_meter_has_a_ct_that_covers_its_evening_peak():
    # 400 rooms on one feeder draw hundreds of amps: a direct-connected 80 A main meter's
    # readings would be refused as implausible every evening, and the pool billed nothing.
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo

    from openprepay.core.app.demo import MAIN_METER_MAX_A, POWER_FACTOR
    from openprepay.core.field.loadshape import LoadShape, seed_for

    data = demo_site_data(buildings=1, floors=40, rooms_per_floor=10)
    main = data["devices"]["M-A"]["options"]
    feeds = [data["devices"][m]["options"]["sim_load_kw"] for m in main["sim_feeds"]]
    assert parse_site(data).devices["M-A"].options["ct_ratio"] == main["ct_ratio"] > 1
    evening = datetime(2026, 1, 15, 19, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    worst_kw = (
        max(
            sum(
                LoadShape(base=kw, seed=seed_for(m, 1)).at(evening + timedelta(minutes=5 * k))
                for kw, m in zip(feeds, main["sim_feeds"], strict=True)
            )
            for k in range(24)
        )
        * (1 + main["sim_loss"])
        + 1.7 * main["sim_load_kw"]
    )
    amps = worst_kw * 1000 / (3 * 220 * POWER_FACTOR)
    assert amps <= MAIN_METER_MAX_A * main["ct_ratio"]
    assert demo_site_data()["devices"]["M-A"]["options"].get("ct_ratio", 1) <= 10
