"""Emulated DL/T 645-2007 meters that answer on a simulated RS-485 bus.

`Dlt645MeterSimulator` answers the DIs of its profile from a simulated meter: energy
accrues from a daily load profile into the 尖/峰/平/谷 register that the time of day
selects (the Acrel simulator's day table), and only while the relay is closed; status
word 3 shows the relay (b4 actual, b6 commanded), 保电 (b12) and "money-based prepaid"
(b8..9 = 10). It answers a DI it does not have with an error frame "no such data"
(D1, error bit 1), read address (13) on the wildcard address, broadcast time sync (08)
by setting its clock, and remote control (1C) when the password matches
(`options.password`, default "02000000") and the command has not expired on its clock —
otherwise an error frame DC with bit 2 (password) or bit 0 (other).

Device options: `sim_load_kw`, `sim_energy_kwh` (starting total), `sim_balance` (CNY,
remaining amount), `sim_relay_stuck` (acknowledges relay commands, switches nothing),
`sim_clock_offset_s` (the meter's clock error until a time sync), `sim_missing_dis`
(DIs this firmware does not have, e.g. ["02800002"]).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from openprepay.core.config.site import DeviceConfig
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.events import utcnow
from openprepay.core.field.loadshape import LoadShape, seed_for
from openprepay.core.model import Value
from openprepay.plugins.modbus import SimClock

from .codec import (
    BROADCAST,
    ERROR,
    REPLY,
    WILDCARD,
    Frame,
    FrameError,
    Function,
    RemoteAction,
    address_bytes,
    decode,
    di_bytes,
    password_bytes,
    time_from_bytes,
)
from .profile import Dlt645Profile

#: (start minute of day, rate) with 1 尖, 2 峰, 3 平, 4 谷.
DAY_TABLE = ((0, 4), (420, 3), (480, 2), (690, 3), (1110, 2), (1140, 1), (1260, 2), (1380, 4))
RATE_POINTS = {1: "energy_sharp", 2: "energy_peak", 3: "energy_flat", 4: "energy_valley"}
MAX_STEP_S = 300.0
ERR_OTHER = 0x01
ERR_NO_DATA = 0x02
ERR_PASSWORD = 0x04


def rate_at(local: datetime) -> int:
    minute = local.hour * 60 + local.minute
    rate = DAY_TABLE[-1][1]
    for start, r in DAY_TABLE:
        if minute >= start:
            rate = r
    return rate


class Dlt645MeterSimulator:
    def __init__(
        self,
        profile: Dlt645Profile,
        device: DeviceConfig,
        options: SimulatorOptions,
        clock: SimClock | None = None,
    ) -> None:
        self.profile = profile
        self.model = profile.model
        self.device = device
        self.options = options
        self.address = str(device.address)
        self.clock = clock or SimClock(options)
        self.tz = ZoneInfo(options.timezone)
        self.silent = False
        self.garbage = False
        opts = device.options
        self.seed = seed_for(device.id, options.seed)
        self.rng = random.Random(self.seed)
        self.load = LoadShape(
            base=float(opts.get("sim_load_kw", self.rng.uniform(0.3, 1.6))), seed=self.seed
        )
        start = float(opts.get("sim_energy_kwh", round(self.rng.uniform(100, 5000), 2)))
        self.energy = {r: start * s for r, s in ((1, 0.1), (2, 0.35), (3, 0.3), (4, 0.25))}
        self.balance = float(opts.get("sim_balance", 100.0))
        self.relay_closed = True
        self.relay_commanded_open = False
        self.protected = False
        self.relay_stuck = bool(opts.get("sim_relay_stuck", False))
        self.password = str(opts.get("password", "02000000"))
        self.clock_offset = timedelta(seconds=float(opts.get("sim_clock_offset_s", 0)))
        self.missing = {int(str(d), 16) for d in opts.get("sim_missing_dis", [])}
        self.reads = {r.di: r for r in profile.reads}
        #: What the meter was told, for tests: remote-control actions and time syncs.
        self.actions: list[RemoteAction] = []
        self.time_syncs: list[datetime] = []
        self._last: datetime | None = None
        self.power_kw = 0.0

    # -- behaviour ------------------------------------------------------------------------
    def meter_time(self) -> datetime:
        """The meter's own clock: local wall time, naive, with its error. It runs at real
        speed whatever the demo's speed-up (energy follows the simulated clock), so that
        a command's expiry means what it means on a real meter."""
        return (utcnow().astimezone(self.tz) + self.clock_offset).replace(tzinfo=None)

    def _tick(self) -> None:
        now = self.clock.now()
        if self._last is None:
            self._last = now
        elapsed = (now - self._last).total_seconds()
        t = now.timestamp() - elapsed
        while elapsed > 0:
            step = min(elapsed, MAX_STEP_S)
            local = datetime.fromtimestamp(t + step / 2, self.tz)
            if self.relay_closed:
                self.energy[rate_at(local)] += self.load.at(local) * step / 3600
            t += step
            elapsed -= step
        self._last = now
        self.power_kw = self.load.at(now.astimezone(self.tz)) if self.relay_closed else 0.0

    def status_word3(self) -> int:
        word = 0b10 << 8  # money-based prepaid meter
        if not self.relay_closed:
            word |= 1 << 4
        if self.relay_commanded_open:
            word |= 1 << 6
        if self.protected:
            word |= 1 << 12
        return word

    def snapshot(self) -> Mapping[str, Value]:
        self._tick()
        total = sum(self.energy.values())
        volts = round(220.0 * (1 + self.rng.uniform(-0.02, 0.02)), 1)
        amps = round(self.power_kw * 1000 / (volts * 0.95), 3) if self.power_kw else 0.0
        phase_kw = round(self.power_kw / 3, 4)
        values: dict[str, Value] = {
            "energy_total": _trunc(total),
            **{RATE_POINTS[r]: _trunc(e) for r, e in self.energy.items()},
            "voltage": volts,
            "current": amps,
            "power_active": round(self.power_kw, 4),
            "frequency": round(50 + self.rng.uniform(-0.03, 0.03), 2),
            "remaining_amount": round(self.balance, 2),
            "status_word3": self.status_word3(),
        }
        for phase in "abc":
            values[f"voltage_{phase}"] = volts
            values[f"current_{phase}"] = round(amps / 3, 3)
            values[f"power_active_{phase}"] = phase_kw
        values["supply_on"] = int(self.relay_closed)
        values["relay_open"] = int(not self.relay_closed)
        return values

    # -- the wire -------------------------------------------------------------------------
    def answer(self, raw: bytes) -> bytes | None:
        try:
            frame = decode(raw)
        except FrameError:
            return None  # a meter ignores what it cannot read
        if frame.is_reply:
            return None
        if frame.function == Function.BROADCAST_TIME and frame.address == BROADCAST:
            self._sync_time(frame.data)
            return None
        if frame.function == Function.READ_ADDRESS and frame.address == WILDCARD:
            return self._reply(frame, address_bytes(self.address))
        if frame.address != self.address:
            return None
        if frame.function == Function.READ:
            return self._read(frame)
        if frame.function == Function.REMOTE_CONTROL:
            return self._remote(frame)
        return self._error(frame, ERR_OTHER)

    def _reply(self, request: Frame, data: bytes = b"") -> bytes:
        return Frame(self.address, request.function | REPLY, data).encode()

    def _error(self, request: Frame, code: int) -> bytes:
        return Frame(self.address, request.function | REPLY | ERROR, bytes([code])).encode()

    def _read(self, frame: Frame) -> bytes:
        if len(frame.data) != 4:
            return self._error(frame, ERR_OTHER)
        di = int.from_bytes(frame.data, "little")
        read = self.reads.get(di)
        if read is None or di in self.missing:
            return self._error(frame, ERR_NO_DATA)
        values = self.snapshot()
        data = di_bytes(di) + b"".join(p.encode(values.get(p.name, 0)) for p in read.points)
        return self._reply(frame, data)

    def _remote(self, frame: Frame) -> bytes:
        if len(frame.data) != 16:
            return self._error(frame, ERR_OTHER)
        if frame.data[:4] != password_bytes(self.password):
            return self._error(frame, ERR_PASSWORD)
        try:
            action = RemoteAction(frame.data[8])
            expires = time_from_bytes(frame.data[10:16])
        except (ValueError, FrameError):
            return self._error(frame, ERR_OTHER)
        if expires < self.meter_time():
            return self._error(frame, ERR_OTHER)
        self._tick()
        self.actions.append(action)
        self._apply(action)
        return self._reply(frame)

    def _apply(self, action: RemoteAction) -> None:
        if action is RemoteAction.PROTECT:
            self.protected = True
        elif action is RemoteAction.CANCEL_PROTECT:
            self.protected = False
        elif action is RemoteAction.TRIP:
            self.relay_commanded_open = True
            if not self.relay_stuck and not self.protected:
                self.relay_closed = False
        elif action is RemoteAction.CLOSE:
            self.relay_commanded_open = False
            if not self.relay_stuck:
                self.relay_closed = True
        elif action is RemoteAction.ALLOW_CLOSE:
            # The relay stays open until the user presses the meter's button.
            self.relay_commanded_open = False

    def _sync_time(self, data: bytes) -> None:
        try:
            told = time_from_bytes(data)
        except FrameError:
            return
        own = utcnow().astimezone(self.tz).replace(tzinfo=None)
        self.clock_offset = told - own
        self.time_syncs.append(told)

    def press_button(self) -> None:
        """The user closes the relay at the meter after ALLOW_CLOSE."""
        if not self.relay_commanded_open and not self.relay_stuck:
            self._tick()
            self.relay_closed = True


def _trunc(kwh: float) -> float:
    return int(kwh * 100) / 100
