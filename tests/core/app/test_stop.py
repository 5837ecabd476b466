"""Stop always stops: a service or a device read that never ends is cancelled and then
abandoned, and the service, `read` and `demo --duration` exit within 5 s."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import subprocess
import sys
import time
import types
from pathlib import Path

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import STOP_DEADLINE_S, Runtime
from openprepay.core.app.vitals import GC_THRESHOLDS
from openprepay.core.config.site import load_site
from openprepay.core.field.arbiter import LinkArbiter
from openprepay.core.hookspecs import hookimpl
from openprepay.core.model import Sample
from openprepay.core.tasks import finish_within
from openprepay.plugins.modbus import plugin as modbus

from ..field.test_arbiter_scheduling import make_worker


async def _never_ends(released: asyncio.Event) -> None:
    """A stop (or a device read) that swallows every cancellation until the test ends
    (released, so that the test's own loop can close)."""
    while not released.is_set():
        try:
            await released.wait()
        except asyncio.CancelledError:
            pass


class HungService:
    name = "hung"

    def __init__(self) -> None:
        self.released = asyncio.Event()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await _never_ends(self.released)


class GoodService:
    name = "good"

    def __init__(self) -> None:
        self.stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True


async def test_finish_within_abandons_what_ignores_its_cancellation(caplog) -> None:
    log = logging.getLogger("test.stop")
    assert await finish_within(asyncio.sleep(0), 1.0, what="quick", log=log)
    released = asyncio.Event()
    with caplog.at_level(logging.WARNING, "test.stop"):
        assert not await finish_within(_never_ends(released), 0.1, what="stuck", log=log)
    released.set()
    assert "stuck did not stop within 0.1 s: abandoned" in caplog.text


async def test_the_runtime_stops_within_its_deadline_past_a_hung_service(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        '[site]\nid = "s"\n[links.gw]\ntype = "modbus_tcp"\nhost = "127.0.0.1"\nport = 1\n',
        encoding="utf-8",
    )
    good, hung = GoodService(), HungService()

    @hookimpl
    def openprepay_services(runtime):
        return [good, hung]  # stopped in reverse: the hung one first

    hang = types.SimpleNamespace(openprepay_services=openprepay_services)
    plugins = Plugins.load(entry_points=False, extra=[("modbus", modbus), ("hang", hang)])
    runtime = Runtime(load_site(path), plugins)
    thresholds = gc.get_threshold()
    try:
        await runtime.start()
        # Start-up ran without the collector, then froze its heap and raised the thresholds.
        assert gc.isenabled() and gc.get_threshold() == GC_THRESHOLDS
        assert runtime.vitals.frozen > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    started = time.monotonic()
    await runtime.stop()
    took = time.monotonic() - started
    assert runtime.abandoned == ["hung"]
    assert good.stopped, "a hung service must not keep the next one running"
    assert runtime.db is None
    hung.released.set()
    assert took < STOP_DEADLINE_S + 1.0


class SlowToStopService:
    """Takes a second to put its data away: more than an equal share of the deadline."""

    name = "slow"
    stop_weight = 4.0

    def __init__(self) -> None:
        self.stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await asyncio.sleep(1.0)
        self.stopped = True


async def test_a_service_with_a_larger_stop_weight_gets_the_time_it_needs(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(
        '[site]\nid = "s"\n[links.gw]\ntype = "modbus_tcp"\nhost = "127.0.0.1"\nport = 1\n',
        encoding="utf-8",
    )
    slow, hung = SlowToStopService(), HungService()

    @hookimpl
    def openprepay_services(runtime):
        return [hung, slow]  # the slow one stops first, the hung one after it

    extra = types.SimpleNamespace(openprepay_services=openprepay_services)
    plugins = Plugins.load(entry_points=False, extra=[("modbus", modbus), ("slow", extra)])
    runtime = Runtime(load_site(path), plugins)
    thresholds = gc.get_threshold()
    try:
        await runtime.start()
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    steps = 1 + len(runtime.services)  # the links, then every service
    assert STOP_DEADLINE_S / steps < 1.0, "an equal share would cut the slow one"
    await runtime.stop()
    hung.released.set()
    assert slow.stopped and runtime.abandoned == ["hung"]


async def test_a_device_read_that_never_ends_does_not_hold_the_links_stop() -> None:
    worker, _log, drivers, _ = make_worker(1)

    released = asyncio.Event()

    async def hung_read() -> Sample:
        await _never_ends(released)
        raise AssertionError("unreachable")

    drivers["m0"].read = hung_read
    arbiter = LinkArbiter({"bus": worker})
    await arbiter.start(routine_polls=False)
    reading = asyncio.ensure_future(arbiter.read_now("m0"))
    await asyncio.sleep(0.05)  # the lane is in the read now
    assert not reading.done()
    started = time.monotonic()
    await arbiter.stop(timeout_s=0.5)
    took = time.monotonic() - started
    released.set()
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    assert took < 2.0


def test_demo_duration_exits_within_5_s_at_a_few_hundred_meters(tmp_path: Path) -> None:
    """`openprepay demo --duration` at 300 meters, in its own process: the time from the
    end of the duration to the process's exit."""
    duration = 8.0
    cli = [sys.executable, "-c", "from openprepay.core.cli import main; main()"]
    args = ["demo", "--headless", "--buildings", "3", "--floors", "10", "--rooms", "5"]
    args += ["--duration", str(duration), "--state-dir", str(tmp_path / "demo")]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cli + args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env
    )
    running_at = None
    assert proc.stderr is not None
    for line in proc.stderr:
        if running_at is None and line.startswith("site file:"):
            running_at = time.monotonic()  # printed after start, just before the duration
    proc.wait(timeout=120)
    exited_at = time.monotonic()
    assert running_at is not None, "the demo never announced itself"
    assert proc.returncode == 0
    stop_s = exited_at - running_at - duration
    # 5 s on a machine of its own; a box with more runnable work than cores (the suite's
    # other workers) stretches every wall-clock figure by about its load per core.
    limit = 5.0 * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    assert stop_s < limit, (
        f"demo took {stop_s:.1f} s to exit after its duration (limit {limit:.1f} s)"
    )
