"""Plausibility: is a reading physically possible for the device that sent it?

A frame with a valid CRC can still carry nonsense: a gateway that mixes up buffers, a
meter glitch, a register map that does not fit the firmware. Every sample is checked
where it is made (the link arbiter calls `PlausibilityCheck.assess` before it publishes
it), so that OPC UA, the historian and billing all see the same quality:

- a value outside its point's range (`low`/`high` of the profile: 3686.1 V on a 220 V
  meter) or a state register with an illegal value (`supply_on = -1`) makes that point
  Bad (BAD_DEVICE_FAILURE) with the reason; the sample's other points stay as they are;
- a cumulative register that runs backwards (not a rollover at its declared maximum) or
  rises faster than the meter can meter — rated voltage × maximum current × phases
  (water: maximum flow) × `MARGIN` × the time since the last plausible reading — makes
  that point Bad and the whole sample Uncertain: unbillable, and its relay or valve state
  is not trusted either. The last plausible reading stays the reference, so a value that
  flips once and comes back leaves no trace but the flagged sample.

The limits come from the device's model (its profile's `[model.limits]` and point
ranges), scaled by its CT/PT ratios by the driver, and may be replaced per device in the
site file (`[devices.<id>.limits]`, checked by `check_device_limits`).

Billing holds the same bound against the baseline it saves (core/prepay/metering.py derives
`max_per_hour` from `DeviceLimits.per_hour`), so a reading that slips past this check —
the first one after a restart has no reference here — is still never billed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config.site import DeviceConfig, Site
from ..errors import FieldError
from ..model import DeviceModel, PhysicalLimits, PointRole, Quality, Sample, Value

#: Headroom over the nameplate: the voltage may run 10 % high and a meter carries more
#: than its Imax for a while. A register rising faster than this is not metering.
MARGIN = 1.25
#: Register steps a rise may exceed the bound by (read times are coarse).
SLACK_STEPS = 2
#: A drop counts as the register wrapping only from this share of its range below the
#: top to this share above zero.
ROLLOVER_WINDOW = 0.01
#: `[devices.<id>.limits]` keys that are not point names.
LIMIT_KEYS = ("rated_voltage", "max_current", "phases", "max_flow", "max_per_hour")


@dataclass(frozen=True, slots=True)
class DeviceLimits:
    """The plausibility limits of one device, in the units its samples carry."""

    #: Point → (low, high), either may be None.
    ranges: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    #: State point → the values it may hold.
    legal: Mapping[str, frozenset[int]] = field(default_factory=dict)
    #: Cumulative point → the most it can rise per hour (margin included); points without
    #: an entry are only held to "never backwards".
    per_hour: Mapping[str, float] = field(default_factory=dict)
    #: Cumulative point → its step (register resolution) and the value it wraps at.
    steps: Mapping[str, float] = field(default_factory=dict)
    rollover: Mapping[str, float] = field(default_factory=dict)
    #: Where the hourly bound comes from, for messages.
    basis: str = ""


def device_limits(
    model: DeviceModel, device: DeviceConfig, factors: Mapping[str, float] | None = None
) -> DeviceLimits:
    """The limits of `device`: its model's, with points multiplied by `factors` (a CT/PT
    connected meter reports secondary values the driver multiplies), then the site's
    `[devices.<id>.limits]` (primary units, as published) in their place."""
    factors = factors or {}
    override = dict(device.limits)
    nameplate = _nameplate(model.limits, override)
    explicit = override.get("max_per_hour")
    hourly = float(explicit) if explicit is not None else None
    ranges: dict[str, tuple[float | None, float | None]] = {}
    legal: dict[str, frozenset[int]] = {}
    per_hour: dict[str, float] = {}
    steps: dict[str, float] = {}
    rollover: dict[str, float] = {}
    for spec in model.points:
        factor = factors.get(spec.name, 1.0)
        if spec.low is not None or spec.high is not None:
            ranges[spec.name] = (_times(spec.low, factor), _times(spec.high, factor))
        if spec.name in override:
            low, high = override[spec.name]
            ranges[spec.name] = (low, high)
        if spec.legal is not None:
            legal[spec.name] = frozenset(spec.legal)
        if spec.role is not PointRole.CUMULATIVE:
            continue
        steps[spec.name] = (spec.resolution or 0.001) * factor
        if spec.rollover is not None:
            rollover[spec.name] = spec.rollover * factor
        if hourly is not None:
            per_hour[spec.name] = hourly
        elif nameplate is not None and nameplate.max_per_hour is not None:
            # An override of the nameplate is in primary units already.
            scale = 1.0 if _overrides_nameplate(override) else factor
            per_hour[spec.name] = nameplate.max_per_hour * MARGIN * scale
    if hourly is not None:
        basis = f"{hourly:g} per hour set for this device"
    elif nameplate is not None and nameplate.max_per_hour is not None:
        basis = f"{nameplate.basis} × {MARGIN:g}"
    else:
        basis = ""
    return DeviceLimits(ranges, legal, per_hour, steps, rollover, basis)


def _times(x: float | None, factor: float) -> float | None:
    return None if x is None else x * factor


def _overrides_nameplate(override: Mapping[str, Any]) -> bool:
    return any(k in override for k in ("rated_voltage", "max_current", "phases", "max_flow"))


def _nameplate(limits: PhysicalLimits | None, override: Mapping[str, Any]) -> PhysicalLimits | None:
    if not _overrides_nameplate(override):
        return limits
    base = limits or PhysicalLimits()
    return PhysicalLimits(
        rated_voltage=override.get("rated_voltage", base.rated_voltage),
        max_current=override.get("max_current", base.max_current),
        phases=int(override.get("phases", base.phases)),
        max_flow=override.get("max_flow", base.max_flow),
    )


def check_device_limits(site: Site, models: Mapping[str, DeviceModel]) -> list[FieldError]:
    """Every problem of the site's `[devices.<id>.limits]` tables, field by field."""
    errors: list[FieldError] = []
    for device in site.devices.values():
        model = models.get(device.model)
        if model is None or not device.limits:
            continue
        points = {p.name for p in model.points}
        for key, value in device.limits.items():
            path = f"devices.{device.id}.limits.{key}"
            if key in LIMIT_KEYS:
                problem = _limit_problem(key, value)
            elif key in points:
                problem = _range_problem(value)
            else:
                known = ", ".join(LIMIT_KEYS)
                problem = (
                    f"unknown key; expected one of {known} or a point of {model.name} "
                    "with [low, high]"
                )
            if problem:
                errors.append(FieldError(path, problem))
    return errors


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _limit_problem(key: str, value: Any) -> str | None:
    if key == "phases":
        if value in (1, 2, 3) and not isinstance(value, bool):
            return None
        return f"expected 1, 2 or 3, got {value!r}"
    number = _number(value)
    if number is None or number <= 0:
        unit = {"rated_voltage": "V", "max_current": "A", "max_flow": "m³/h"}.get(key, "per hour")
        return f"expected a positive number ({unit}), got {value!r}"
    return None


def _range_problem(value: Any) -> str | None:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(_number(v) is not None for v in value)
        and value[0] < value[1]
    ):
        return None
    return f"expected [low, high] with low < high, e.g. [0, 300]; got {value!r}"


# -- checking samples ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    """One implausible value of a sample: which point, what it read, what it broke."""

    point: str
    value: Value
    limit: str
    #: A cumulative register: the whole sample is unbillable.
    cumulative: bool


@dataclass(slots=True)
class _Reference:
    """The last plausible reading of the cumulative registers."""

    t: float
    values: dict[str, float]
    #: A later reading agreed with it; until then a disagreeing reading replaces it (the
    #: first reading after a start may itself be the garbled one).
    confirmed: bool = False


class PlausibilityCheck:
    """Checks the samples of one device in the order they are read.

    `assess(sample)` marks the sample (per-point Bad, whole-sample Uncertain for a
    cumulative register) and returns what was implausible; `started` then holds the
    points whose episode began with this sample (for one event and one log line per
    episode), `ended` those that are plausible again.
    """

    def __init__(self, model: DeviceModel, limits: DeviceLimits, time_scale: float = 1.0) -> None:
        self.limits = limits
        self.time_scale = time_scale
        self._units = {p.name: p.unit for p in model.points}
        self._cumulative = tuple(p.name for p in model.points if p.role is PointRole.CUMULATIVE)
        self._reference: _Reference | None = None
        #: Points in an implausible episode, and how many readings it has lasted.
        self.episodes: dict[str, int] = {}
        #: The episodes the last reading started and ended: tuples, not lists (an empty
        #: tuple is the one shared `()`, where two new lists per reading were two more
        #: objects per meter for every full collection to walk).
        self.started: tuple[Finding, ...] = ()
        self.ended: tuple[str, ...] = ()

    def rebase(self) -> None:
        """Take the next reading as the reference (after a recorded meter replacement)."""
        self._reference = None

    def assess(self, sample: Sample) -> list[Finding]:
        findings = self._ranges(sample.values)
        found = {f.point for f in findings}
        findings.extend(f for f in self._cumulative_rise(sample) if f.point not in found)
        self._mark(sample, findings)
        self._track(findings)
        return findings

    def _ranges(self, values: Mapping[str, Value]) -> list[Finding]:
        out = []
        for name, (low, high) in self.limits.ranges.items():
            value = values.get(name)
            if value is None:
                continue
            unit = self._unit(name)
            if isinstance(value, float) and math.isnan(value):
                out.append(Finding(name, value, "a number", name in self._cumulative))
            elif low is not None and value < low:
                out.append(
                    Finding(name, value, f"at least {low:g}{unit}", name in self._cumulative)
                )
            elif high is not None and value > high:
                out.append(
                    Finding(name, value, f"at most {high:g}{unit}", name in self._cumulative)
                )
        for name, allowed in self.limits.legal.items():
            value = values.get(name)
            if value is not None and value not in allowed:
                legal = ", ".join(str(v) for v in sorted(allowed))
                out.append(Finding(name, value, f"one of {legal}", False))
        return out

    def _cumulative_rise(self, sample: Sample) -> list[Finding]:
        now = {
            p: float(sample.values[p])
            for p in self._cumulative
            if isinstance(sample.values.get(p), int | float)
            and math.isfinite(float(sample.values[p]))
        }
        if not now:
            return []
        t = sample.read_at.timestamp()
        ref = self._reference
        if ref is None:
            self._reference = _Reference(t, now)
            return []
        elapsed = max(t - ref.t, 0.0)
        out = [f for p, v in now.items() if (f := self._rise(p, v, ref, elapsed)) is not None]
        if not out or not ref.confirmed:
            # Moved on in place: the reference lives as long as the meter (frozen with the
            # long-lived heap), its values dict of floats is not even tracked by the
            # collector; a new reference per reading would be one more object per meter
            # for every full collection to walk.
            ref.t, ref.values = t, {**ref.values, **now}
            ref.confirmed = ref.confirmed or not out
        return out

    def _rise(self, point: str, value: float, ref: _Reference, elapsed: float) -> Finding | None:
        before = ref.values.get(point)
        if before is None:
            return None
        unit = self._unit(point)
        rise = value - before
        if rise < 0:
            top = self.limits.rollover.get(point)
            if top and before >= top * (1 - ROLLOVER_WINDOW) and value <= top * ROLLOVER_WINDOW:
                rise += top  # the register wrapped at its declared maximum
            else:
                return Finding(
                    point,
                    value,
                    f"not below the last plausible reading {before:g}{unit} (a register "
                    "never runs backwards; record a meter replacement if it was exchanged)",
                    True,
                )
        per_hour = self.limits.per_hour.get(point)
        if per_hour is None:
            return None
        step = self.limits.steps.get(point, 0.0)
        allowed = per_hour * self.time_scale * elapsed / 3600 + SLACK_STEPS * step
        if rise <= allowed:
            return None
        return Finding(
            point,
            value,
            f"a rise of at most {allowed:.6g}{unit} in {elapsed:.3g} s since "
            f"{before:g}{unit} ({self.limits.basis}), not {rise:.6g}{unit}",
            True,
        )

    def _unit(self, point: str) -> str:
        unit = self._units.get(point, "")
        return f" {unit}" if unit else ""

    @staticmethod
    def _mark(sample: Sample, findings: list[Finding]) -> None:
        if not findings:
            return
        quality = dict(sample.point_quality or {})
        errors = dict(sample.point_errors or {})
        for f in findings:
            quality[f.point] = max(quality.get(f.point, Quality.GOOD), Quality.BAD_DEVICE_FAILURE)
            errors[f.point] = f"implausible {f.value!r}: expected {f.limit}"
        sample.point_quality = quality
        sample.point_errors = errors
        billing = [f for f in findings if f.cumulative]
        if billing:
            sample.quality = max(sample.quality, Quality.UNCERTAIN)
            sample.error = "implausible reading, not billed: " + "; ".join(
                f"{f.point} {f.value!r}, expected {f.limit}" for f in billing
            )

    def _track(self, findings: list[Finding]) -> None:
        flagged = {f.point for f in findings}
        self.started = tuple(f for f in findings if f.point not in self.episodes)
        self.ended = tuple(p for p in self.episodes if p not in flagged)
        for point in self.ended:
            del self.episodes[point]
        for point in flagged:
            self.episodes[point] = self.episodes.get(point, 0) + 1
