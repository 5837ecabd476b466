"""The live room view shows only what can be trusted: an implausible reading is a meter
that answers (not OFFLINE), and a relay state or power that is not Good shows a dash, not
the garbled value (issue 9 §2)."""

from __future__ import annotations

from openprepay.core.app.demo import demo_site
from openprepay.core.app.plugins import Plugins
from openprepay.core.app.view import DailyTotals, RoomView
from openprepay.core.events import EventBus, utcnow
from openprepay.core.field.latest import LatestReadings
from openprepay.core.model import Quality, Sample


def test_an_implausible_reading_shows_no_relay_state_and_the_meter_online() -> None:
    plugins = Plugins.load()
    site = demo_site(buildings=1, floors=1, rooms_per_floor=1, water=False)
    bus = EventBus()
    view = RoomView(site, LatestReadings(bus), DailyTotals(site, bus), plugins.models)
    model = plugins.models["acrel.DDSY1352"]
    values = {"energy_total": 1000.0, "power_active": 1.5, "supply_on": 1}
    bus.publish(Sample("E-A-101", model, utcnow(), dict(values)))
    row = view._row("A-101")
    assert (str(row[1]), str(row[3]), str(row[4])) == ("online", "1.500", "closed")

    garbled = Sample(
        "E-A-101",
        model,
        utcnow(),
        {**values, "power_active": 99.0, "supply_on": 0},
        Quality.UNCERTAIN,
        error="implausible reading, not billed: energy_total ...",
        point_quality={"power_active": Quality.BAD_DEVICE_FAILURE},
    )
    bus.publish(garbled)
    row = view._row("A-101")
    assert (str(row[1]), str(row[3]), str(row[4])) == ("online", "–", "–")
