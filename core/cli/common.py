"""The public toolkit for command groups: the built-in ones and a plugin's
(`openprepay_cli_commands`, e.g. historian/cli.py, opcua_server/cli.py).

A plugin's commands need nothing else from core/cli: `site_argument` and
`load_checked_site` (the SITE argument and the site it names; a bad one raises
`ConfigError`, which the CLI prints in one line and exits non-zero, as it does for any
`OpenPrepayError`), `run_async` and `wait_for_stop` (a long-running command that ends
cleanly on Ctrl-C or SIGTERM), `progress_bar` (progress on standard error). A command that
takes a password uses core/cli/secret.py.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import click

from ..config.site import Site, load_site
from ..tasks import wait_event

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
    await wait_event(stop, duration)


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """A progress bar on standard error (transient; hidden when stderr is not a terminal,
    so scripted output stays clean). Yields `update(completed, *, total=, description=)`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        task = progress.add_task(description, total=total)

        def update(completed: int, **changes: object) -> None:
            progress.update(task, completed=completed, **changes)  # type: ignore[arg-type]

        yield update
