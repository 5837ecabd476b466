"""Exceptions shared across the core and the plugins.

Drivers and transports raise the `DeviceIOError` family; the link arbiter turns them into
Bad samples, device back-off and link reconnects. `ConfigError` carries every problem found
in a site or profile file, each naming the exact field.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class OpenPrepayError(Exception):
    """Base of every error the product raises on purpose."""


class RequestError(OpenPrepayError):
    """A request that cannot be carried out; `field` names what is wrong. Nothing changed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class DeviceIOError(OpenPrepayError):
    """A transaction with a device did not produce a usable answer."""


class DeviceTimeout(DeviceIOError):
    """The device did not answer in time (silent device, wrong unit id, cut cable)."""


class DeviceRejected(DeviceIOError):
    """The device answered with an exception (illegal address, value, busy...)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class GarbledResponse(DeviceIOError):
    """Bytes came back but did not form a valid frame (CRC, length, wrong unit)."""


class LinkDown(DeviceIOError):
    """The link itself is unusable (gateway unreachable, serial port gone)."""


class CommandRefused(OpenPrepayError):
    """A command cannot be sent to this device (unsupported, bad parameters)."""


class LinkNotOwned(CommandRefused):
    """With [cluster]: this instance does not hold the link's lease (or its local deadline
    passed), so it must not talk to the link: nothing was sent."""


class CommandFenced(OpenPrepayError):
    """With [cluster]: the database refused a claim or completion made under a lease epoch
    that is no longer current (another instance owns the link now). Nothing changed."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem at one place: `links.gw1.port: expected 1..65535, got 70000`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(OpenPrepayError):
    """A configuration file is wrong; `errors` lists every problem found, not only the first."""

    def __init__(self, source: str, errors: Iterable[FieldError]) -> None:
        self.source = source
        self.errors = list(errors)
        lines = "\n".join(f"  {e}" for e in self.errors)
        super().__init__(f"{source}: {len(self.errors)} error(s)\n{lines}")
