"""A third-party Modbus meter built from the toolkit alone: a profile file and three hooks,
as plugins/modbus/README.md describes it, run through the same runtime as the built-ins."""

from __future__ import annotations

import types
from pathlib import Path

from pymodbus.constants import ExcCodes

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import LinkType
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.hookspecs import hookimpl
from openprepay.core.model import DeviceCommand
from openprepay.plugins.modbus import ProfileCatalogue, ProfileDriver, RegisterDeviceSimulator

from .conftest import Meter, site_of

PROFILE = """
[model]
name = "acme.heat1"
vendor = "ACME"
product = "Heat 1"
kind = "water"
description = "A made-up meter with a float setpoint and a CDAB energy counter"
total_point = "volume"

[model.limits]
max_flow = 2.5

[protocol]
order = "CDAB"

[[blocks]]
start = 100
count = 6

[points.volume]
address = 100
type = "u32"
scale = 0.001
unit = "m³"
role = "cumulative"
description = "Volume"

[points.setpoint]
address = 102
type = "f32"
order = "ABCD"
unit = "m³/h"
role = "setting"
description = "Flow limit"

[points.mode]
address = 104
type = "u16"
role = "state"
description = "Mode"

[points.alarm]
address = 105
type = "u16"
bit = 15
role = "state"
description = "Alarm flag"

[commands.SET_LIMIT]
description = "Set the flow limit"
function = 16
address = 102
fields = [{ param = "limit", type = "f32", order = "ABCD" }]
confirm = { point = "setpoint", expect_param = "limit" }
confirm_delay_ms = 50
"""


class HeatSimulator(RegisterDeviceSimulator):
    def on_write(self, function: int, address: int, words: list[int]) -> ExcCodes | None:
        if address != 102 or len(words) != 2:
            return ExcCodes.ILLEGAL_ADDRESS
        self.set_raw(address, words)  # a plain holding register pair
        return None


def make_plugin(profiles: Path) -> types.SimpleNamespace:
    catalogue = ProfileCatalogue(profiles)

    @hookimpl
    def openprepay_device_models():
        return catalogue.models()

    @hookimpl
    def openprepay_make_driver(model, device, transport):
        return catalogue.make_driver(model, device, transport, ProfileDriver)

    @hookimpl
    def openprepay_make_simulator(model, device, options):
        profile = catalogue.profile(model)
        if profile is None:
            return None
        sim = HeatSimulator(profile, device, options)
        sim.values.update(volume=123456.789, setpoint=0.0, mode=3, alarm=1)
        return sim

    return types.SimpleNamespace(
        openprepay_device_models=openprepay_device_models,
        openprepay_make_driver=openprepay_make_driver,
        openprepay_make_simulator=openprepay_make_simulator,
    )


async def test_a_profile_and_three_hooks_make_a_working_meter(tmp_path: Path) -> None:
    (tmp_path / "heat1.toml").write_text(PROFILE)
    plugins = Plugins.load(extra=[("acme", make_plugin(tmp_path))])
    assert "acme.heat1" in plugins.models and plugins.models["acme.heat1"].plugin == "acme"

    site = site_of(LinkType.MODBUS_TCP, Meter("acme.heat1", unit_id=12))
    options = SimulatorOptions(speedup=0, ephemeral_ports=True)
    async with SimulatedSite(site, plugins, options) as sims:
        runtime = Runtime(sims.service_site(), plugins)
        async with runtime:
            sample = await runtime.arbiter.read_now("M12")
            assert sample.values == {"volume": 123456.789, "setpoint": 0.0, "mode": 3, "alarm": 1}
            # CDAB: the low word of the counter comes first on the wire.
            assert sims.devices["M12"].raw(100, 2) == [0xCD15, 0x075B]  # type: ignore[attr-defined]
            # A float written and read back: confirmed although 1234.567 is not a float32,
            # and published as the shortest decimal the register holds.
            outcome = await runtime.arbiter.execute(
                DeviceCommand("M12", "SET_LIMIT", {"limit": 1234.567})
            )
            assert outcome.confirmed, outcome.detail
            setpoint = (await runtime.arbiter.read_now("M12")).values["setpoint"]
            assert setpoint == 1234.567
