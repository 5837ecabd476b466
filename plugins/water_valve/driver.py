"""The valve water meter's driver: a `ProfileDriver` that reads the meter's own status flags.

A meter that flags its valve abnormal cannot be trusted about the valve's position, and a
meter that flags its battery low may report a sagging battery voltage: those points are
published with Uncertain quality. A valve command is confirmed only when the wanted
position bit is set and the abnormal bit is clear. SET_REMAINING is confirmed when the
read-back is the written volume less at most what could have flowed since the write (a
LOCAL meter keeps deducting while its valve is open).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from openprepay.core.config.site import DeviceConfig
from openprepay.core.model import CommandOutcome, DeviceCommand, Quality, Value
from openprepay.plugins.modbus import ModbusTransport, ProfileDriver, RegisterProfile
from openprepay.plugins.modbus.profile import CommandMap

VALVE_POINTS = ("valve_open", "valve_closed")
VALVE_COMMANDS = ("VALVE_OPEN", "VALVE_CLOSE")
SET_REMAINING = "SET_REMAINING"
#: Slack on a remaining-volume read-back, m³, beyond the water that may have flowed.
VOLUME_SLACK_M3 = 0.001


class ValveMeterDriver(ProfileDriver):
    def __init__(
        self, profile: RegisterProfile, device: DeviceConfig, transport: ModbusTransport
    ) -> None:
        super().__init__(profile, device, transport)
        #: When the last command was written (monotonic seconds), for SET_REMAINING.
        self._written_at = 0.0

    def assess(self, values: Mapping[str, Value]) -> dict[str, Quality] | None:
        quality: dict[str, Quality] = {}
        if values.get("valve_abnormal") == 1:
            quality.update({p: Quality.UNCERTAIN for p in VALVE_POINTS if p in values})
        if values.get("battery_low") == 1 and "battery_voltage" in values:
            quality["battery_voltage"] = Quality.UNCERTAIN
        return quality or None

    async def execute(self, command: DeviceCommand) -> None:
        self._written_at = time.monotonic()
        await super().execute(command)

    async def confirm(self, command: DeviceCommand) -> CommandOutcome:
        if command.name not in (*VALVE_COMMANDS, SET_REMAINING):
            return await super().confirm(command)
        cmd = self._command(command)
        values = await self._read_confirm_block(cmd)
        if command.name == SET_REMAINING:
            return self._confirm_volume(command, cmd, values)
        point = cmd.confirm.point
        assert point is not None
        readback = {p: values[p] for p in (*VALVE_POINTS, "valve_abnormal") if p in values}
        if values.get("valve_abnormal") == 1:
            return CommandOutcome(command, False, "the meter reports the valve abnormal", readback)
        ok = values[point] == cmd.confirm.expect_value
        detail = f"{point} = {values[point]}" + (
            "" if ok else f", expected {cmd.confirm.expect_value}"
        )
        return CommandOutcome(command, ok, detail, readback)

    async def _read_confirm_block(self, cmd: CommandMap) -> dict[str, Value]:
        assert cmd.confirm.point is not None
        block = self.profile.block_of(cmd.confirm.point)
        registers = await self.transport.read(self.unit, block.function, block.start, block.count)
        values: dict[str, Value] = {}
        assert block.decoder is not None
        block.decoder.decode(registers, values)
        return values

    def _confirm_volume(
        self, command: DeviceCommand, cmd: CommandMap, values: Mapping[str, Value]
    ) -> CommandOutcome:
        codec = self.profile.codecs["remaining_volume"]
        written = float(command.params["volume"])
        target = float(codec.as_read(written))  # what the float32 register reads back
        actual = float(values["remaining_volume"])
        elapsed_h = (time.monotonic() - self._written_at) / 3600
        flowed = max(float(values.get("flow_rate", 0.0)), 0.0) * elapsed_h * 2
        ok = target - flowed - VOLUME_SLACK_M3 <= actual <= target + VOLUME_SLACK_M3
        detail = f"remaining_volume = {actual}" + ("" if ok else f", expected {target}")
        return CommandOutcome(command, ok, detail, {"remaining_volume": actual})
