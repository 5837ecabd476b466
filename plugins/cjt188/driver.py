"""The CJ/T 188 water meter driver: one 901F read per poll, valve commands read back.

Every request carries a fresh SER and the reply must echo the meter's address, meter type,
DI (either byte order) and SER, with a good checksum; anything else raises
`GarbledResponse` (the link arbiter publishes a Bad sample — never a value from a frame
that failed a check). An error reply (C | 0x40) raises `DeviceRejected`.

Quality: a meter that reports its valve abnormal (ST valve bits 11, or the undefined 10)
cannot be trusted about the valve's position: the valve points are Uncertain. A valve
command is confirmed only when a fresh 901F read shows the wanted position in ST.
"""

from __future__ import annotations

from typing import Protocol

from openprepay.core.config.site import DeviceConfig
from openprepay.core.contracts import command_entry
from openprepay.core.errors import (
    ConfigError,
    DeviceRejected,
    FieldError,
    GarbledResponse,
)
from openprepay.core.events import utcnow
from openprepay.core.model import CommandOutcome, DeviceCommand, Quality, Sample, Value

from . import codec
from .codec import DI, Control, Frame, FrameError
from .profile import VALVE_CLOSE, VALVE_OPEN, Cjt188Profile

VALVE_POINTS = ("valve_open", "valve_closed")
VALVE_BYTES = {VALVE_OPEN: codec.VALVE_OPEN, VALVE_CLOSE: codec.VALVE_CLOSE}
WANTED = {VALVE_OPEN: "open", VALVE_CLOSE: "closed"}


class FrameLink(Protocol):
    """What the driver needs of its link (plugins/framed `FramedTransport`)."""

    async def transact(self, request: bytes, who: str, reply: bool = True) -> bytes | None: ...


def device_address(device: DeviceConfig) -> str:
    """The device's 14-digit address; `ConfigError` naming the field when it is wrong."""
    try:
        return codec.check_address(device.address or "")
    except ValueError as exc:
        raise ConfigError(
            "site", [FieldError(f"devices.{device.id}.address", f"CJ/T 188 meter: {exc}")]
        ) from None


class Cjt188Driver:
    def __init__(self, profile: Cjt188Profile, device: DeviceConfig, transport: FrameLink):
        self.profile = profile
        self.model = profile.model
        self.device = device
        self.transport = transport
        self.address = device_address(device)
        if self.address == codec.WILDCARD:
            raise ConfigError(
                "site",
                [FieldError(f"devices.{device.id}.address", "the wildcard is not a meter")],
            )
        self.who = f"meter {self.address}"
        self._ser = 0

    # -- one transaction ------------------------------------------------------------------
    async def ask(self, control: int, di: int, data: bytes = b"") -> Frame:
        """Send one request and return its checked reply."""
        self._ser = (self._ser + 1) & 0xFF
        request = Frame(
            self.profile.meter_type,
            self.address,
            control,
            di,
            self._ser,
            data,
            self.profile.di_high_first,
        )
        raw = await self.transport.transact(codec.encode(request, preamble=0), self.who)
        if raw is None:
            raise GarbledResponse(f"{self.who}: no answer frame")
        return check_reply(raw, request, self.who)

    # -- reading --------------------------------------------------------------------------
    async def read(self) -> Sample:
        values, status = await self._read_values()
        sample = Sample(self.device.id, self.model, utcnow(), values)
        if self.profile.status.valve(status) in ("abnormal", "unknown"):
            sample.point_quality = {p: Quality.UNCERTAIN for p in VALVE_POINTS}
        return sample

    async def _read_values(self) -> tuple[dict[str, Value], int]:
        frame = await self.ask(Control.READ_DATA, DI.METERING)
        try:
            m = codec.decode_metering(frame.data)
        except FrameError as exc:
            raise GarbledResponse(f"{self.who}: {exc}") from None
        layout = self.profile.status
        valve = layout.valve(m.status)
        values: dict[str, Value] = {
            "volume": float(m.volume.value),
            "settlement_volume": float(m.settlement_volume.value),
            "valve_open": int(valve == "open"),
            "valve_closed": int(valve == "closed"),
            "valve_abnormal": int(valve in ("abnormal", "unknown")),
            "battery_low": int(layout.battery_low(m.status)),
            "status": m.status,
        }
        return values, m.status

    # -- commands -------------------------------------------------------------------------
    def _valve_byte(self, command: DeviceCommand) -> int:
        return command_entry(self.model, VALVE_BYTES, command)

    def confirm_delay_s(self, command: DeviceCommand) -> float:
        self._valve_byte(command)
        return self.profile.valve_travel_s

    async def execute(self, command: DeviceCommand) -> None:
        await self.ask(Control.WRITE_DATA, DI.VALVE, bytes([self._valve_byte(command)]))

    async def confirm(self, command: DeviceCommand) -> CommandOutcome:
        self._valve_byte(command)
        values, status = await self._read_values()
        readback = {p: values[p] for p in (*VALVE_POINTS, "valve_abnormal", "status")}
        valve = self.profile.status.valve(status)
        wanted = WANTED[command.name]
        if valve in ("abnormal", "unknown"):
            return CommandOutcome(command, False, f"the meter reports the valve {valve}", readback)
        ok = valve == wanted
        detail = f"valve {valve}" + ("" if ok else f", expected {wanted}")
        return CommandOutcome(command, ok, detail, readback)


def check_reply(raw: bytes, request: Frame, who: str) -> Frame:
    """The reply to `request` in `raw`, checked; `GarbledResponse` or `DeviceRejected`."""
    address = None if request.address == codec.WILDCARD else request.address
    meter_type = None if request.meter_type == 0xAA else request.meter_type
    try:
        reply = codec.decode(
            raw, address=address, meter_type=meter_type, di=request.di, ser=request.ser
        )
    except FrameError as exc:
        raise GarbledResponse(f"{who}: {exc}") from None
    if not reply.is_reply or reply.function != request.function:
        raise GarbledResponse(
            f"{who}: control 0x{reply.control:02X} does not answer 0x{request.control:02X}"
        )
    if reply.is_error:
        detail = f" (status {reply.data.hex(' ').upper()})" if reply.data else ""
        raise DeviceRejected(
            f"{who}: error reply 0x{reply.control:02X} to DI {request.di:04X}{detail}",
            reply.control,
        )
    return reply


async def read_address(
    transport: FrameLink, meter_type: int = codec.MeterType.COLD_WATER, di_high_first: bool = False
) -> str:
    """The address of the one meter on a bus (C=03, DI 810A to AA×7): for commissioning a
    meter whose label is unreadable. With several meters on the bus their replies collide."""
    request = Frame(
        meter_type, codec.WILDCARD, Control.READ_ADDRESS, DI.ADDRESS, 1, b"", di_high_first
    )
    raw = await transport.transact(codec.encode(request, preamble=0), "the meter on the bus")
    if raw is None:
        raise GarbledResponse("the meter on the bus: no answer frame")
    return check_reply(raw, request, "the meter on the bus").address
