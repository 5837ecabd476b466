"""Physics that may lag a read (`SimulatorOptions.advance_every_s`, what `openprepay
simulate` runs with) accrue the same energy and water as physics stepped on every request.

Two simulators of the same device (same seed) run on one hand-driven clock, one stepping on
every read, one at most once a simulated minute. From 14:00 to 15:00 both load curves are
flat and the noise holds for 5 minutes, so within one such slot the demand is constant and
both integrations are exact: their totals agree to float rounding whatever their steps.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from openprepay.core.app.plugins import Plugins
from openprepay.core.contracts import SimulatorOptions
from openprepay.plugins.modbus.simulation import RegisterDeviceSimulator, SimClock

from .conftest import Meter

START = datetime(2026, 3, 2, 14, 0, 10, tzinfo=ZoneInfo("Asia/Shanghai"))
EXACT = SimulatorOptions(speedup=1, start=START, advance_every_s=0.0)
LAGGING = dataclasses.replace(EXACT, advance_every_s=60.0)


class HandClock(SimClock):
    """Simulated time that moves only when the test says so."""

    def __init__(self, options: SimulatorOptions) -> None:
        super().__init__(options)
        self.t = 0.0

    def elapsed_s(self) -> float:
        return self.t


def twin(
    plugins: Plugins, meter: Meter, options: SimulatorOptions, clock: HandClock
) -> RegisterDeviceSimulator:
    config = meter.config("gw")
    sim = plugins.make_simulator(plugins.model(config.model), config, options)
    assert isinstance(sim, RegisterDeviceSimulator)
    sim.clock = clock
    return sim


def energy_register(sim: RegisterDeviceSimulator) -> int:
    words = sim.read_registers(0x0000, 2)
    assert isinstance(words, list)
    return (words[0] << 16) | words[1]


def test_a_lagging_meter_accrues_the_same_energy(plugins: Plugins) -> None:
    clock = HandClock(EXACT)
    meter = Meter("acrel.DDSY1352", options={"sim_load_kw": 3.0})
    exact, lagging = twin(plugins, meter, EXACT, clock), twin(plugins, meter, LAGGING, clock)
    seen: list[int] = []
    steps = 0
    for _ in range(40):  # 280 simulated seconds in 7 s steps, inside one noise slot
        clock.t += 7.0
        before = lagging._last_advance
        seen.append(energy_register(lagging))
        steps += lagging._last_advance != before
        energy_register(exact)
    # Reads within a minute of the last step shared it; the register never went back.
    assert 4 <= steps <= 5
    assert seen == sorted(seen) and seen[-1] > seen[0]
    assert sum(exact.energy.values()) > 1000  # it did start from its seeded total
    for sim in (exact, lagging):
        sim.snapshot()  # a snapshot steps to the clock's now, lag or not
    for rate, kwh in exact.energy.items():
        assert abs(lagging.energy[rate] - kwh) < 1e-9
    assert energy_register(lagging) == energy_register(exact)


def test_a_write_acts_on_the_state_of_its_moment(plugins: Plugins) -> None:
    clock = HandClock(EXACT)
    meter = Meter("acrel.DDSY1352", options={"sim_load_kw": 3.0})
    exact, lagging = twin(plugins, meter, EXACT, clock), twin(plugins, meter, LAGGING, clock)
    for sim in (exact, lagging):
        energy_register(sim)  # the first read starts the clock of its physics
    clock.t += 30.0
    for sim in (exact, lagging):
        energy_register(sim)  # the lagging one does not step
        # The relay trips: what the meter used up to now is counted, its load drops at once.
        assert sim.write_registers(16, 0x0057, [1, 1]) is None
    assert abs(sum(lagging.energy.values()) - sum(exact.energy.values())) < 1e-9
    assert lagging.values["power_active"] == exact.values["power_active"] == 0.0
    clock.t += 200.0
    for sim in (exact, lagging):
        sim.snapshot()
    assert abs(sum(lagging.energy.values()) - sum(exact.energy.values())) < 1e-9


def test_a_lagging_water_meter_delivers_the_same_volume(plugins: Plugins) -> None:
    clock = HandClock(EXACT)
    meter = Meter("xintai.valve_meter", options={"sim_flow_m3h": 1.5})
    exact, lagging = twin(plugins, meter, EXACT, clock), twin(plugins, meter, LAGGING, clock)
    start_m3 = exact.volume_forward
    for _ in range(40):
        clock.t += 7.0
        for sim in (exact, lagging):
            assert isinstance(sim.read_registers(0x0001, 28), list)
    assert lagging.volume_forward != exact.volume_forward  # the lagging one is behind
    for sim in (exact, lagging):
        sim.snapshot()
    assert abs(lagging.volume_forward - exact.volume_forward) < 1e-9
    assert lagging.volume_forward - start_m3 > 0.01  # 1.5 m³/h x 0.5 x 280 s, with noise
    # An attribute set from outside shows at the next read, stepped or not.
    lagging.battery_v = 3.0
    lagging.read_registers(0x0001, 28)
    assert lagging.values["battery_low"] == 1


def test_the_hand_clock_starts_where_the_options_say() -> None:
    clock = HandClock(EXACT)
    clock.t = 90.0
    assert clock.now() == START + timedelta(seconds=90)
