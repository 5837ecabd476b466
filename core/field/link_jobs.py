"""The jobs a link worker queues: routine polls, control commands, their read-back
confirmations and reads on demand, and how a waiting caller is answered."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..errors import DeviceRejected
from ..model import CommandOutcome, DeviceCommand, Sample

#: A routine poll: (due on the worker's clock, sequence, meter id); the sequence keeps
#: polls due at the same instant in the order they were scheduled. A plain tuple, not a
#: class: one waits in a link's heap for every meter all the time, and the collector stops
#: tracking a tuple of a float, an int and a str, where it walks every slotted object at
#: each full collection (docs/capacity.md, "The collector").
PollJob = tuple[float, int, str]


@dataclass(slots=True)
class ControlJob:
    """A command to send ahead of every poll."""

    command: DeviceCommand
    future: asyncio.Future[CommandOutcome]


@dataclass(slots=True)
class ConfirmJob:
    """A read-back of a command sent (attempt `attempt`)."""

    command: DeviceCommand
    future: asyncio.Future[CommandOutcome]
    attempt: int
    #: The device's refusal of the write, if it refused; raised when the read-back fails.
    refusal: DeviceRejected | None = None


@dataclass(slots=True)
class ReadJob:
    """A read on demand (confirmation priority), e.g. for reconciliation."""

    meter_id: str
    future: asyncio.Future[Sample]


Job = PollJob | ControlJob | ConfirmJob | ReadJob


def settle(future: asyncio.Future, result: object) -> None:
    """Answer a waiting caller with `result` (an exception is raised to it), once."""
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
