"""The register profiles a Modbus device plugin ships, and the hook answers they give.

A device plugin keeps one profile file per model in a folder. `ProfileCatalogue` loads
them and answers the model catalogue and the driver hook from them, so a plugin's own code
is only what a profile cannot say: a driver subclass, a simulator with behaviour.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TypeVar

from openprepay.core.config.site import DeviceConfig
from openprepay.core.contracts import LinkTransport
from openprepay.core.model import DeviceModel

from .driver import ProfileDriver
from .profile import RegisterProfile, load_profiles
from .transport import ModbusTransport

D = TypeVar("D", bound=ProfileDriver)


class ProfileCatalogue:
    """Every `*.toml` profile of `folder`, by model name."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @cached_property
    def profiles(self) -> dict[str, RegisterProfile]:
        # On first use, not at import: a broken profile then fails the plugin's catalogue
        # hook, which the plugin loader reports by the plugin's name.
        return load_profiles(self.folder)

    def models(self) -> list[DeviceModel]:
        return [p.model for p in self.profiles.values()]

    def profile(self, model: DeviceModel) -> RegisterProfile | None:
        """The profile of `model`; None when the model is not one of this plugin's."""
        return self.profiles.get(model.name)

    def make_driver(
        self, model: DeviceModel, device: DeviceConfig, transport: LinkTransport, driver: type[D]
    ) -> D | None:
        """A `driver` for `device`; None when its model is not one of this plugin's or its
        link is not a Modbus link (another plugin answers then)."""
        profile = self.profile(model)
        if profile is None or not isinstance(transport, ModbusTransport):
            return None
        return driver(profile, device, transport)
