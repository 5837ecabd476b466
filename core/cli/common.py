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
import atexit
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import click

from ..config.site import Site, load_site
from ..tasks import wait_event

T = TypeVar("T")

log = logging.getLogger("openprepay.cli")

site_argument = click.argument("site_file", metavar="SITE", type=click.Path(dir_okay=False))


def load_checked_site(path: str) -> Site:
    return load_site(path)


#: After a command's work has ended, what is still running gets this long to end before
#: the process exits without it (see `run_async` and `exit_without_hung_threads`).
EXIT_GRACE_S = 1.0

#: When the last `run_async` ended (monotonic): the grace is counted from there.
_loop_ended_at: float | None = None


def run_async(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run `main(stop)`; SIGINT/SIGTERM set `stop` so the command can shut down cleanly.

    Not `asyncio.run`: its shutdown cancels the tasks left over and then waits for every
    one of them, every async generator and every thread of the default executor, so one
    device read stuck in a thread (or a task that swallows its cancellation) keeps the
    command alive for ever. Here the leftovers get `EXIT_GRACE_S` and are then left
    behind; `exit_without_hung_threads` (called by the CLI's `main`) ends the process
    without waiting for threads that still hang.
    """
    global _loop_ended_at
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        stop = asyncio.Event()
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        return loop.run_until_complete(main(stop))
    finally:
        try:
            for sig in signals:
                loop.remove_signal_handler(sig)
            _close_loop(loop)
        finally:
            asyncio.set_event_loop(None)
            _loop_ended_at = time.monotonic()


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on `loop`, wait at most `EXIT_GRACE_S` for it, close the loop."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        _, stuck = loop.run_until_complete(asyncio.wait(tasks, timeout=EXIT_GRACE_S))
        for task in stuck:
            log.warning("task %s did not end when cancelled: left behind", task.get_name())
        for task in tasks - stuck:
            if not task.cancelled() and task.exception() is not None:
                log.error("task %s ended with %r", task.get_name(), task.exception())
    try:
        loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), EXIT_GRACE_S))
    except TimeoutError:
        log.warning("async generators did not close within %.1f s", EXIT_GRACE_S)
    executor = getattr(loop, "_default_executor", None)
    if executor is not None:  # its threads are not waited for here (see exit_...)
        executor.shutdown(wait=False, cancel_futures=True)
    loop.close()


def exit_without_hung_threads(code: int | str | None) -> None:
    """At the end of the process: wait for the threads still running (a device read stuck
    in the executor, a library's worker) until `EXIT_GRACE_S` after the last `run_async`
    ended; those that still run would keep the interpreter from exiting, so the process
    then exits at once with `code` (streams flushed), naming them in the log.

    Without hung threads it leaves at once too: a command's work is committed and closed
    when its loop has ended, and tearing the heap down object by object (GBs for a service
    at 10,000+ meters) only adds seconds to `stop`. The exit handlers still run."""
    if _loop_ended_at is None:
        return
    deadline = _loop_ended_at + EXIT_GRACE_S
    hung = []
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(deadline - time.monotonic(), 0.0))
        if thread.is_alive():
            hung.append(thread.name)
    if hung:
        log.warning("threads still running at exit, not waited for: %s", ", ".join(hung))
    status = code if isinstance(code, int) else (0 if code is None else 1)
    if isinstance(code, str):
        print(code, file=sys.stderr)
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


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
