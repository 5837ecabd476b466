"""What every device plugin's profile format shares: reading a profile file, a folder of
them by model name, and `[model.limits]`, the nameplate each value is checked against.

The formats differ by protocol (Modbus registers, DL/T 645 data identifiers, CJ/T 188
frames); these parts do not, so a plugin reads them here instead of from another plugin.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..errors import ConfigError, FieldError
from ..model import DeviceModel, MeterKind, PhysicalLimits
from .reader import TableReader


class Profile(Protocol):
    @property
    def model(self) -> DeviceModel: ...


P = TypeVar("P", bound=Profile)
P_co = TypeVar("P_co", bound=Profile, covariant=True)


def read_profile_file(path: Path) -> dict[str, Any]:
    """A profile file's TOML; an unreadable or invalid file is a `ConfigError` naming it."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(path), [FieldError("", f"cannot read: {exc.strerror}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), [FieldError("", f"not valid TOML: {exc}")]) from None


class ProfileParser(Protocol[P_co]):
    def __call__(self, data: Mapping[str, Any], source: str, path: Path) -> P_co: ...


def load_profile_file(path: str | Path, parse: ProfileParser[P]) -> P:
    """A profile file parsed by its plugin's `parse(data, source, path)`; errors name the file."""
    path = Path(path)
    return parse(read_profile_file(path), source=str(path), path=path)


def load_profile_folder(folder: str | Path, load: Callable[[Path], P]) -> dict[str, P]:
    """Every `*.toml` profile of a folder (what a device plugin ships), by model name."""
    loaded = (load(path) for path in sorted(Path(folder).glob("*.toml")))
    return {profile.model.name: profile for profile in loaded}


def read_limits(model: TableReader, kind: str | None) -> PhysicalLimits | None:
    """`[model.limits]`: the nameplate (see plugins/modbus/README.md). A water meter
    needs `max_flow`; an electric one `rated_voltage` and `max_current` (`phases`: 1)."""
    r = model.table("limits")
    voltage = r.number("rated_voltage", None, low=0.0, low_exclusive=True)
    current = r.number("max_current", None, low=0.0, low_exclusive=True)
    phases = r.int("phases", 1, low=1, high=3)
    flow = r.number("max_flow", None, low=0.0, low_exclusive=True)
    r.finish()
    if kind == MeterKind.WATER.value:
        if flow is None:
            r.error(
                "missing (required for a water meter): the overload flow Q4 in m³/h", "max_flow"
            )
            return None
        return PhysicalLimits(max_flow=flow)
    for key, value in (("rated_voltage", voltage), ("max_current", current)):
        if value is None:
            r.error(f"missing (required for an electric meter): the {key.replace('_', ' ')}", key)
    if voltage is None or current is None or phases is None:
        return None
    return PhysicalLimits(rated_voltage=voltage, max_current=current, phases=phases)
