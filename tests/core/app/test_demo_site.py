"""The demo site builds any size the CLI accepts, up to a 20,000-meter estate, wired as an
installer would: a bus per few floors for each medium, unit ids within Modbus's 1–247 and
unique on their bus, a main meter per building feeding its rooms."""

from __future__ import annotations

from collections import Counter

from openprepay.core.app.demo import FLOORS_PER_GATEWAY, demo_site_data
from openprepay.core.config.site import parse_site


def test_the_demo_builds_twenty_thousand_meters_on_real_buses():
    site = parse_site(demo_site_data(buildings=26, floors=40, rooms_per_floor=10))
    assert len(site.devices) >= 20_000
    on_bus = Counter((d.link, d.unit_id) for d in site.devices.values())
    assert max(on_bus.values()) == 1  # no two meters answer to one address on a bus
    assert all(1 <= d.unit_id <= 247 for d in site.devices.values())
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
