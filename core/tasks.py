"""Stopping background tasks (the OPC UA publisher and event delivery, CLI progress) and
waiting for events without losing a cancellation."""

from __future__ import annotations

import asyncio
from typing import Any


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait until it has ended; its cancellation is the expected end."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def wait_event(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Wait until `event` is set or `timeout_s` has passed; True when it was set.

    Use it instead of `asyncio.wait_for(event.wait(), t)`: on Python 3.11 `wait_for`
    returns normally, swallowing a cancellation, when the event is set in the same loop
    iteration as the task is cancelled; a loop built on it then never stops.
    `asyncio.timeout` keeps the cancellation.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
