"""Hooks of the Acrel plugin: its models come from the profile files in `profiles/`."""

from __future__ import annotations

from pathlib import Path
from weakref import WeakValueDictionary

from openprepay.core.config.site import DeviceConfig
from openprepay.core.contracts import LinkTransport, SimulatorOptions
from openprepay.core.hookspecs import hookimpl
from openprepay.core.model import DeviceModel
from openprepay.plugins.modbus import ProfileCatalogue, ProfileDriver, RegisterProfile

from .simulator import (
    AcrelPowerMeterSimulator,
    AcrelPrepaidSimulator,
    AcrelThreePhasePrepaidSimulator,
)

PROFILES = Path(__file__).parent / "profiles"
CATALOGUE = ProfileCatalogue(PROFILES)
#: Models with the prepaid block and relay, and their simulators; the others only meter.
PREPAID: dict[str, type[AcrelPrepaidSimulator]] = {
    "acrel.DDSY1352": AcrelPrepaidSimulator,
    "acrel.DTSY1352": AcrelThreePhasePrepaidSimulator,
}


def profiles() -> dict[str, RegisterProfile]:
    """The plugin's profiles by model name (the poll benchmark reads a model's blocks)."""
    return CATALOGUE.profiles


@hookimpl
def openprepay_device_models() -> list[DeviceModel]:
    return CATALOGUE.models()


@hookimpl
def openprepay_make_driver(
    model: DeviceModel, device: DeviceConfig, transport: LinkTransport
) -> ProfileDriver | None:
    return CATALOGUE.make_driver(model, device, transport, ProfileDriver)


#: Simulators of one simulated site, by device id, so a main meter can sum its feeders.
_sites: dict[int, WeakValueDictionary] = {}


@hookimpl
def openprepay_make_simulator(
    model: DeviceModel, device: DeviceConfig, options: SimulatorOptions
) -> AcrelPrepaidSimulator | AcrelPowerMeterSimulator | None:
    profile = CATALOGUE.profile(model)
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
