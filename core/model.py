"""The vocabulary every part of OpenPrepay speaks: device models, points, samples, commands.

Nothing here knows a protocol. A device plugin describes what its models measure
(`DeviceModel`, `PointSpec`) and what they can be told to do (`CommandSpec`); the core
moves `Sample`s and `DeviceCommand`s; the OPC UA server and the historian read the same
descriptions to build their address space and schema.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Value = float | int | bool


class MeterKind(enum.StrEnum):
    ELECTRIC = "electric"
    WATER = "water"
    #: Pseudo-kinds for the statistics the core itself publishes as points.
    LINK = "link"
    HEALTH = "health"
    #: Prepayment accounts (balances, alarm level), published by the prepayment engine as
    #: samples of `core.prepay.account_points.ACCOUNT_MODEL`.
    ACCOUNT = "account"


class PointRole(enum.StrEnum):
    """What a point means to the rest of the system."""

    #: A cumulative register (energy, volume): billing takes deltas of it.
    CUMULATIVE = "cumulative"
    #: An instantaneous measurement (voltage, power, flow).
    MEASUREMENT = "measurement"
    #: A switching state (relay, valve) or a status word.
    STATE = "state"
    #: A parameter kept in the device (alarm amounts, prices, purchase count, balance).
    SETTING = "setting"
    #: Communication statistics and health.
    DIAGNOSTIC = "diagnostic"


class ValueType(enum.StrEnum):
    FLOAT = "float"
    INT = "int"
    BOOL = "bool"


class Quality(enum.IntEnum):
    """How far a value can be trusted. Ordered: a larger value is worse.

    The OPC UA server maps these to StatusCodes and the historian stores them; billing
    only ever uses GOOD samples.
    """

    GOOD = 0
    #: Read correctly but the device flags it as questionable (e.g. valve "abnormal").
    UNCERTAIN = 1
    #: No answer: timeout, link down, device in back-off.
    BAD_COMM_FAILURE = 2
    #: An answer that could not be used: exception response, garbled frame, bad decode.
    BAD_DEVICE_FAILURE = 3
    #: The device is configured but not polled (quarantined, disabled), or a point the
    #: device does not have (its register answers "illegal data address").
    BAD_OUT_OF_SERVICE = 4

    @property
    def is_good(self) -> bool:
        return self is Quality.GOOD


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One quantity a device model provides."""

    name: str
    unit: str
    description: str
    role: PointRole = PointRole.MEASUREMENT
    value_type: ValueType = ValueType.FLOAT
    #: Smallest step of the raw register in engineering units (0.01 for ×0.01 kWh). Billing
    #: divides by it to get back exact integer counts from the float value.
    resolution: float | None = None
    #: Value at which a cumulative register wraps to zero, in engineering units.
    rollover: float | None = None
    #: Plausible range (OPC UA EURange): a value outside it is implausible, published
    #: Bad and never used (core/field/plausibility.py).
    low: float | None = None
    high: float | None = None
    #: The values a state register may hold (a relay: 0, 1); any other is implausible.
    legal: tuple[int, ...] | None = None
    #: False when only one source documents the register (see reference/protocols.md).
    verified: bool = True
    source: str = ""


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command a device model accepts, e.g. TRIP, CLOSE, VALVE_OPEN."""

    name: str
    description: str
    #: Parameters the command takes (name -> description); empty for plain switching.
    params: Mapping[str, str] = field(default_factory=dict)
    verified: bool = True
    source: str = ""


@dataclass(frozen=True, slots=True)
class SupplyControl:
    """How the prepayment engine cuts and restores supply on a model.

    A relay is tripped to cut and closed to restore; a valve is closed to cut and opened
    to restore. The engine speaks of cutting and restoring; this maps it to commands.
    """

    cut: str
    restore: str
    #: The STATE point that tells whether supply is on (1) or off (0) after read-back.
    state_point: str


@dataclass(frozen=True, slots=True)
class PhysicalLimits:
    """What a product can physically meter, from its nameplate (a profile's
    `[model.limits]`): it bounds how fast a cumulative register can rise.

    Electric: `rated_voltage` (V, per phase) × `max_current` (A, the Imax of "5(60) A") ×
    `phases` is the most power the meter can carry; water: `max_flow` (m³/h, the overload
    flow Q4). Checks add their own margin (core/field/plausibility.py).
    """

    rated_voltage: float | None = None
    max_current: float | None = None
    phases: int = 1
    max_flow: float | None = None

    @property
    def max_per_hour(self) -> float | None:
        """The most a cumulative register can rise in an hour (kWh or m³), nameplate."""
        if self.max_flow is not None:
            return self.max_flow
        if self.rated_voltage is None or self.max_current is None:
            return None
        return self.rated_voltage * self.max_current * self.phases / 1000

    @property
    def basis(self) -> str:
        """Where `max_per_hour` comes from, for messages: "60 A × 220 V × 1 phase"."""
        if self.max_flow is not None:
            return f"{self.max_flow:g} m³/h maximum flow"
        phases = f"{self.phases} phase" + ("s" if self.phases != 1 else "")
        return f"{self.max_current:g} A × {self.rated_voltage:g} V × {phases}"


@dataclass(frozen=True, slots=True)
class DeviceModel:
    """A product a plugin can talk to, described as data."""

    name: str
    vendor: str
    product: str
    kind: MeterKind
    description: str
    points: tuple[PointSpec, ...]
    commands: tuple[CommandSpec, ...] = ()
    supply: SupplyControl | None = None
    #: Cumulative register of the total (energy_total, volume_forward) and the TOU registers
    #: in rate order T1..T4, for rating from the meter's own registers.
    total_point: str | None = None
    tariff_points: tuple[str, ...] = ()
    #: The name of the plugin that provides the model; filled in by the plugin manager.
    plugin: str = ""
    #: Where the model's register profile lives, for `openprepay plugins`.
    profile: str = ""
    #: The nameplate limits that bound its cumulative registers; None: not declared (then
    #: only ranges, legal values and "never backwards" are checked).
    limits: PhysicalLimits | None = None
    #: The frames the model speaks; its devices must sit on a link with this protocol
    #: (`LinkConfig.protocol`: "modbus", "dlt645", "cjt188").
    protocol: str = "modbus"

    def point(self, name: str) -> PointSpec:
        for spec in self.points:
            if spec.name == name:
                return spec
        raise KeyError(f"{self.name} has no point {name!r}")

    @property
    def units(self) -> Mapping[str, str]:
        return {p.name: p.unit for p in self.points}

    @property
    def unverified_points(self) -> tuple[str, ...]:
        """Points whose register rests on a single source or an inference
        (`PointSpec.verified` false): views mark their values so that a guess is never
        taken for a fact."""
        return tuple(p.name for p in self.points if not p.verified)

    def command(self, name: str) -> CommandSpec:
        for spec in self.commands:
            if spec.name == name:
                return spec
        known = ", ".join(c.name for c in self.commands) or "none"
        raise KeyError(f"{self.name} has no command {name!r} (it supports: {known})")


@dataclass(slots=True)
class Sample:
    """What one poll of one device produced.

    `source` is the meter id (or the link id for link statistics). `values` holds
    engineering values keyed by point name; their units come from `model`. A failed read is
    a sample with a Bad quality and no values, never the previous values with a new time.
    """

    source: str
    model: DeviceModel
    read_at: datetime
    values: dict[str, Value]
    quality: Quality = Quality.GOOD
    #: The device's own clock at the time of the reading, where the device has one.
    device_time: datetime | None = None
    #: Why the quality is not Good (the exception text, "timeout", "crc error"...).
    error: str | None = None
    #: Per-point quality overrides (e.g. a valve reporting "abnormal").
    point_quality: dict[str, Quality] | None = None
    #: Why a point's quality is not Good, where a check said so ("3686.1 V above 300 V").
    point_errors: dict[str, str] | None = None

    @property
    def time(self) -> datetime:
        """The time the values belong to: the device clock if it has one, else the read."""
        return self.device_time or self.read_at

    def unit(self, point: str) -> str:
        return self.model.point(point).unit

    def quality_of(self, point: str) -> Quality:
        if self.point_quality and point in self.point_quality:
            return max(self.quality, self.point_quality[point])
        return self.quality


@dataclass(frozen=True, slots=True)
class DeviceCommand:
    """An instruction for one device, executed by the link arbiter."""

    meter_id: str
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    #: Who asked and why; recorded with every relay and valve action.
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """The result of executing a command and reading the device back."""

    command: DeviceCommand
    confirmed: bool
    detail: str
    #: The values read back to confirm (e.g. relay registers), for the audit trail.
    readback: Mapping[str, Value] = field(default_factory=dict)
