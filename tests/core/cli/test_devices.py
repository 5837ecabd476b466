"""The device commands end to end: simulate in one process, read/run/check in others."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

ROOT = Path(__file__).parents[3]
CLI = [sys.executable, "-m", "openprepay.core.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


@pytest.fixture
def simulated_site(tmp_path: Path) -> Iterator[Path]:
    with serving(tmp_path) as path:
        yield path


#: `openprepay simulate` with its default (lean) Modbus server and 1 s physics step, and
#: with the tests' reference path (pymodbus' server, a step per request).
SIMULATOR_PATHS = {"lean": [], "pymodbus": ["--sim-server", "pymodbus", "--sim-step", "0"]}


@pytest.fixture(params=list(SIMULATOR_PATHS))
def simulated_site_either_path(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    with serving(tmp_path, *SIMULATOR_PATHS[request.param]) as path:
        yield path


@contextlib.contextmanager
def serving(tmp_path: Path, *options: str) -> Iterator[Path]:
    """A one-gateway site (a meter and a silent one) served by `openprepay simulate`."""
    port = free_port()
    site = {
        "site": {"id": "cli"},
        "poll": {"interval_s": 1},
        "links": {
            "gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": port, "timeout_ms": 300}
        },
        "buildings": {"A": {"floors": ["1"]}},
        "rooms": {"A-101": {"building": "A", "floor": "1", "area_m2": 40}},
        "devices": {
            "E-A-101": {"model": "acrel.DDSY1352", "link": "gw", "unit_id": 1, "room": "A-101"},
            "E-dead": {"model": "acrel.DDSY1352", "link": "gw", "unit_id": 2, "room": "A-101"},
        },
    }
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(site))
    sim = subprocess.Popen(
        [*CLI, "simulate", str(path), "--silent", "E-dead", *options],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and sim.poll() is None, "simulator did not start"
            time.sleep(0.05)
    try:
        yield path
    finally:
        sim.terminate()
        sim.wait(10)


def test_read_prints_every_point_with_its_unit(simulated_site: Path) -> None:
    result = run("read", str(simulated_site), "E-A-101")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert lines["energy_total"][1] == "kWh" and float(lines["energy_total"][0]) > 0
    assert lines["voltage"][1] == "V"
    assert lines["supply_on"][0] == "1"


def test_read_marks_the_values_that_rest_on_unverified_registers(simulated_site: Path) -> None:
    result = run("read", str(simulated_site), "E-A-101")
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    # Two sources agree on the energy registers; the relay state is derived from a
    # register only the vendor tool documents.
    assert "unverified" not in lines["energy_total"]
    assert lines["supply_on"].endswith("unverified register")
    assert lines["voltage"].endswith("unverified register")


def test_models_and_plugins_show_which_points_are_unverified(cli) -> None:
    group, obj = cli
    result = CliRunner().invoke(group, ["models", "acrel.DDSY1352"], obj=obj)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:]}
    assert "verified" in rows["energy_total"] and "UNVERIFIED" not in rows["energy_total"]
    assert "UNVERIFIED" in rows["supply_on"] and "derived from 0x0058" in rows["supply_on"]
    assert "0..300" in rows["voltage"] and "one of 0,1" in rows["relay_trip"]
    listing = CliRunner().invoke(group, ["plugins"], obj=obj).output
    plugins_line = next(line for line in listing.splitlines() if "acrel.DDSY1352" in line)
    unverified = len(obj.plugins.models["acrel.DDSY1352"].unverified_points)
    assert unverified and f"({unverified} on unverified registers)" in plugins_line, plugins_line
    unknown = CliRunner().invoke(group, ["models", "acme.nope"], obj=obj)
    assert unknown.exit_code == 2 and "unknown model(s) acme.nope" in unknown.output


def test_read_reports_a_silent_meter_and_fails(simulated_site_either_path: Path) -> None:
    result = run("read", str(simulated_site_either_path), "E-A-101", "E-dead")
    assert result.returncode == 1
    assert "E-dead: BAD_COMM_FAILURE" in result.stdout
    assert "energy_total" in result.stdout  # the healthy meter was still read


def test_read_rejects_an_unknown_meter(simulated_site: Path) -> None:
    result = run("read", str(simulated_site), "E-nope")
    assert result.returncode == 2
    assert "unknown meter(s) E-nope" in result.stderr


def test_run_polls_until_the_duration_ends(simulated_site: Path) -> None:
    result = run("--log-format", "json", "run", str(simulated_site), "--duration", "3")
    assert result.returncode == 0, result.stderr
    assert '"meter": "E-dead"' in result.stderr  # structured logs name the meter and link
    assert '"link": "gw"' in result.stderr


def test_check_reports_field_errors_with_exit_status_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[site]\nid = "x"\n[links.gw1]\ntype = "rtu_over_tcp"\nhost = "h"\nport = 70000\n'
    )
    result = run("check", str(bad))
    assert result.returncode == 2
    assert "links.gw1.port: expected 1..65535, got 70000" in result.stderr


def test_check_accepts_the_example() -> None:
    result = run("check", "examples/site.toml")
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


@pytest.mark.slow
def test_demo_runs_headless_and_stops(tmp_path: Path) -> None:
    env_dir = tmp_path / "demo"
    result = subprocess.run(
        [
            *CLI,
            "demo",
            "--headless",
            "--duration",
            "8",
            "--buildings",
            "1",
            "--floors",
            "2",
            "--state-dir",
            str(env_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (env_dir / "site.toml").exists()
    assert "OpenPrepay demo" in result.stderr
