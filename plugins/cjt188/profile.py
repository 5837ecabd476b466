"""CJ/T 188 meter profiles: one TOML file per model in `profiles/`.

The 901F answer of a water meter has one layout in the standard, so the points are the
same for every model and live here; a profile says what differs between products — the
model's name and nameplate (`[model.limits] max_flow`, the overload flow Q4 that bounds
how fast the volume can rise), the meter type byte, the DI byte order the meter wants,
how long its valve motor runs, and where its firmware puts the valve and
battery bits in ST (the two implementations we have disagree: `[status]` says which
layout, and whether it was verified on a device). See README.md in this folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openprepay.core.config.profiles import (
    load_profile_file,
    load_profile_folder,
)
from openprepay.core.config.reader import TableReader
from openprepay.core.errors import ConfigError, FieldError
from openprepay.core.model import (
    CommandSpec,
    DeviceModel,
    MeterKind,
    PhysicalLimits,
    PointRole,
    PointSpec,
    SupplyControl,
    ValueType,
)

from .codec import MeterType

VALVE_OPEN, VALVE_CLOSE = "VALVE_OPEN", "VALVE_CLOSE"
#: XXXXXX.XX m³ wraps to zero after 999999.99.
DEFAULT_ROLLOVER_M3 = 1_000_000.0
#: Valve field values of ST (two bits at `valve_shift`).
VALVE_STATES = {0b00: "open", 0b01: "closed", 0b11: "abnormal"}


@dataclass(frozen=True, slots=True)
class StatusLayout:
    """Where the valve field (two bits: 00 open, 01 closed, 11 abnormal) and the battery-low
    bit sit in ST (bit 0 = ST byte 0, bit 0)."""

    valve_shift: int = 0
    battery_bit: int = 2
    verified: bool = False
    source: str = ""

    def valve(self, status: int) -> str:
        """ "open", "closed", "abnormal", or "unknown" for the undefined 10."""
        return VALVE_STATES.get((status >> self.valve_shift) & 0b11, "unknown")

    def battery_low(self, status: int) -> bool:
        return bool(status >> self.battery_bit & 1)

    def encode(self, valve: str, battery_low: bool) -> int:
        code = {v: k for k, v in VALVE_STATES.items()}[valve]
        return (code << self.valve_shift) | (int(battery_low) << self.battery_bit)


@dataclass(frozen=True, slots=True)
class Cjt188Profile:
    model: DeviceModel
    meter_type: int
    #: Requests send the DI high byte first (`90 1F`); replies are accepted either way.
    di_high_first: bool
    #: Seconds from a valve command to the read-back (the motor's travel).
    valve_travel_s: float
    status: StatusLayout
    path: Path | None = None


def points(status: StatusLayout, rollover: float) -> tuple[PointSpec, ...]:
    """The points of every CJ/T 188 water meter."""
    flag = {"verified": status.verified, "source": status.source}
    state = {"role": PointRole.STATE, "value_type": ValueType.INT, "legal": (0, 1)}
    return (
        PointSpec(
            "volume",
            "m³",
            "Current cumulative flow (901F, BCD XXXXXX.XX with its unit code)",
            role=PointRole.CUMULATIVE,
            resolution=0.01,
            rollover=rollover,
            low=0,
            source="C1, C2 (901F)",
        ),
        PointSpec(
            "settlement_volume",
            "m³",
            "Cumulative flow on the last settlement day (901F)",
            role=PointRole.SETTING,
            resolution=0.01,
            low=0,
            source="C1, C2 (901F)",
        ),
        PointSpec("valve_open", "", "Valve reported open (ST)", **state, **flag),
        PointSpec("valve_closed", "", "Valve reported closed (ST)", **state, **flag),
        PointSpec("valve_abnormal", "", "Valve reported abnormal (ST)", **state, **flag),
        PointSpec("battery_low", "", "Battery low (ST)", **state, **flag),
        PointSpec(
            "status",
            "",
            "ST, both bytes (byte 0 low); the bits beyond valve and battery are the vendor's",
            role=PointRole.DIAGNOSTIC,
            value_type=ValueType.INT,
            low=0,
            high=0xFFFF,
            source="C1",
        ),
    )


COMMANDS = (
    CommandSpec(VALVE_OPEN, "Open the valve (A017, 55); confirmed by ST", source="C1, C3"),
    CommandSpec(VALVE_CLOSE, "Close the valve (A017, 99); confirmed by ST", source="C1, C3"),
)


def load_profiles(folder: str | Path) -> dict[str, Cjt188Profile]:
    return load_profile_folder(folder, load_profile)


def load_profile(path: str | Path) -> Cjt188Profile:
    return load_profile_file(path, parse_profile)


def parse_profile(
    data: Mapping[str, Any], source: str = "profile", path: Path | None = None
) -> Cjt188Profile:
    errors: list[FieldError] = []
    root = TableReader(dict(data), "", errors)
    m = root.table("model", required=True)
    name, vendor, product = m.str("name"), m.str("vendor"), m.str("product")
    description = m.str("description")
    m.str("kind", "water", choices=[MeterKind.WATER.value])
    rollover = m.number("rollover", DEFAULT_ROLLOVER_M3, low=0.0, low_exclusive=True)
    lim = m.table("limits", required=True)
    max_flow = lim.number("max_flow", low=0.0, low_exclusive=True)
    lim.finish()
    m.finish()

    proto = root.table("protocol")
    types = {t.name.lower(): int(t) for t in MeterType}
    meter_type = proto.str("meter_type", "cold_water", choices=list(types))
    di_order = proto.str("di_order", "low_first", choices=["low_first", "high_first"])
    travel = proto.number("valve_travel_s", 10.0, low=0.0, high=120.0)
    proto.finish()

    st = root.table("status")
    shift = st.int("valve_shift", 0, low=0, high=14)
    battery = st.int("battery_bit", 2, low=0, high=15)
    verified = st.bool("verified", False)
    st_source = st.str("source", "")
    st.finish()
    if shift is not None and battery is not None and battery in (shift, shift + 1):
        st.error(f"bit {battery} is one of the valve bits ({shift}, {shift + 1})", "battery_bit")
    root.finish()
    if errors or None in (name, vendor, product, description, max_flow, meter_type):
        raise ConfigError(source, errors)
    status = StatusLayout(shift, battery, bool(verified), st_source or "")
    model = DeviceModel(
        name=name,
        vendor=vendor,
        product=product,
        kind=MeterKind.WATER,
        description=description,
        points=points(status, float(rollover)),
        commands=COMMANDS,
        supply=SupplyControl(cut=VALVE_CLOSE, restore=VALVE_OPEN, state_point="valve_open"),
        total_point="volume",
        limits=PhysicalLimits(max_flow=max_flow),
        profile=str(path) if path else "",
        protocol="cjt188",
    )
    return Cjt188Profile(
        model=model,
        meter_type=types[meter_type],
        di_high_first=di_order == "high_first",
        valve_travel_s=travel,
        status=status,
        path=path,
    )
