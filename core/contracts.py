"""What a plugin implements: the objects its hooks return.

These are structural types (`typing.Protocol`): a plugin does not inherit from anything,
it returns objects with these methods. `core/hookspecs.py` says which hook returns which.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from .config.site import DeviceConfig, LinkConfig
from .model import CommandOutcome, DeviceCommand, DeviceModel, Sample, Value


@runtime_checkable
class LinkTransport(Protocol):
    """An open path to the devices of one link (a serial port, a gateway socket).

    The link arbiter owns it: it connects, reconnects with back-off and closes it, and it
    guarantees that drivers use it for one transaction at a time (or `in_flight` on
    native Modbus TCP).
    """

    link: LinkConfig

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None:
        """Open the link; raise `LinkDown` if it cannot be opened."""

    async def close(self) -> None: ...


@runtime_checkable
class Driver(Protocol):
    """Reads and commands one device through its link's transport.

    A driver whose values are scaled (a CT/PT-connected meter) may also have `limits`, the
    `core.field.plausibility.DeviceLimits` of its device in the units it publishes; otherwise
    the link arbiter takes them from the model and the site file.
    """

    device: DeviceConfig
    model: DeviceModel

    def confirm_delay_s(self, command: DeviceCommand) -> float:
        """Seconds to wait after `execute` before reading back (relay travel, valve motor)."""

    async def read(self) -> Sample:
        """Read every point once. Raise a `DeviceIOError` on failure, never return stale
        values."""

    async def execute(self, command: DeviceCommand) -> None:
        """Send the command. Raise `CommandRefused` for an unsupported command or bad
        parameters (nothing sent), `DeviceIOError` when the transaction failed."""

    async def confirm(self, command: DeviceCommand) -> CommandOutcome:
        """Read the device back and tell whether the command took effect."""


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    """How simulated devices behave (the same for every plugin)."""

    #: Simulated seconds per real second (the demo runs days in minutes).
    speedup: float = 1.0
    #: Delay answers by the time the frames would take on the wire at the link's baud rate.
    serial_timing: bool = False
    #: Device turnaround before answering, in seconds (with serial_timing).
    turnaround_s: float = 0.005
    #: Seed for load profiles, so tests are repeatable.
    seed: int = 1
    #: Start of simulated time; None = now.
    start: datetime | None = None
    #: The site's IANA time zone: simulated meter clocks and TOU periods follow it.
    timezone: str = "Asia/Shanghai"
    #: Listen on ports the OS picks (demo, tests) instead of the ports in the site file.
    ephemeral_ports: bool = False


@runtime_checkable
class SimulatedDevice(Protocol):
    """An emulated device: register image plus behaviour (load, relay, balance)."""

    device: DeviceConfig
    model: DeviceModel
    #: A silent device never answers; a garbling device answers with corrupt frames.
    silent: bool
    garbage: bool

    def snapshot(self) -> Mapping[str, Value]:
        """What the device holds now, in engineering units (for tests and the demo)."""


@runtime_checkable
class LinkSimulator(Protocol):
    """Hosts simulated devices behind one simulated link (gateway or bus), speaking the
    real wire protocol on a loopback socket."""

    link: LinkConfig
    devices: Mapping[int, SimulatedDevice]

    async def start(self) -> tuple[str, int]:
        """Start serving; return the (host, port) it listens on."""

    async def stop(self) -> None: ...


@runtime_checkable
class Service(Protocol):
    """A long-running part of the product (OPC UA server, historian, prepay engine).

    The runtime starts services in the order the hooks returned them and stops them in
    reverse order.
    """

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class Notifier(Protocol):
    """Delivers alarm and supply notices on one channel (email, webhook, SMS...)."""

    channel: str

    async def send(
        self, recipient: str, subject: str, body: str, data: Mapping[str, object]
    ) -> None:
        """Deliver one notice; raise on failure so the sender can retry."""


@runtime_checkable
class PaymentProvider(Protocol):
    """An online payment channel (WeChat Pay, Alipay, Stripe...)."""

    channel: str
