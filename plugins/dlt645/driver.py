"""The DL/T 645 driver: reads a meter DI by DI and commands its relay over a framed link.

Every answer is checked before a byte of it becomes a value: frame (start bytes, length,
checksum, end), direction bit, function, the address echo and the DI echo. Anything else
is a `GarbledResponse` (the arbiter publishes a Bad sample, never a value); an error answer
(C | 0x40) is a `DeviceRejected` naming its error bits. Remote control (1C) is sent in
plaintext with the device's password level, password and operator code, and an expiry
time on the meter's clock; it is confirmed by reading status word 3 back.

Device options (`[devices.<id>.options]`): `password` (8 digits: level + password,
default "02000000"), `operator` (8 digits, default "00000000"), `command_expiry_s`
(default 300), `clock_timezone` (the meters' clock, default "Asia/Shanghai").
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from openprepay.core.config.site import DeviceConfig
from openprepay.core.contracts import command_entry
from openprepay.core.errors import (
    ConfigError,
    DeviceRejected,
    FieldError,
    GarbledResponse,
)
from openprepay.core.events import utcnow
from openprepay.core.field.plausibility import device_limits
from openprepay.core.model import CommandOutcome, DeviceCommand, Sample, Value
from openprepay.plugins.framed import FramedTransport

from .codec import (
    Frame,
    FrameError,
    check_answer,
    decode,
    describe_error,
    di_text,
    read_followup_request,
    read_request,
    remote_control_request,
)
from .profile import DataRead, Dlt645Profile, RemoteCommand

NO_DATA = 0x02
#: Follow-up frames accepted for one DI before the answer counts as garbled.
MAX_FOLLOWUPS = 16


def refusal(profile: Dlt645Profile, device: DeviceConfig) -> FieldError | None:
    if profile.refuse is None:
        return None
    return FieldError(f"devices.{device.id}.model", f"{profile.model.name}: {profile.refuse}")


def read_options(device: DeviceConfig) -> tuple[str, str, float, ZoneInfo]:
    """The device's remote-control settings; `ConfigError` naming each bad option."""
    opts: Mapping[str, Any] = device.options
    at = f"devices.{device.id}.options"
    errors = []
    password = opts.get("password", "02000000")
    operator = opts.get("operator", "00000000")
    expiry = opts.get("command_expiry_s", 300)
    tz_name = opts.get("clock_timezone", "Asia/Shanghai")
    forms = {"password": 'level + 6-digit password, e.g. "02123456"', "operator": '"00000001"'}
    for key, value in (("password", password), ("operator", operator)):
        if not (isinstance(value, str) and len(value) == 8 and value.isascii() and value.isdigit()):
            errors.append(
                FieldError(
                    f"{at}.{key}", f"expected 8 digits in quotes ({forms[key]}), got {value!r}"
                )
            )
    if isinstance(expiry, bool) or not isinstance(expiry, int | float) or not 10 <= expiry <= 86400:
        errors.append(FieldError(f"{at}.command_expiry_s", f"expected 10..86400, got {expiry!r}"))
    tz = None
    try:
        tz = ZoneInfo(str(tz_name))
    except (ZoneInfoNotFoundError, ValueError):
        errors.append(FieldError(f"{at}.clock_timezone", f"unknown IANA time zone {tz_name!r}"))
    if errors:
        raise ConfigError("site", errors)
    assert tz is not None
    return str(password), str(operator), float(expiry), tz


class Dlt645Driver:
    def __init__(
        self, profile: Dlt645Profile, device: DeviceConfig, transport: FramedTransport
    ) -> None:
        refused = refusal(profile, device)
        if refused is not None:
            raise ConfigError("site", [refused])
        if device.address is None:
            raise ConfigError(
                "site", [FieldError(f"devices.{device.id}.address", "missing (required)")]
            )
        self.profile = profile
        self.model = profile.model
        self.device = device
        self.transport = transport
        self.address = device.address
        self.who = f"meter {device.address}"
        self.password, self.operator, self.expiry_s, self.clock_tz = read_options(device)
        self._reads = list(profile.reads)
        self.limits = device_limits(self.model, device, {})

    # -- transactions ---------------------------------------------------------------------
    async def request(self, frame: Frame) -> Frame:
        raw = await self.transport.transact(frame.encode(), self.who)
        assert raw is not None
        try:
            return check_answer(decode(raw), frame)
        except FrameError as exc:
            raise GarbledResponse(f"{self.who}: {exc}") from exc

    async def read_di(self, di: int) -> bytes:
        """The value bytes of one DI, follow-up frames joined; `DeviceRejected` on an
        error answer."""
        request = read_request(self.address, di)
        answer = await self.request(request)
        data = self._data_of(answer, di)
        seq = 0
        while answer.follows:
            seq += 1
            if seq > MAX_FOLLOWUPS:
                raise GarbledResponse(f"{self.who}: more than {MAX_FOLLOWUPS} follow-up frames")
            answer = await self.request(read_followup_request(self.address, di, seq))
            part = self._data_of(answer, di)
            if not part or part[-1] != seq:
                raise GarbledResponse(f"{self.who}: follow-up frame {seq} out of sequence")
            data += part[:-1]
        return data

    def _data_of(self, answer: Frame, di: int) -> bytes:
        if answer.is_error:
            code = answer.data[0]
            raise DeviceRejected(
                f"{self.who}: DI {di_text(di)} refused: {describe_error(code)}", code
            )
        return answer.data[4:]

    # -- reading --------------------------------------------------------------------------
    async def read(self) -> Sample:
        values: dict[str, Value] = {}
        for read in list(self._reads):
            try:
                raw = await self.read_di(read.di)
            except DeviceRejected as exc:
                if read.optional and exc.code is not None and exc.code & NO_DATA:
                    self._reads.remove(read)
                    continue
                raise
            self._decode(read, raw, values)
        self._derive_bits(values)
        return Sample(self.device.id, self.model, utcnow(), values)

    def _derive_bits(self, values: dict[str, Value]) -> None:
        """Bit points (relay state, 保电) from the status words just read."""
        for bit in self.profile.bits:
            word = values.get(str(bit.source))
            if word is not None:
                value = (int(word) >> int(bit.bit or 0)) & 1
                values[bit.name] = 1 - value if bit.invert else value

    def _decode(self, read: DataRead, raw: bytes, values: dict[str, Value]) -> None:
        if len(raw) != read.size:
            raise GarbledResponse(
                f"{self.who}: DI {di_text(read.di)} answered {len(raw)} data bytes, "
                f"expected {read.size}"
            )
        offset = 0
        decoded: dict[str, Value] = {}
        for point in read.points:
            try:
                decoded[point.name] = point.decode(raw[offset : offset + point.size])
            except FrameError as exc:
                raise GarbledResponse(
                    f"{self.who}: DI {di_text(read.di)} {point.name}: {exc}"
                ) from exc
            offset += point.size
        values.update(decoded)

    # -- commands -------------------------------------------------------------------------
    def _command(self, command: DeviceCommand) -> RemoteCommand:
        return command_entry(self.model, self.profile.commands, command)

    def confirm_delay_s(self, command: DeviceCommand) -> float:
        return self._command(command).confirm_delay_s

    def meter_time(self) -> datetime:
        """Now on the meters' clock (their local time, naive)."""
        return utcnow().astimezone(self.clock_tz).replace(tzinfo=None)

    async def execute(self, command: DeviceCommand) -> None:
        remote = self._command(command)
        expires = self.meter_time() + timedelta(seconds=self.expiry_s)
        frame = remote_control_request(
            self.address, remote.action, self.password, self.operator, expires
        )
        answer = await self.request(frame)
        if answer.is_error:
            code = answer.data[0]
            raise DeviceRejected(
                f"{self.who}: {command.name} refused: {describe_error(code)}", code
            )
        if answer.data:
            raise GarbledResponse(
                f"{self.who}: remote-control answer with {len(answer.data)} data bytes"
            )

    async def confirm(self, command: DeviceCommand) -> CommandOutcome:
        remote = self._command(command)
        read = self.profile.read_of(remote.point)
        values: dict[str, Value] = {}
        self._decode(read, await self.read_di(read.di), values)
        self._derive_bits(values)
        actual = values[remote.point]
        ok = actual == remote.expect
        detail = f"{remote.point} = {actual}" + ("" if ok else f", expected {remote.expect}")
        return CommandOutcome(command, ok, detail, {remote.point: actual})
