"""Hooks of the valve water meter plugin: its models come from the profile files in
`profiles/`, exactly as a third-party Modbus meter plugin would do it."""

from __future__ import annotations

from pathlib import Path

from openprepay.core.config.site import DeviceConfig
from openprepay.core.contracts import LinkTransport, SimulatorOptions
from openprepay.core.hookspecs import hookimpl
from openprepay.core.model import DeviceModel
from openprepay.plugins.modbus import ProfileCatalogue

from .driver import ValveMeterDriver
from .simulator import ValveMeterSimulator

PROFILES = Path(__file__).parent / "profiles"
CATALOGUE = ProfileCatalogue(PROFILES)


@hookimpl
def openprepay_device_models() -> list[DeviceModel]:
    return CATALOGUE.models()


@hookimpl
def openprepay_make_driver(
    model: DeviceModel, device: DeviceConfig, transport: LinkTransport
) -> ValveMeterDriver | None:
    return CATALOGUE.make_driver(model, device, transport, ValveMeterDriver)


@hookimpl
def openprepay_make_simulator(
    model: DeviceModel, device: DeviceConfig, options: SimulatorOptions
) -> ValveMeterSimulator | None:
    profile = CATALOGUE.profile(model)
    return None if profile is None else ValveMeterSimulator(profile, device, options)
