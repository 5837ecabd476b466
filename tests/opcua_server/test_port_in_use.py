"""The OPC UA port already in use: one line naming the port and the setting, a non-zero
exit, no traceback — for `openprepay run` and `openprepay demo` (real processes)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

ROOT = Path(__file__).parents[2]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        yield busy.getsockname()[1]


def assert_one_clean_line(result: subprocess.CompletedProcess[str], port: int) -> None:
    assert result.returncode != 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: OPC UA port {port} is already in use"), last
    assert "[opcua] port" in last
    assert sum("already in use" in line for line in result.stderr.splitlines()) == 1


def test_run_with_the_configured_port_taken(tmp_path: Path, busy_port: int) -> None:
    site = {
        "site": {"id": "busy"},
        "links": {"gw": {"type": "modbus_tcp", "host": "127.0.0.1", "port": 1}},
        "opcua": {"port": busy_port, "hostname": "localhost"},
    }
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(site))
    result = subprocess.run(
        [sys.executable, "-m", "openprepay.core.cli", "run", str(path), "--duration", "30"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert_one_clean_line(result, busy_port)
    assert str(path) in result.stderr.strip().splitlines()[-1]  # which file to edit


# The demo takes a free port when 4840 is taken; what it can still meet is another program
# taking the port between that check and the bind (two demos started at once). The child
# process makes the check answer a port that is taken, then runs the real command.
DEMO = """
import runpy, socket, sys
from openprepay.opcua_server.service import OpcUaService
port = int(sys.argv[1])
OpcUaService._choose_port = lambda self: port
sys.argv = ["openprepay", "demo", "--headless", "--duration", "30", "--buildings", "1",
            "--floors", "1", "--rooms", "2", "--state-dir", sys.argv[2]]
runpy.run_module("openprepay.core.cli", run_name="__main__")
"""


def test_demo_when_the_port_is_taken_under_it(tmp_path: Path, busy_port: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DEMO, str(busy_port), str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        check=False,
    )
    assert_one_clean_line(result, busy_port)
