"""Stopping background tasks (the OPC UA publisher and event delivery, CLI progress) and
waiting for events without losing a cancellation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
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


class Wakeup:
    """A flag one task waits on with a deadline (`wait(timeout_s)`), set by others on the
    loop. `wait_event` ends a timed-out wait by cancelling the task (`asyncio.timeout`):
    an exception, its traceback and a reference cycle for the collector on every wait, and
    a link worker waits once per poll. Here the deadline resolves a future instead; a
    cancellation of the waiting task still propagates."""

    __slots__ = ("_flag", "_waiter")

    def __init__(self) -> None:
        self._flag = False
        self._waiter: asyncio.Future[bool] | None = None

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def clear(self) -> None:
        self._flag = False

    async def wait(self, timeout_s: float) -> bool:
        """Until set or `timeout_s` has passed; True when it was set."""
        if self._flag:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        deadline = loop.call_later(timeout_s, _resolve, waiter)
        try:
            return await waiter
        finally:
            deadline.cancel()
            self._waiter = None


def _resolve(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


async def finish_within(
    aw: Awaitable[Any], timeout_s: float, *, what: str, log: logging.Logger
) -> bool:
    """Run `aw` (a service's or worker's stop) for at most `timeout_s`; True when it ended.

    Past the time it is cancelled and given a short grace (a tenth of the time, at most
    half a second) to end; a stop that still does not end — a hung device read, a thread
    that never answers, a library that swallows the cancellation — is abandoned with a
    warning naming `what`, and the caller goes on. An error it raised is logged, not raised:
    one broken service must not keep the others running.
    """
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({task}, timeout=max(timeout_s, 0.0))
    if not done:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=min(0.5, max(timeout_s / 10, 0.05)))
    if not done:
        log.warning(
            "%s did not stop within %.1f s: abandoned", what, timeout_s, extra={"service": what}
        )
        return False
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.error("stopping %s failed", what, exc_info=(type(exc), exc, exc.__traceback__))
    elif task.cancelled():
        log.warning("%s stopped only when cancelled after %.1f s", what, timeout_s)
    return True
