"""An emulated CJ/T 188 cold-water meter that answers on the wire like one.

Water flows by a daily household demand shape (seeded per device) while the valve is open;
the cumulative volume (901F) accumulates and stops once the valve is closed. A valve
command (C=04, DI A017, 55 open / 99 close) is acknowledged at once (84 with ST) and the
motor then runs for `sim_valve_travel_s` real seconds (1 s by default, whatever the
simulation speed-up): until it has arrived ST still shows the old position. A valve marked
abnormal (`sim_abnormal`) reports 11 in the valve bits and does not move.

It answers read data 901F (the water layout, L = 0x16), read address (C=03, DI 810A, to
its own address or the wildcard AA×7) and the valve write; any other DI gets an error
reply (C | 0x40). Requests for another address or meter type are ignored, as on a bus.
`silent` meters never answer and `garbage` meters answer with a corrupt checksum — the
simulated bus (plugins/framed) applies both.

Device options: `sim_flow_m3h` (base demand, m³/h), `sim_volume_m3` (starting volume),
`sim_valve` ("open" or "closed"), `sim_valve_travel_s`, `sim_battery_low`,
`sim_abnormal`, `sim_unit` ("m3" or "L": the unit code the meter reports in),
`sim_silent`, `sim_garbage`. The attributes `abnormal`, `battery_low`, `silent` and
`garbage` can be changed while the simulator runs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from openprepay.core.config.site import DeviceConfig
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.field.loadshape import LoadShape, seed_for
from openprepay.core.model import Value
from openprepay.plugins.modbus.simulation import SimClock

from . import codec
from .codec import DI, Control, Frame, FrameError
from .profile import Cjt188Profile

#: Relative household water demand by local hour: night near zero, morning and evening peaks.
WATER_USE = (
    *(0.1, 0.05, 0.05, 0.05, 0.1, 0.3, 1.2, 1.8, 1.4, 0.8, 0.6, 0.7),
    *(0.9, 0.7, 0.5, 0.5, 0.6, 0.9, 1.4, 1.6, 1.5, 1.2, 0.7, 0.3),
)
#: Simulated seconds per integration step.
MAX_STEP_S = 300.0
#: XXXXXX.XX: the register wraps after this many hundredths.
REGISTER_STEPS = 10**8


class Cjt188MeterSimulator:
    def __init__(
        self,
        profile: Cjt188Profile,
        device: DeviceConfig,
        options: SimulatorOptions,
        clock: SimClock | None = None,
    ) -> None:
        self.profile = profile
        self.model = profile.model
        self.device = device
        self.options = options
        self.clock = clock or SimClock(options)
        self.tz = ZoneInfo(options.timezone)
        self.address = codec.check_address(device.address or "")
        opts = device.options
        self.seed = seed_for(device.id, options.seed)
        base = float(opts.get("sim_flow_m3h", 0.02 + (self.seed % 1000) / 50_000))
        self.demand = LoadShape(base=base, curve=WATER_USE, noise=0.3, seed=self.seed)
        self.volume = Decimal(str(opts.get("sim_volume_m3", 10 + self.seed % 400)))
        self.settlement = self.volume
        self.valve_open = opts.get("sim_valve", "open") != "closed"
        self.travel_s = float(opts.get("sim_valve_travel_s", 1.0))
        self.battery_low = bool(opts.get("sim_battery_low", False))
        self.abnormal = bool(opts.get("sim_abnormal", False))
        self.unit_code = codec.UNITS_BY_NAME[str(opts.get("sim_unit", "m3"))]
        self.silent = bool(opts.get("sim_silent", False))
        self.garbage = bool(opts.get("sim_garbage", False))
        #: A commanded position the motor has not reached yet, and when it arrives.
        self._target: bool | None = None
        self._arrives = 0.0
        self._last: datetime | None = None
        #: Valve commands received, for tests.
        self.valve_commands: list[str] = []

    # -- physics --------------------------------------------------------------------------
    def _tick(self) -> None:
        now = self.clock.now()
        if self._target is not None and time.monotonic() >= self._arrives:
            self._flow_until(now)
            self.valve_open, self._target = self._target, None
        self._flow_until(now)

    def _flow_until(self, now: datetime) -> None:
        start = self._last or now
        self._last = now
        while start < now:
            end = min(start + timedelta(seconds=MAX_STEP_S), now)
            if self.valve_open and not self.abnormal:
                middle = (start + (end - start) / 2).astimezone(self.tz)
                flowed = self.demand.at(middle) * (end - start).total_seconds() / 3600
                self.volume += Decimal(str(round(flowed, 6)))
            start = end

    def register_steps(self) -> int:
        """The volume as the BCD register holds it (hundredths of the reported unit)."""
        factor = codec.UNITS[self.unit_code][1]
        return int((self.volume / factor).scaleb(2)) % REGISTER_STEPS

    def status(self) -> int:
        valve = "abnormal" if self.abnormal else ("open" if self.valve_open else "closed")
        return self.profile.status.encode(valve, self.battery_low)

    def snapshot(self) -> Mapping[str, Value]:
        self._tick()
        return {
            "volume": float(self.volume),
            "valve_open": int(self.valve_open and not self.abnormal),
            "valve_closed": int(not self.valve_open and not self.abnormal),
            "valve_abnormal": int(self.abnormal),
            "battery_low": int(self.battery_low),
            "status": self.status(),
        }

    # -- the wire -------------------------------------------------------------------------
    def answer(self, raw: bytes) -> bytes | None:
        """The reply frame to the request `raw`, or None when it is not for this meter."""
        try:
            request = codec.decode(raw)
        except FrameError:
            return None  # a meter does not answer a frame it cannot read
        if request.is_reply or request.meter_type not in (self.profile.meter_type, 0xAA):
            return None
        if request.address not in (self.address, codec.WILDCARD):
            return None
        self._tick()
        di = self._di(request)
        if request.function == Control.READ_DATA and di == DI.METERING:
            data = self._metering()
        elif request.function == Control.READ_ADDRESS and di == DI.ADDRESS:
            data = b""
        elif request.function == Control.WRITE_DATA and di == DI.VALVE:
            if not self._valve(request.data):
                return self._encode(request, b"", error=True)
            data = self.status().to_bytes(2, "little")
        else:
            return self._encode(request, b"", error=True)
        return self._encode(request, data)

    def _di(self, request: Frame) -> int:
        """The DI as this meter reads it (either byte order is accepted)."""
        swapped = ((request.di & 0xFF) << 8) | (request.di >> 8)
        known = {d.value for d in DI}
        return request.di if request.di in known else swapped

    def _encode(self, request: Frame, data: bytes, error: bool = False) -> bytes:
        """The reply, from this meter's own type and address (a wildcard request is
        answered with them: that is how read address works), echoing the DI bytes and SER."""
        reply = codec.reply_for(request, data, error)
        own = replace(reply, meter_type=self.profile.meter_type, address=self.address)
        return codec.encode(own, preamble=0)

    def _metering(self) -> bytes:
        steps = self.register_steps()
        settled = int((self.settlement / codec.UNITS[self.unit_code][1]).scaleb(2))
        local = self.clock.now().astimezone(self.tz).replace(tzinfo=None, microsecond=0)
        return (
            codec.bcd_encode(steps, 4)
            + bytes([self.unit_code])
            + codec.bcd_encode(settled % REGISTER_STEPS, 4)
            + bytes([self.unit_code])
            + codec.encode_time(local)
            + self.status().to_bytes(2, "little")
        )

    def _valve(self, data: bytes) -> bool:
        if len(data) != 1 or data[0] not in (codec.VALVE_OPEN, codec.VALVE_CLOSE):
            return False
        want_open = data[0] == codec.VALVE_OPEN
        self.valve_commands.append("open" if want_open else "close")
        if self.abnormal:
            return True  # acknowledged; a stuck valve does not move
        if self._target is None and want_open == self.valve_open:
            return True  # already there
        self._target = want_open
        self._arrives = time.monotonic() + self.travel_s
        return True
