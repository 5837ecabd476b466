"""Hooks of the valve water meter plugin: its models come from the profile files in
`profiles/`, exactly as a third-party Modbus meter plugin would do it."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from openprepay.core.contracts import LinkTransport, SimulatorOptions
from openprepay.core.hookspecs import hookimpl
from openprepay.core.model import DeviceModel
from openprepay.core.site import DeviceConfig
from openprepay.plugins.modbus import ModbusTransport, RegisterProfile, load_profiles

from .driver import ValveMeterDriver
from .simulator import ValveMeterSimulator

PROFILES = Path(__file__).parent / "profiles"


@cache
def profiles() -> dict[str, RegisterProfile]:
    return load_profiles(PROFILES)


@hookimpl
def openprepay_device_models() -> list[DeviceModel]:
    return [p.model for p in profiles().values()]


@hookimpl
def openprepay_make_driver(
    model: DeviceModel, device: DeviceConfig, transport: LinkTransport
) -> ValveMeterDriver | None:
    profile = profiles().get(model.name)
    if profile is None or not isinstance(transport, ModbusTransport):
        return None
    return ValveMeterDriver(profile, device, transport)


@hookimpl
def openprepay_make_simulator(
    model: DeviceModel, device: DeviceConfig, options: SimulatorOptions
) -> ValveMeterSimulator | None:
    profile = profiles().get(model.name)
    if profile is None:
        return None
    return ValveMeterSimulator(profile, device, options)
