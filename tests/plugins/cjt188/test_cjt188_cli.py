"""`openprepay simulate` serves CJ/T 188 meters on the port the site file names, and
`openprepay read` in another process reads them (a silent one fails, named)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import tomli_w

ROOT = Path(__file__).parents[3]
CLI = [sys.executable, "-m", "openprepay.core.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_simulate_serves_cjt188_meters_that_read_reads(tmp_path: Path) -> None:
    port, lone_port = free_port(), free_port()
    link = {"type": "rtu_over_tcp", "protocol": "cjt188", "host": "127.0.0.1", "timeout_ms": 300}
    site = {
        "site": {"id": "cli"},
        "links": {"water": {**link, "port": port}, "lone": {**link, "port": lone_port}},
        "buildings": {"A": {"floors": ["1"]}},
        "rooms": {"A-101": {"building": "A", "floor": "1"}},
        "devices": {
            "W-A-101": {
                "model": "cjt188.cold_water_dn20",
                "link": "water",
                "address": "00000000000101",
                "room": "A-101",
                "options": {"sim_volume_m3": 42.5},
            },
            "W-dead": {
                "model": "cjt188.cold_water_dn20",
                "link": "water",
                "address": "00000000000102",
                "room": "A-101",
            },
            "W-lone": {
                "model": "cjt188.cold_water_dn25",
                "link": "lone",
                "address": "20261203000042",
                "building": "A",
            },
        },
    }
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(site))
    sim = subprocess.Popen(
        [*CLI, "simulate", str(path), "--silent", "W-dead"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                for p in (port, lone_port):
                    socket.create_connection(("127.0.0.1", p), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and sim.poll() is None, "simulator did not start"
                time.sleep(0.05)
        result = subprocess.run(
            [*CLI, "read", str(path), "W-A-101", "W-dead"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode != 0  # the silent meter fails the read
        assert "42.5" in result.stdout and "m³" in result.stdout, result.stdout
        assert "W-dead" in result.stdout + result.stderr
        lone = subprocess.run(
            [*CLI, "cjt188", "address", str(path), "--link", "lone"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        )
        assert lone.returncode == 0 and lone.stdout.strip() == "20261203000042", lone.stderr
        wrong = subprocess.run(
            [*CLI, "cjt188", "address", str(path), "--link", "nope"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            check=False,
        )
        assert wrong.returncode != 0 and "cjt188 links: water, lone" in wrong.stderr
    finally:
        sim.terminate()
        sim.wait(10)
