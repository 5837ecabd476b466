"""Hook implementations of the Modbus toolkit: it opens Modbus links and hosts simulated
Modbus devices. It provides no device model of its own."""

from __future__ import annotations

from collections.abc import Sequence

from openprepay.core.config.site import LinkConfig, LinkProtocol, LinkType
from openprepay.core.contracts import SimulatedDevice, SimulatorOptions
from openprepay.core.hookspecs import hookimpl

from .simulation import GatewaySimulator, RegisterDeviceSimulator
from .transport import ModbusTransport

MODBUS_LINKS = (LinkType.SERIAL, LinkType.RTU_OVER_TCP, LinkType.MODBUS_TCP)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@hookimpl
def openprepay_make_transport(link: LinkConfig) -> ModbusTransport | None:
    if link.protocol is not LinkProtocol.MODBUS:
        return None
    return ModbusTransport(link) if link.type in MODBUS_LINKS else None


@hookimpl
def openprepay_make_link_simulator(
    link: LinkConfig, devices: Sequence[SimulatedDevice], options: SimulatorOptions
) -> GatewaySimulator | None:
    if link.type not in MODBUS_LINKS or link.protocol is not LinkProtocol.MODBUS:
        return None
    if not all(isinstance(d, RegisterDeviceSimulator) for d in devices):
        return None
    # Serve on the port the site file names when it points at this machine, so that
    # `openprepay run SITE` finds the simulators of `openprepay simulate SITE`.
    local = link.type is not LinkType.SERIAL and link.host in LOOPBACK
    port = link.port if local and not options.ephemeral_ports else 0
    return GatewaySimulator(link, list(devices), options, port=port or 0)  # type: ignore[arg-type]
