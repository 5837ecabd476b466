"""Commands that talk to devices end: by themselves when their work is done, and on
SIGTERM/Ctrl-C while they wait for a device, also under CPU load (issue 9 §10).

A one-off `read` used to print its values and then poll every device forever, deaf to
SIGTERM, in about one run in seven under load: Python 3.11's `asyncio.wait_for` (inside
pymodbus, and in the link worker) returns normally when the awaited answer arrives in the
same loop iteration as the cancellation, so a link worker swallowed its stop.

Bounds below only catch a hang (a run that never ends); they are not timing assertions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import tomli_w

from openprepay.core.app.plugins import DISABLE_ENV, Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.config.site import load_site

ROOT = Path(__file__).parents[3]
CLI = [sys.executable, "-m", "openprepay.core.cli"]
#: A run that has not ended after this long is hung (a read takes about 2 s here, idle).
HUNG_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> int:
    """The first of `n` consecutive free ports."""
    while True:
        first = free_port()
        try:
            for port in range(first, first + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue


def site_dict(port: int, *, timeout_ms: int = 300, meters: int = 3, more: int = 0) -> dict:
    """An RTU gateway on `port` with `meters` DDSY1352 meters (E-1, E-2...), and `more`
    gateways like it on the next ports, all polled as fast as their links allow."""
    links, devices = {}, {}
    for n in range(1 + more):
        link = "gw" if n == 0 else f"gw{n}"
        links[link] = {
            "type": "rtu_over_tcp",
            "host": "127.0.0.1",
            "port": port + n,
            "timeout_ms": timeout_ms,
        }
        for u in range(1, meters + 1):
            meter = f"E-{u}" if n == 0 else f"E-{n}-{u}"
            devices[meter] = {
                "model": "acrel.DDSY1352",
                "link": link,
                "unit_id": u,
                "building": "A",
            }
    return {
        "site": {"id": "exit"},
        "poll": {"interval_s": 0, "stats_interval_s": 60},
        "links": links,
        "buildings": {"A": {"floors": ["1"]}},
        "devices": devices,
    }


@contextmanager
def simulator(
    site_file: Path, port: int, *silent: str, links: int = 1
) -> Iterator[subprocess.Popen]:
    """`openprepay simulate SITE` in its own process (its `links` gateways listening from
    `port` on), until the test ends."""
    args = [*CLI, "simulate", str(site_file)]
    for meter in silent:
        args += ["--silent", meter]
    sim = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    try:
        deadline = time.monotonic() + 30
        for listening in range(port, port + links):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", listening), timeout=0.2).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline and sim.poll() is None, "no simulator"
                    time.sleep(0.05)
        yield sim
    finally:
        sim.terminate()
        sim.wait(10)


@contextmanager
def cpu_hog(processes: int = 2) -> Iterator[None]:
    """Busy loops on every core while the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def read_once(site_file: Path) -> tuple[int | None, str]:
    """Run `openprepay read SITE E-1`; (exit status, output), status None if it hung."""
    proc = subprocess.Popen(
        [*CLI, "read", str(site_file), "E-1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=HUNG_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, out
    return proc.returncode, out


@pytest.mark.slow
def test_read_ends_by_itself_every_time_under_cpu_load(tmp_path: Path) -> None:
    port = free_port()
    site_file = tmp_path / "site.toml"
    # A generous reply timeout: the test is about `read` ending, and the simulator shares
    # the hogged cores with the suite's other workers (a reply past 300 ms is no hang).
    site_file.write_text(tomli_w.dumps(site_dict(port, timeout_ms=3000)))
    with simulator(site_file, port), cpu_hog(), ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: read_once(site_file), range(30)))
    hung = [out[-800:] for status, out in results if status is None]
    assert not hung, f"{len(hung)} of 30 runs of `read` never ended; last output:\n{hung[0]}"
    assert all(status == 0 and "energy_total" in out for status, out in results), results


def start_cli(*args: str) -> subprocess.Popen:
    """The CLI in its own process, without the OPC UA server and historian (their ports
    and files are not what these tests are about)."""
    env = {**os.environ, DISABLE_ENV: "opcua,historian"}
    return subprocess.Popen(
        [*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_for_line(stream, text: str) -> None:
    """Read `stream` until a line contains `text` (the command is past its start)."""
    for line in stream:
        if text in line:
            return
    raise AssertionError(f"the command ended before printing {text!r}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_read_while_it_waits_for_a_silent_meter(tmp_path: Path, sig: int) -> None:
    # Three silent meters with a 10 s timeout each: the read would wait 30 s.
    port = free_port()
    site_file = tmp_path / "site.toml"
    site_file.write_text(tomli_w.dumps(site_dict(port, timeout_ms=10_000)))
    with simulator(site_file, port, "E-1", "E-2", "E-3"):
        proc = start_cli("read", str(site_file))
        wait_for_line(proc.stderr, "open to")  # the link is open: the first read is on the wire
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("read did not end on the signal while it waited for a meter")
    assert proc.returncode == 130, err
    assert "interrupted; 3 meter(s) not read" in err


def test_sigterm_ends_run_mid_poll(tmp_path: Path) -> None:
    port = free_port()
    site_file = tmp_path / "site.toml"
    site_file.write_text(tomli_w.dumps(site_dict(port, timeout_ms=10_000)))
    with simulator(site_file, port, "E-2"):
        proc = start_cli("run", str(site_file))
        wait_for_line(proc.stderr, "open to")
        time.sleep(0.5)  # polls in flight, one of them waiting for the silent meter
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=HUNG_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail("run did not end on SIGTERM")
    assert proc.returncode == 0


async def test_stopping_the_link_workers_never_hangs(tmp_path: Path) -> None:
    """The race in-process, many times over: stop the link workers while polls are in
    flight to a simulator in another process, on four links at once (before the fix: one
    run in a few dozen hung)."""
    port = free_ports(4)
    site_file = tmp_path / "site.toml"
    site_file.write_text(tomli_w.dumps(site_dict(port, more=3)))
    plugins = Plugins.load()
    site = load_site(site_file)
    with simulator(site_file, port, links=4):
        for run in range(200):
            runtime = Runtime(site, plugins)
            await runtime.arbiter.start()
            await runtime.arbiter.read_now("E-1")
            stopping = asyncio.ensure_future(runtime.arbiter.stop())
            done, _ = await asyncio.wait({stopping}, timeout=HUNG_S / 3)
            assert done, f"stop {run + 1} never ended: a link worker swallowed its cancellation"
