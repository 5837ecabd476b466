"""Hooks of the CJ/T 188 plugin: models from the profile files in `profiles/`, a framed
transport for links with `protocol = "cjt188"`, drivers, simulators and the simulated bus."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import click

from openprepay.core.config.site import DeviceConfig, LinkConfig, LinkProtocol, LinkType
from openprepay.core.contracts import LinkTransport, SimulatedDevice, SimulatorOptions
from openprepay.core.hookspecs import hookimpl
from openprepay.core.model import DeviceModel
from openprepay.plugins.framed import FramedTransport, SimulatedBus

from .driver import Cjt188Driver
from .framing import FRAMING
from .profile import Cjt188Profile, load_profiles
from .simulator import Cjt188MeterSimulator

PROFILES = Path(__file__).parent / "profiles"
FRAMED_LINKS = (LinkType.SERIAL, LinkType.RTU_OVER_TCP)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@cache
def profiles() -> dict[str, Cjt188Profile]:
    # On first use, not at import: a broken profile then fails the catalogue hook, which
    # the plugin loader reports by the plugin's name.
    return load_profiles(PROFILES)


def _mine(link: LinkConfig) -> bool:
    return link.protocol is LinkProtocol.CJT188 and link.type in FRAMED_LINKS


@hookimpl
def openprepay_device_models() -> list[DeviceModel]:
    return [p.model for p in profiles().values()]


@hookimpl
def openprepay_make_transport(link: LinkConfig) -> FramedTransport | None:
    return FramedTransport(link, FRAMING) if _mine(link) else None


@hookimpl
def openprepay_make_driver(
    model: DeviceModel, device: DeviceConfig, transport: LinkTransport
) -> Cjt188Driver | None:
    profile = profiles().get(model.name)
    if profile is None or not isinstance(transport, FramedTransport):
        return None
    if transport.framing is not FRAMING:
        return None
    return Cjt188Driver(profile, device, transport)


@hookimpl
def openprepay_make_simulator(
    model: DeviceModel, device: DeviceConfig, options: SimulatorOptions
) -> Cjt188MeterSimulator | None:
    profile = profiles().get(model.name)
    return None if profile is None else Cjt188MeterSimulator(profile, device, options)


@hookimpl
def openprepay_make_link_simulator(
    link: LinkConfig, devices: Sequence[SimulatedDevice], options: SimulatorOptions
) -> SimulatedBus | None:
    if not _mine(link) or not all(isinstance(d, Cjt188MeterSimulator) for d in devices):
        return None
    # Serve on the port the site file names when it points at this machine, so that
    # `openprepay run SITE` finds the simulators of `openprepay simulate SITE`.
    local = link.type is LinkType.RTU_OVER_TCP and link.host in LOOPBACK
    port = link.port if local and not options.ephemeral_ports else 0
    meters = {d.address: d for d in devices if isinstance(d, Cjt188MeterSimulator)}
    return SimulatedBus(link, FRAMING, meters, options, port=port or 0)


@hookimpl
def openprepay_cli_commands(cli: click.Group) -> None:
    from .cli import cjt188_group

    cli.add_command(cjt188_group)
