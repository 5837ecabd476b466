"""`openprepay simulate` serves DL/T 645 meters; `openprepay dlt645 address|sync-time` talk
to them over the real socket, as separate processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import free_port

OPENPREPAY = [sys.executable, "-m", "openprepay.core.cli"]


def site(port: int, *meters: str) -> dict:
    return {
        "site": {"id": "t"},
        "links": {
            "bus": {
                "type": "rtu_over_tcp",
                "host": "127.0.0.1",
                "port": port,
                "protocol": "dlt645",
            },
            "gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": free_port()},
        },
        "buildings": {"A": {"floors": ["1"]}},
        "rooms": {"A-1": {"building": "A", "floor": "1"}},
        "devices": {
            f"D{i}": {"model": "dlt645.single_phase", "link": "bus", "address": a, "room": "A-1"}
            for i, a in enumerate(meters)
        },
    }


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OPENPREPAY, *args], capture_output=True, text=True, timeout=60, env=ENV)


ENV = {**os.environ, "OPENPREPAY_DISABLE_PLUGINS": "opcua,historian,web"}


@pytest.fixture
def simulated(tmp_path: Path) -> Iterator[Path]:
    port = free_port()
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(site(port, "000012345678")))
    proc = subprocess.Popen(
        [*OPENPREPAY, "simulate", str(path), "--duration", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=ENV,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.stdout.read().decode() if proc.stdout else "no output"
                raise RuntimeError(out) from None
            time.sleep(0.1)
    yield path
    proc.terminate()
    proc.wait(10)


def test_address_of_the_only_meter_on_the_bus(simulated: Path) -> None:
    result = run("dlt645", "address", str(simulated), "--link", "bus")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "000012345678"


def test_time_sync_is_broadcast(simulated: Path) -> None:
    result = run("dlt645", "sync-time", str(simulated), "--link", "bus")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("broadcast time ")
    assert result.stdout.strip().endswith("on link bus")


def test_a_link_that_is_not_dlt645_is_refused_with_the_choices(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(site(free_port(), "000012345678")))
    result = run("dlt645", "address", str(path), "--link", "gw")
    assert result.returncode != 0
    assert "--link: 'gw' is not a dlt645 link (dlt645 links: bus)" in result.stderr + result.stdout
