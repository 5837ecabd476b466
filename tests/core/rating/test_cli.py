"""`openprepay tariff list|show|check|rate` on a site file."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from openprepay.core.cli import CliContext, OpenPrepayGroup
from openprepay.core.cli import tariff as tariff_cli

from .conftest import CATALOGUE_TOML

SITE_HEAD = """
[site]
id = "t"
timezone = "Asia/Shanghai"
[links.gw]
type = "modbus_tcp"
host = "127.0.0.1"
port = 15999
"""


@pytest.fixture(scope="module")
def cli():
    """The tariff commands under the product's group class (error handling, exit codes),
    without loading plugins: these commands need none."""
    group = OpenPrepayGroup("openprepay")
    tariff_cli.register(group)
    return group, CliContext()


def run(cli, *args: str):
    group, obj = cli
    return CliRunner().invoke(group, list(args), obj=obj, catch_exceptions=False)


@pytest.fixture
def site(tmp_path: Path) -> str:
    path = tmp_path / "site.toml"
    path.write_text(SITE_HEAD + CATALOGUE_TOML, encoding="utf-8")
    return str(path)


def test_list(cli, site):
    result = run(cli, "tariff", "list", site)
    assert result.exit_code == 0
    assert "residential" in result.output and "M1 additive" in result.output
    assert "water" in result.output and "[2 versions]" in result.output


def test_show_prints_the_day_as_a_24h_strip(cli, site):
    result = run(cli, "tariff", "show", site, "residential")
    assert result.exit_code == 0, result.output
    assert "|VVVVVVVVVVVVVVFFPPPPSSSFFFFFFFFFFFFFFPPPPPPPPPVV|" in result.output
    assert "10:00–11:30  sharp" in result.output
    assert "tier 2: 2880–4800 kWh" in result.output
    result = run(cli, "tariff", "show", site, "flat")
    assert "== from 2025-07-01: single rate" in result.output


def test_check_ok_and_errors_name_the_entry(cli, site, tmp_path):
    assert run(cli, "tariff", "check", site).exit_code == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(
        SITE_HEAD
        + """
[tariffs.residential]
rates = { peak = "0.6", valley = "0.3", flat = "0.5" }
periods = [
  { start = "00:00", end = "08:00", rate = "valley" },
  { start = "08:00", end = "11:30", rate = "peak" },
  { start = "11:00", end = "24:00", rate = "flat" },
]
[prepay.thresholds]
alarm1 = "5.00"
alarm2 = "10.00"
""",
        encoding="utf-8",
    )
    result = CliRunner().invoke(cli[0], ["tariff", "check", str(bad)], obj=cli[1])
    assert result.exit_code == 2
    assert "tariffs.residential.periods[2]: overlaps periods[1] (08:00–11:30)" in result.output
    assert "prepay.thresholds.alarm1: alarm1 (5.00) must be at least alarm2 (10.00)" in (
        result.output
    )


def test_rate_prints_the_worked_example(cli, site):
    result = run(
        cli,
        "tariff",
        "rate",
        site,
        "residential",
        "--kwh",
        "sharp=10,peak=50,flat=40,valley=50",
        "--before",
        "2800",
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("tier 2 surcharge" in ln and "3.50" in ln for ln in lines)
    assert any(ln.strip().startswith("total") and "70.70 CNY" in ln for ln in lines)
    water = run(cli, "tariff", "rate", site, "water", "--m3", "30")
    assert "130.50 CNY" in water.output


def test_rate_rejects_an_unknown_rate(cli, site):
    result = CliRunner().invoke(
        cli[0], ["tariff", "rate", site, "shanghai", "--kwh", "sharp=3"], obj=cli[1]
    )
    assert result.exit_code == 2
    assert "no rate 'sharp'" in result.output
