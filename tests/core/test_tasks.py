"""core/tasks.py: waiting for an event never swallows a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from openprepay.core.tasks import Wakeup, wait_event


async def test_wait_event_reports_set_and_timeout() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 10) is True


async def test_cancel_while_the_event_is_set_still_cancels() -> None:
    """The lost cancellation: set and cancel in the same loop iteration. `wait_for` on
    Python 3.11 returns normally here; a `while True` loop built on it never ends."""
    event = asyncio.Event()
    task = asyncio.create_task(wait_event(event, 10))
    await asyncio.sleep(0)  # the task is now waiting
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_loop_on_wait_event_stops_when_cancelled_during_a_wake() -> None:
    wake = asyncio.Event()
    rounds = 0

    async def loop_forever() -> None:
        nonlocal rounds
        while True:
            await wait_event(wake, 10)
            wake.clear()
            rounds += 1

    task = asyncio.create_task(loop_forever())
    for _ in range(20):
        await asyncio.sleep(0)
        wake.set()
        if rounds >= 3:
            break
    wake.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_a_wakeup_reports_set_and_timeout_without_an_exception() -> None:
    wake = Wakeup()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await wake.wait(0.05) is False
    assert loop.time() - started >= 0.04
    loop.call_later(0.01, wake.set)
    assert await wake.wait(10) is True
    assert wake.is_set() and await wake.wait(10) is True  # stays set until cleared
    wake.clear()
    assert await wake.wait(0) is False


async def test_a_wakeup_set_as_its_waiter_is_cancelled_still_cancels() -> None:
    wake = Wakeup()
    task = asyncio.create_task(wake.wait(10))
    await asyncio.sleep(0)  # the task is now waiting
    wake.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    wake.clear()
    assert await wake.wait(0.01) is False  # the cancelled wait left nothing behind
