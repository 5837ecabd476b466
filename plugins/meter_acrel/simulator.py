"""Emulated Acrel meters that behave like the real ones on the wire.

`AcrelPrepaidSimulator` (DDSY1352; `AcrelThreePhasePrepaidSimulator` for DTSY1352): energy
accrues from a daily load profile into the 尖/峰/平/谷 register that the meter's own TOU
table selects for the (simulated) local time; the forced-control registers 0x0057/0x0058
open and close the relay and an open relay cuts the load to zero; in LOCAL mode the meter
deducts its own remaining amount at its unit prices and trips at its overdraft limit (0 by
default), and accepts a top-up only with purchase count = its count + 1 (a repeat is
refused as a duplicate, any other count as out of sequence). The alarm amounts are held
for the platform to read; the simulated meter does not pre-trip at them.

Register 0x0058 reads back what was last written to it (the forced command), so
`supply_on` (derived from it) says whether the relay is *commanded* closed. A LOCAL meter
that trips itself shows it as zero current and power, and — a simulator convention, not a
documented register value — as 0x0100 in `fee_state_raw`.

`AcrelPowerMeterSimulator` (DTSD1352/ADL400, ADW300): a metering-only meter, e.g. a
building's common-area main meter. Points the profile marks with `ratio` hold
secondary-side values, i.e. the primary quantity divided by the device options
`ct_ratio`/`pt_ratio`, as on a CT/PT-connected meter.

A stuck relay (`sim_relay_stuck`, or the attribute `relay_stuck` while it runs) acknowledges
relay commands and switches nothing, so they are never confirmed by read-back.

Common device options: `sim_load_kw` (base load), `sim_energy_kwh` (starting total),
`sim_tou` (day table), `sim_optional_blocks = false` (the simulated firmware answers
"illegal data address" for the profile's optional blocks, like a meter without them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime

from pymodbus.constants import ExcCodes

from openprepay.core.config.site import ControlMode, DeviceConfig
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.field.loadshape import LoadShape
from openprepay.core.model import PointRole, Value
from openprepay.plugins.modbus import PointCodec, RegisterDeviceSimulator, RegisterProfile

#: The meter's default day table: (start "HH:MM", rate) with 1 尖, 2 峰, 3 平, 4 谷.
DEFAULT_TOU = (
    ("00:00", 4),
    ("07:00", 3),
    ("08:00", 2),
    ("11:30", 3),
    ("18:30", 2),
    ("19:00", 1),
    ("21:00", 2),
    ("23:00", 4),
)
RATE_POINTS = {1: "energy_sharp", 2: "energy_peak", 3: "energy_flat", 4: "energy_valley"}
RATE_PRICES = {1: "price_sharp", 2: "price_peak", 3: "price_flat", 4: "price_valley"}
#: Simulated seconds per integration step: keeps TOU boundaries and the load curve honest
#: when the demo runs hours of simulated time between two polls.
MAX_STEP_S = 300.0


def parse_tou(table: Sequence[Sequence[object]]) -> list[tuple[int, int]]:
    """[("07:00", 3), ...] → sorted [(minute of day, rate), ...]."""
    out = []
    for start, rate in table:
        hh, mm = str(start).split(":")
        out.append((int(hh) * 60 + int(mm), int(rate)))
    return sorted(out)


def rate_at(tou: list[tuple[int, int]], local: datetime) -> int:
    minute = local.hour * 60 + local.minute
    rate = tou[-1][1]
    for start, r in tou:
        if minute >= start:
            rate = r
    return rate


class _ElectricSimulator(RegisterDeviceSimulator):
    """Load, power quantities and energy integration shared by Acrel meters."""

    phases = 1

    def setup(self) -> None:
        opts = self.device.options
        #: Divisors for points the meter reports on the secondary side of its CT/PT.
        self.ratios = ratio_divisors(self.profile, self.device)
        self.cumulative = {p.name for p in self.model.points if p.role is PointRole.CUMULATIVE}
        base_kw = float(opts.get("sim_load_kw", self.rng.uniform(0.3, 1.6)))
        self.load = LoadShape(base=base_kw, seed=self.seed)
        self.tou = parse_tou(opts.get("sim_tou", DEFAULT_TOU))
        self.relay_closed = True
        # Energy kept exactly, in kWh; registers show it truncated to 0.01 kWh like a meter.
        self.energy = {rate: 0.0 for rate in RATE_POINTS}
        start = float(opts.get("sim_energy_kwh", round(self.rng.uniform(100, 5000), 2)))
        for rate, share in ((1, 0.1), (2, 0.35), (3, 0.3), (4, 0.25)):
            self.energy[rate] = start * share
        self.power_kw = self.demand_kw(self.clock.now().astimezone(self.tz))
        self._refresh_measurements()

    def demand_kw(self, local: datetime) -> float:
        return self.load.at(local) if self.relay_closed else 0.0

    def advance(self, now: datetime, elapsed_s: float) -> None:
        t = now.timestamp() - elapsed_s
        remaining = elapsed_s
        while remaining > 0:
            step = min(remaining, MAX_STEP_S)
            local = datetime.fromtimestamp(t + step / 2, self.tz)
            power = self.demand_kw(local)
            kwh = power * step / 3600
            if kwh:
                self.consume(rate_at(self.tou, local), kwh)
            t += step
            remaining -= step
        self.power_kw = self.demand_kw(now.astimezone(self.tz))
        self._refresh_measurements()

    def consume(self, rate: int, kwh: float) -> None:
        self.energy[rate] += kwh

    def _refresh_measurements(self) -> None:
        v = 220.0 * (1 + self.rng.uniform(-0.02, 0.02))
        p = self.power_kw
        pf = 0.95 if p > 0 else 1.0
        s = p / pf
        total = sum(self.energy.values())
        values = {
            "energy_total": _trunc(total),
            **{RATE_POINTS[r]: _trunc(e) for r, e in self.energy.items()},
            "voltage": round(v, 1),
            "current": round(p * 1000 / (v * pf * self.phases), 2),
            "power_active": round(p, 3),
            "power_reactive": round(math.sqrt(max(s * s - p * p, 0.0)), 3),
            "power_apparent": round(s, 3),
            "power_factor": pf,
            "frequency": round(50 + self.rng.uniform(-0.03, 0.03), 2),
        }
        self.publish(values)
        self._refresh_extra(v, p, s, pf)

    def _refresh_extra(self, voltage: float, p: float, s: float, pf: float) -> None:
        """Model-specific points (per-phase values, forward/reverse energy)."""

    def publish(self, values: Mapping[str, Value]) -> None:
        """Set the register values of the points this meter has, as it would hold them
        (secondary side where the profile says `ratio`)."""
        points, held = self.points, self.values
        if not self.ratios:  # the common case: every value as it is
            for name, value in values.items():
                if name in points:
                    held[name] = value
            return
        for name, value in values.items():
            if name not in points:
                continue
            divisor = self.ratios.get(name)
            if divisor is not None:
                codec = self.profile.codecs[name]
                cumulative = name in self.cumulative
                value = quantize(float(value) / divisor, codec, floor=cumulative)
            self.values[name] = value


def _trunc(kwh: float) -> float:
    return math.floor(kwh * 100 + 1e-9) / 100


def quantize(value: float, codec: PointCodec, floor: bool = False) -> float:
    """`value` as the register shows it: rounded (or, for counters, truncated) to the
    register's resolution, computed the way the decoder computes it."""
    steps = value / codec.scale
    raw = math.floor(steps + 1e-9) if floor else round(steps)
    inverse = round(1 / codec.scale)
    if abs(inverse * codec.scale - 1) < 1e-12:
        return raw / inverse
    return raw * codec.scale


def ratio_divisors(profile: RegisterProfile, device: DeviceConfig) -> dict[str, float]:
    ct = float(device.options.get("ct_ratio", 1))
    pt = float(device.options.get("pt_ratio", 1))
    factor = {"ct": ct, "pt": pt, "ctpt": ct * pt}
    return {name: factor[kind] for name, kind in profile.ratios.items() if factor[kind] != 1}


class AcrelPrepaidSimulator(_ElectricSimulator):
    def setup(self) -> None:
        self.local_mode = self.device.control_mode is ControlMode.LOCAL
        self.forced = False
        self.forced_trip = False
        self.balance_tripped = False
        # The meter's wallet, in CNY with sub-fen precision (displayed truncated to fen).
        self.remaining = float(self.device.options.get("sim_remaining", 100.0))
        self.buy_count = int(self.device.options.get("sim_buy_count", 1))
        self.alarm1, self.alarm2, self.overdraft = 20.0, 5.0, 0.0
        #: Fault: relay commands are acknowledged but the relay never moves (a welded or
        #: bypassed relay), `sim_relay_stuck`.
        self.relay_stuck = bool(self.device.options.get("sim_relay_stuck", False))
        self.prices = {1: 0.72, 2: 0.60, 3: 0.50, 4: 0.20}
        super().setup()
        self._refresh_prepaid()

    # -- behaviour ------------------------------------------------------------------------
    def consume(self, rate: int, kwh: float) -> None:
        super().consume(rate, kwh)
        if self.local_mode:
            self.remaining -= kwh * self.prices[rate]
            self._apply_balance_logic()

    def _apply_balance_logic(self) -> None:
        if not self.local_mode:
            return
        limit = self.overdraft
        overdrawn = (-self.remaining >= limit) if limit > 0 else (self.remaining <= 0)
        if overdrawn:
            self.balance_tripped = True
        self._update_relay()

    def _update_relay(self) -> None:
        if self.forced:
            self.relay_closed = not self.forced_trip
        else:
            self.relay_closed = not self.balance_tripped

    def on_write(self, function: int, address: int, words: list[int]) -> ExcCodes | None:
        if address == 0x0057:
            forced = words[0] == 1
            trip = words[1] == 1 if len(words) > 1 else self.forced_trip
            if words[0] not in (0, 1) or (len(words) > 1 and words[1] not in (0, 1)):
                return ExcCodes.ILLEGAL_VALUE
            if self.relay_stuck:
                return None  # acknowledged; nothing switches
            self.forced, self.forced_trip = forced, trip
            self._update_relay()
        elif address == 0x004E and len(words) == 3:
            count = words[0]
            amount = ((words[1] << 16) | words[2]) / 100
            if count != self.buy_count + 1:
                # Equal count: duplicate recharge (重复充值); any other: out of sequence.
                return ExcCodes.ILLEGAL_VALUE
            self.buy_count = count
            self.remaining += amount
            if self.balance_tripped and self.remaining > 0:
                # Simplification: the relay recloses at once (a real meter may wait for the
                # tenant to press its button).
                self.balance_tripped = False
            self._update_relay()
        elif address == 0x0046 and len(words) == 4:
            alarm1 = ((words[0] << 16) | words[1]) / 100
            alarm2 = ((words[2] << 16) | words[3]) / 100
            if alarm1 < alarm2:
                return ExcCodes.ILLEGAL_VALUE
            self.alarm1, self.alarm2 = alarm1, alarm2
        elif address == 0x0059 and len(words) == 8:
            for i, rate in enumerate((1, 2, 3, 4)):
                self.prices[rate] = ((words[2 * i] << 16) | words[2 * i + 1]) / 10000
        else:
            return ExcCodes.ILLEGAL_ADDRESS
        self.power_kw = self.demand_kw(self.clock.now().astimezone(self.tz))
        self._refresh_measurements()
        self._refresh_prepaid()
        return None

    def advance(self, now: datetime, elapsed_s: float) -> None:
        super().advance(now, elapsed_s)
        if self.local_mode:  # a REMOTE meter's prepaid registers change only by writes
            self._refresh_prepaid()

    def _refresh_prepaid(self) -> None:
        self.publish(
            dict(
                alarm1_amount=self.alarm1,
                alarm2_amount=self.alarm2,
                overdraft_limit=self.overdraft,
                buy_count=self.buy_count,
                remaining_amount=math.floor(self.remaining * 100 + 1e-9) / 100,
                # Simulator convention: high byte 1 while the relay is open (the real meaning of
                # FKState is not documented).
                fee_state_raw=0x0100 if not self.relay_closed else 0,
                relay_forced=int(self.forced),
                # 0x0058 holds the last forced command; supply_on is derived from the same word.
                relay_trip=int(self.forced_trip),
                supply_on=int(not self.forced_trip),
                price_sharp=self.prices[1],
                price_peak=self.prices[2],
                price_flat=self.prices[3],
                price_valley=self.prices[4],
                power_limit=0,
                energy_deep_valley=0.0,
            )
        )


class AcrelThreePhasePrepaidSimulator(AcrelPrepaidSimulator):
    """DTSY1352: the same prepaid behaviour on a three-phase load."""

    phases = 3


class AcrelPowerMeterSimulator(_ElectricSimulator):
    """A metering-only Acrel meter (three-phase), e.g. a building's main meter.

    With `sim_feeds = [meter ids]` in the device options it measures what those meters
    draw plus `sim_loss` (default 4 %) line loss plus its own `sim_load_kw` (common area),
    so main − Σsub − public comes out positive as on a real feeder.
    """

    phases = 3

    def __init__(
        self,
        profile: RegisterProfile,
        device: DeviceConfig,
        options: SimulatorOptions,
        *,
        peers: Mapping[str, _ElectricSimulator] | None = None,
    ) -> None:
        # Set before the base constructor: it runs setup(), whose first reading sums the feeders.
        # Not `peers or {}`: the shared registry is still empty (falsy) when the main meter
        # is built before its feeders.
        self.peers = peers if peers is not None else {}
        super().__init__(profile, device, options)

    def setup(self) -> None:
        self.feed_ids = [str(f) for f in self.device.options.get("sim_feeds", [])]
        self.loss = float(self.device.options.get("sim_loss", 0.04))
        super().setup()

    def demand_kw(self, local: datetime) -> float:
        own = super().demand_kw(local)
        if not self.relay_closed:
            return 0.0
        fed = sum(self.peers[f].demand_kw(local) for f in self.feed_ids if f in self.peers)
        return own + fed * (1 + self.loss)

    def _refresh_extra(self, voltage: float, p: float, s: float, pf: float) -> None:
        per_phase_current = round(p * 1000 / (voltage * pf * 3), 2) if p else 0.0
        extra = {
            "energy_forward": _trunc(sum(self.energy.values())),
            "energy_reverse": 0.0,
            "energy_reactive_forward": _trunc(sum(self.energy.values()) * 0.33),
            "energy_reactive_reverse": 0.0,
            "voltage_a": round(voltage, 1),
            "voltage_b": round(voltage * 1.002, 1),
            "voltage_c": round(voltage * 0.998, 1),
            "current_a": per_phase_current,
            "current_b": per_phase_current,
            "current_c": per_phase_current,
            "power_a": round(p / 3, 3),
            "power_b": round(p / 3, 3),
            "power_c": round(p - 2 * round(p / 3, 3), 3),
        }
        self.publish(extra)
