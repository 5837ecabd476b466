"""A driver that needs nothing but a register profile.

`ProfileDriver` reads a device block by block, decodes each block in bulk, and executes
the profile's commands with their read-back confirmation. Device plugins subclass it only
for what a profile cannot say (e.g. how a status bit degrades a point's quality).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from openprepay.core.config.site import DeviceConfig
from openprepay.core.contracts import command_entry
from openprepay.core.errors import CommandRefused, ConfigError, DeviceRejected, FieldError
from openprepay.core.events import utcnow
from openprepay.core.field.plausibility import device_limits
from openprepay.core.model import CommandOutcome, DeviceCommand, Quality, Sample, Value

from .profile import Block, CommandMap, RegisterProfile
from .transport import ModbusTransport

log = logging.getLogger("openprepay.modbus")

ILLEGAL_ADDRESS = 2
#: Registers one read may ask for (Modbus: 125 for function 3 and 4).
MAX_READ = 125


def adjacent_runs(blocks: Sequence[Block]) -> list[tuple[Block, ...]]:
    """The blocks in order, grouped where each starts where the one before it ends."""
    runs: list[list[Block]] = []
    for block in blocks:
        last = runs[-1] if runs else None
        if (
            last is not None
            and last[-1].function == block.function
            and last[-1].start + last[-1].count == block.start
            and sum(b.count for b in last) + block.count <= MAX_READ
        ):
            last.append(block)
        else:
            runs.append([block])
    return [tuple(run) for run in runs]


class ProfileDriver:
    def __init__(
        self, profile: RegisterProfile, device: DeviceConfig, transport: ModbusTransport
    ) -> None:
        self.profile = profile
        self.model = profile.model
        self.device = device
        self.transport = transport
        self.unit = device.unit_id
        #: What one poll reads, request by request: blocks that follow one another (same
        #: function, at most MAX_READ registers together) share a request — a DDSY1352's
        #: 4 requests become 3, a valve meter's 2 become 1.
        self._runs: list[tuple[Block, ...]] = adjacent_runs(profile.blocks)
        self._multipliers = self._ratio_multipliers(device.options)
        #: The plausibility limits of this device, in the units it publishes (CT/PT).
        self.limits = device_limits(self.model, device, self._multipliers)

    def _ratio_multipliers(self, options: Mapping[str, Any]) -> dict[str, float]:
        """CT/PT multipliers for meters that report secondary-side values."""
        if not self.profile.ratios:
            return {}
        errors = []
        ratios = {}
        for key in ("ct_ratio", "pt_ratio"):
            value = options.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                errors.append(
                    FieldError(
                        f"devices.{self.device.id}.options.{key}",
                        f"expected a positive number, got {value!r}",
                    )
                )
                value = 1
            ratios[key[:2]] = float(value)
        if errors:
            raise ConfigError("site", errors)
        factor = {"ct": ratios["ct"], "pt": ratios["pt"], "ctpt": ratios["ct"] * ratios["pt"]}
        return {
            point: factor[kind] for point, kind in self.profile.ratios.items() if factor[kind] != 1
        }

    # -- reading --------------------------------------------------------------------------
    async def read(self) -> Sample:
        values: dict[str, Value] = {}
        for run in list(self._runs):
            if len(run) == 1:
                await self._read_block(run[0], values)
            else:
                await self._read_run(run, values)
        for point, factor in self._multipliers.items():
            if point in values:
                values[point] = values[point] * factor
        sample = Sample(self.device.id, self.model, utcnow(), values)
        sample.point_quality = self.assess(values)
        return sample

    async def _read_run(self, run: tuple[Block, ...], values: dict[str, Value]) -> None:
        """Adjacent blocks in one request; a device that rejects the span (one of them is
        an optional block it lacks) has them read one by one from now on."""
        first = run[0]
        count = sum(block.count for block in run)
        try:
            registers = await self.transport.read(self.unit, first.function, first.start, count)
        except DeviceRejected as exc:
            if exc.code != ILLEGAL_ADDRESS:
                raise
            at = self._runs.index(run)
            self._runs[at : at + 1] = [(block,) for block in run]
            for block in run:
                await self._read_block(block, values)
            return
        offset = 0
        for block in run:
            assert block.decoder is not None
            block.decoder.decode(registers[offset : offset + block.count], values)
            offset += block.count

    async def _read_block(self, block: Block, values: dict[str, Value]) -> None:
        try:
            registers = await self.transport.read(
                self.unit, block.function, block.start, block.count
            )
        except DeviceRejected as exc:
            if block.optional and exc.code == ILLEGAL_ADDRESS:
                self._runs.remove((block,))
                log.info(
                    "meter %s has no registers at 0x%04X; optional points dropped",
                    self.device.id,
                    block.start,
                    extra={"meter": self.device.id, "link": self.device.link},
                )
                return
            raise
        assert block.decoder is not None
        block.decoder.decode(registers, values)

    def assess(self, values: Mapping[str, Value]) -> dict[str, Quality] | None:
        """Per-point quality from the device's own status flags; none by default."""
        return None

    # -- commands -------------------------------------------------------------------------
    def _command(self, command: DeviceCommand) -> CommandMap:
        return command_entry(self.model, self.profile.commands, command)

    def confirm_delay_s(self, command: DeviceCommand) -> float:
        return self._command(command).confirm_delay_s

    async def execute(self, command: DeviceCommand) -> None:
        cmd = self._command(command)
        missing = [f.param for f in cmd.fields if f.param and f.param not in command.params]
        if missing:
            raise CommandRefused(f"{command.name} needs parameter(s): {', '.join(missing)}")
        try:
            words = cmd.registers(command.params)
        except (ValueError, TypeError) as exc:
            raise CommandRefused(f"{command.name}: {exc}") from exc
        await self.transport.write(self.unit, cmd.function, cmd.address, words)

    async def confirm(self, command: DeviceCommand) -> CommandOutcome:
        cmd = self._command(command)
        check = cmd.confirm
        if check.address is not None and check.count is not None:
            registers = await self.transport.read(
                self.unit, self.profile.blocks[0].function, check.address, check.count
            )
            readback = {f"0x{check.address + i:04X}": r for i, r in enumerate(registers)}
            ok = tuple(registers) == check.expect_registers
            expected = list(check.expect_registers)
            return CommandOutcome(
                command,
                ok,
                "read back as expected" if ok else f"read back {registers}, expected {expected}",
                readback,
            )
        assert check.point is not None
        block = self.profile.block_of(check.point)
        values: dict[str, Value] = {}
        registers = await self.transport.read(self.unit, block.function, block.start, block.count)
        assert block.decoder is not None
        block.decoder.decode(registers, values)
        actual = values[check.point]
        expected = (
            check.expect_value if check.expect_param is None else command.params[check.expect_param]
        )
        codec = self.profile.codecs[check.point]
        if codec.wire.is_float and isinstance(expected, int | float):
            # The register holds the written value in single precision, published rounded.
            expected = codec.as_read(expected)
        ok = _same(actual, expected, self.model.point(check.point).resolution)
        detail = f"{check.point} = {actual}" + ("" if ok else f", expected {expected}")
        return CommandOutcome(command, ok, detail, {check.point: actual})


def _same(actual: Value, expected: Any, resolution: float | None) -> bool:
    if isinstance(actual, float) or isinstance(expected, float):
        tolerance = (resolution or 1e-6) / 2
        return math.isclose(float(actual), float(expected), abs_tol=tolerance)
    return actual == expected
