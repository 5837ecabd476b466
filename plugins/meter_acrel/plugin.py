"""Hooks of the Acrel plugin: its models come from the profile files in `profiles/`."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from weakref import WeakValueDictionary

from openprepay.core.contracts import LinkTransport, SimulatorOptions
from openprepay.core.hookspecs import hookimpl
from openprepay.core.model import DeviceModel
from openprepay.core.site import DeviceConfig
from openprepay.plugins.modbus import ModbusTransport, ProfileDriver, RegisterProfile, load_profiles

from .simulator import (
    AcrelPowerMeterSimulator,
    AcrelPrepaidSimulator,
    AcrelThreePhasePrepaidSimulator,
)

PROFILES = Path(__file__).parent / "profiles"
#: Models with the prepaid block and relay, and their simulators; the others only meter.
PREPAID: dict[str, type[AcrelPrepaidSimulator]] = {
    "acrel.DDSY1352": AcrelPrepaidSimulator,
    "acrel.DTSY1352": AcrelThreePhasePrepaidSimulator,
}


@cache
def profiles() -> dict[str, RegisterProfile]:
    return load_profiles(PROFILES)


@hookimpl
def openprepay_device_models() -> list[DeviceModel]:
    return [p.model for p in profiles().values()]


@hookimpl
def openprepay_make_driver(
    model: DeviceModel, device: DeviceConfig, transport: LinkTransport
) -> ProfileDriver | None:
    profile = profiles().get(model.name)
    if profile is None or not isinstance(transport, ModbusTransport):
        return None
    return ProfileDriver(profile, device, transport)


#: Simulators of one simulated site, by device id, so a main meter can sum its feeders.
_sites: dict[int, WeakValueDictionary] = {}


@hookimpl
def openprepay_make_simulator(
    model: DeviceModel, device: DeviceConfig, options: SimulatorOptions
) -> AcrelPrepaidSimulator | AcrelPowerMeterSimulator | None:
    profile = profiles().get(model.name)
    if profile is None:
        return None
    peers = _sites.setdefault(id(options), WeakValueDictionary())
    sim: AcrelPrepaidSimulator | AcrelPowerMeterSimulator
    if model.name in PREPAID:
        sim = PREPAID[model.name](profile, device, options)
    else:
        sim = AcrelPowerMeterSimulator(profile, device, options, peers=peers)
    peers[device.id] = sim
    return sim
