"""Hooks of the DL/T 645 plugin: framed links whose `protocol` is "dlt645", the models of the
profile files in `profiles/`, their drivers and simulators, and the `dlt645` commands."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from openprepay.core.config.site import DeviceConfig, LinkConfig, LinkProtocol, LinkType, Site
from openprepay.core.contracts import LinkTransport, SimulatedDevice, SimulatorOptions
from openprepay.core.errors import ConfigError, FieldError
from openprepay.core.hookspecs import hookimpl
from openprepay.core.model import DeviceModel
from openprepay.plugins.framed import FramedTransport, SimulatedBus

from .codec import FRAMING
from .driver import Dlt645Driver, read_options, refusal
from .profile import load_profiles
from .simulator import Dlt645MeterSimulator

PROFILES = load_profiles(Path(__file__).parent / "profiles")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def is_dlt645(link: LinkConfig) -> bool:
    return link.protocol is LinkProtocol.DLT645


@hookimpl
def openprepay_device_models() -> list[DeviceModel]:
    return [p.model for p in PROFILES.values()]


@hookimpl
def openprepay_make_transport(link: LinkConfig) -> FramedTransport | None:
    return FramedTransport(link, FRAMING) if is_dlt645(link) else None


@hookimpl
def openprepay_make_driver(
    model: DeviceModel, device: DeviceConfig, transport: LinkTransport
) -> Dlt645Driver | None:
    profile = PROFILES.get(model.name)
    if profile is None:
        return None
    if not isinstance(transport, FramedTransport):
        return None
    return Dlt645Driver(profile, device, transport)


@hookimpl
def openprepay_make_simulator(
    model: DeviceModel, device: DeviceConfig, options: SimulatorOptions
) -> Dlt645MeterSimulator | None:
    profile = PROFILES.get(model.name)
    return None if profile is None else Dlt645MeterSimulator(profile, device, options)


@hookimpl
def openprepay_make_link_simulator(
    link: LinkConfig, devices: Sequence[SimulatedDevice], options: SimulatorOptions
) -> SimulatedBus | None:
    if not is_dlt645(link) or not all(isinstance(d, Dlt645MeterSimulator) for d in devices):
        return None
    local = link.type is LinkType.RTU_OVER_TCP and link.host in LOOPBACK
    port = link.port if local and not options.ephemeral_ports else 0
    by_address = {d.address: d for d in devices if isinstance(d, Dlt645MeterSimulator)}
    return SimulatedBus(link, FRAMING, by_address, options, port=port or 0)


@hookimpl
def openprepay_validate_site(site: Site) -> list[FieldError]:
    """ESAM models are refused; remote-control options are checked before anything runs."""
    errors = []
    for device in site.devices.values():
        profile = PROFILES.get(device.model)
        if profile is None:
            continue
        refused = refusal(profile, device)
        if refused is not None:
            errors.append(refused)
            continue
        try:
            read_options(device)
        except ConfigError as exc:
            errors.extend(exc.errors)
    return errors


@hookimpl
def openprepay_cli_commands(cli: click.Group) -> None:
    from .cli import dlt645_group

    cli.add_command(dlt645_group)
