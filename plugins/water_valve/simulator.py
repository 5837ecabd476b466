"""An emulated Xintai valve-controlled water meter that behaves like one on the wire.

Water flows by a daily household demand shape (seeded per device) while the valve is open;
the forward volume accumulates and the instantaneous flow reads zero once the valve is
closed. A valve command (FC06 to 0x001C) starts the motor: for `sim_valve_travel_s` real
seconds (1 s by default, whatever the simulation speed-up) neither the open nor the closed
bit is set, then the bit of the new position is. In LOCAL control mode the meter deducts
the remaining prepaid volume as water flows and closes its valve when it reaches zero; it
refuses to open again (illegal data value) until the remaining volume is topped up, and it
does not reopen by itself after a top-up. A valve marked abnormal (`sim_abnormal`) reports
only the abnormal bit and does not move; open/close writes are acknowledged but do nothing.

Device options: `sim_flow_m3h` (base demand, m³/h), `sim_volume_m3` (starting forward
volume), `sim_reverse_m3`, `sim_remaining` (m³), `sim_valve` ("open" or "closed"),
`sim_valve_travel_s`, `sim_battery_v` (the battery-low bit is set below 3.3 V),
`sim_abnormal`, `sim_pipe_empty`, `sim_pulse_coefficient`, `sim_optional_blocks = false`
(the firmware answers "illegal data address" for the optional pulse-coefficient block).
The attributes of the same names (`abnormal`, `battery_v`, `pipe_full`...) can be changed
while the simulator runs.
"""

from __future__ import annotations

import enum
import math
import struct
import time
from datetime import datetime, timedelta

from pymodbus.constants import ExcCodes

from openprepay.core.config.site import ControlMode
from openprepay.core.field.loadshape import LoadShape
from openprepay.core.model import Value
from openprepay.plugins.modbus import RegisterDeviceSimulator
from openprepay.plugins.modbus.codec import BlockDecoder

#: Relative household water demand by local hour: night near zero, morning and evening peaks.
WATER_USE = (
    0.1,
    0.05,
    0.05,
    0.05,
    0.1,
    0.3,
    1.2,
    1.8,
    1.4,
    0.8,
    0.6,
    0.7,
    0.9,
    0.7,
    0.5,
    0.5,
    0.6,
    0.9,
    1.4,
    1.6,
    1.5,
    1.2,
    0.7,
    0.3,
)
#: Simulated seconds per integration step.
MAX_STEP_S = 300.0
BATTERY_LOW_V = 3.3
VALVE_REGISTER = 0x001C
PULSE_REGISTER = 0x001D
OPEN_COMMAND, CLOSE_COMMAND = 1, 2
#: Float registers a master may write (FC16 on the pair, or FC06 on either half).
WRITABLE_FLOATS = {
    0x0001: "volume_forward",
    0x0003: "volume_reverse",
    0x0008: "remaining_volume",
}


class Valve(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    OPENING = "opening"
    CLOSING = "closing"

    @property
    def moving(self) -> bool:
        return self in (Valve.OPENING, Valve.CLOSING)


def f32(value: float) -> float:
    """`value` as a single-precision register holds it."""
    return struct.unpack(">f", struct.pack(">f", value))[0]


class ValveMeterSimulator(RegisterDeviceSimulator):
    def setup(self) -> None:
        opts = self.device.options
        base = float(opts.get("sim_flow_m3h", self.rng.uniform(0.01, 0.04)))
        self.demand = LoadShape(base=base, curve=WATER_USE, noise=0.3, seed=self.seed)
        self.local_mode = self.device.control_mode is ControlMode.LOCAL
        # Volumes are kept exactly; the float32 registers show them rounded.
        self.volume_forward = float(opts.get("sim_volume_m3", round(self.rng.uniform(5, 500), 3)))
        self.volume_reverse = float(opts.get("sim_reverse_m3", 0.0))
        self.remaining = float(opts.get("sim_remaining", 10.0))
        self.battery_v = float(opts.get("sim_battery_v", 3.6))
        self.abnormal = bool(opts.get("sim_abnormal", False))
        self.pipe_full = not bool(opts.get("sim_pipe_empty", False))
        self.pulse_coefficient = int(opts.get("sim_pulse_coefficient", 1))
        self.travel_s = float(opts.get("sim_valve_travel_s", 1.0))
        self.valve = Valve.CLOSED if opts.get("sim_valve", "open") == "closed" else Valve.OPEN
        self._move_end_sim: datetime | None = None
        self._move_end_real = 0.0
        self.flow_m3h = 0.0
        self._refresh(self.clock.now())

    # -- physics --------------------------------------------------------------------------
    def advance(self, now: datetime, elapsed_s: float) -> None:
        t = now - timedelta(seconds=elapsed_s)
        while t < now:
            end = min(t + timedelta(seconds=MAX_STEP_S), now)
            finishing = self._move_end_sim is not None and self._move_end_sim <= end
            if finishing:
                assert self._move_end_sim is not None
                end = max(self._move_end_sim, t)
            self._flow_through(t, end)
            if finishing:
                self._finish_move()
            t = end

    def _flow_through(self, start: datetime, end: datetime) -> None:
        if self.valve is not Valve.OPEN or end <= start:
            return
        seconds = (end - start).total_seconds()
        middle = (start + (end - start) / 2).astimezone(self.tz)
        volume = self.demand.at(middle) * seconds / 3600
        if self.local_mode:
            if volume >= self.remaining:
                # The prepaid volume runs out: the meter closes its valve.
                self.volume_forward += max(self.remaining, 0.0)
                self.remaining = 0.0
                self._start_move(Valve.CLOSING, end)
                return
            self.remaining -= volume
        self.volume_forward += volume

    def _start_move(self, direction: Valve, at: datetime) -> None:
        self.valve = direction
        self._move_end_sim = at + timedelta(seconds=self.travel_s * self.options.speedup)
        self._move_end_real = time.monotonic() + self.travel_s

    def _finish_move(self) -> None:
        self.valve = Valve.OPEN if self.valve is Valve.OPENING else Valve.CLOSED
        self._move_end_sim = None

    def _tick(self, exact: bool = False) -> None:
        super()._tick(exact)
        # With a frozen clock (speedup 0) simulated time never reaches the end of the
        # travel: the valve still moves in real seconds.
        frozen = self.options.speedup == 0
        if frozen and self.valve.moving and time.monotonic() >= self._move_end_real:
            self._finish_move()
        # Re-read the state only when something moved: time stepped, the valve, or an
        # attribute set from outside (a test's battery_v, abnormal...).
        if exact or self._state_key() != self._shown:
            self._refresh(self.clock.now())

    def _state_key(self) -> tuple[object, ...]:
        """Everything the registers show, apart from time (`_last_advance` stands for it)."""
        return (
            self._last_advance,
            self.valve,
            self.volume_forward,
            self.volume_reverse,
            self.remaining,
            self.battery_v,
            self.abnormal,
            self.pipe_full,
            self.pulse_coefficient,
        )

    # -- register image -------------------------------------------------------------------
    def _refresh(self, now: datetime) -> None:
        self._shown = self._state_key()
        open_ = self.valve is Valve.OPEN
        self.flow_m3h = self.demand.at(now.astimezone(self.tz)) if open_ else 0.0
        values: dict[str, Value] = {
            "volume_forward": f32(self.volume_forward),
            "volume_reverse": f32(self.volume_reverse),
            "flow_rate": f32(self.flow_m3h),
            "pipe_full": 1 if self.pipe_full else 0,
            "remaining_volume": f32(self.remaining),
            "slave_address": self.device.unit_id,
            "battery_voltage": f32(self.battery_v),
            # An abnormal valve reports neither position.
            "valve_open": int(open_ and not self.abnormal),
            "valve_closed": int(self.valve is Valve.CLOSED and not self.abnormal),
            "valve_abnormal": int(self.abnormal),
            "battery_low": int(self.battery_v < BATTERY_LOW_V),
            "pulse_coefficient": self.pulse_coefficient,
        }
        self.values = {k: v for k, v in values.items() if k in self.points}

    # -- writes ---------------------------------------------------------------------------
    def on_write(self, function: int, address: int, words: list[int]) -> ExcCodes | None:
        now = self.clock.now()
        if address == VALVE_REGISTER and len(words) == 1:
            result = self._command_valve(words[0], now)
        elif address == PULSE_REGISTER and len(words) == 1 and "pulse_coefficient" in self.points:
            self.pulse_coefficient = words[0]
            result = None
        else:
            result = self._write_float(address, words)
        self._refresh(now)
        return result

    def _command_valve(self, command: int, now: datetime) -> ExcCodes | None:
        if command not in (OPEN_COMMAND, CLOSE_COMMAND):
            return ExcCodes.ILLEGAL_VALUE
        if command == OPEN_COMMAND and self.local_mode and self.remaining <= 0:
            return ExcCodes.ILLEGAL_VALUE  # nothing left to deliver
        if self.abnormal:
            return None  # acknowledged; a stuck valve does not move
        if command == OPEN_COMMAND and self.valve in (Valve.CLOSED, Valve.CLOSING):
            self._start_move(Valve.OPENING, now)
        elif command == CLOSE_COMMAND and self.valve in (Valve.OPEN, Valve.OPENING):
            self._start_move(Valve.CLOSING, now)
        return None

    def _write_float(self, address: int, words: list[int]) -> ExcCodes | None:
        for start, name in WRITABLE_FLOATS.items():
            if start <= address and address + len(words) <= start + 2:
                registers = self.raw(start, 2)
                registers[address - start : address - start + len(words)] = words
                decoded: dict[str, Value] = {}
                codec = self.profile.codecs[name]
                BlockDecoder(start, 2, [codec]).decode(registers, decoded)
                value = float(decoded[name])
                if not math.isfinite(value) or value < 0:
                    return ExcCodes.ILLEGAL_VALUE
                self.set_raw(start, registers)
                if name == "volume_forward":
                    self.volume_forward = value
                elif name == "volume_reverse":
                    self.volume_reverse = value
                else:
                    self.remaining = value
                return None
        return ExcCodes.ILLEGAL_ADDRESS
