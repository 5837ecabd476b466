"""Helpers shared by CLI commands."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click

from ..site import Site, load_site

T = TypeVar("T")

site_argument = click.argument("site_file", metavar="SITE", type=click.Path(dir_okay=False))


def load_checked_site(path: str) -> Site:
    return load_site(path)


def run_async(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run `main(stop)`; SIGINT/SIGTERM set `stop` so the command can shut down cleanly."""

    async def runner() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            return await main(stop)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(runner())


async def wait_for_stop(stop: asyncio.Event, duration: float | None) -> None:
    """Until Ctrl-C, or `duration` seconds when given."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=duration)
    except TimeoutError:
        pass
