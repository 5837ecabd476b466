"""Plugins load through entry points like any third-party package; a broken one is
reported by name and skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from openprepay.core.app.plugins import Plugins

ROOT = Path(__file__).parents[3]

WORKING = """
from openprepay.core.hookspecs import hookimpl
from openprepay.core.model import DeviceModel, MeterKind, PointSpec

@hookimpl
def openprepay_device_models():
    return [DeviceModel("thirdparty.M1", "ThirdParty", "M1", MeterKind.WATER, "a meter",
                        (PointSpec("volume", "m3", "volume"),))]
"""

DUPLICATE = """
from openprepay.core.hookspecs import hookimpl
from openprepay.core.model import DeviceModel, MeterKind

@hookimpl
def openprepay_device_models():
    return [DeviceModel("acrel.DDSY1352", "Fake", "Fake", MeterKind.ELECTRIC, "clash", ())]
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake installed distribution with a broken, a working and a clashing plugin."""
    dist = tmp_path / "vendor_plugins-1.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vendor-plugins\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text(
        "[openprepay.plugins]\n"
        "vendor_broken = vendor_broken_mod\n"
        "vendor_ok = vendor_ok_mod\n"
        "vendor_clash = vendor_clash_mod\n"
    )
    (tmp_path / "vendor_broken_mod.py").write_text(
        "raise ImportError('vendor SDK libfoo.so not found')\n"
    )
    (tmp_path / "vendor_ok_mod.py").write_text(WORKING)
    (tmp_path / "vendor_clash_mod.py").write_text(DUPLICATE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_builtin_plugins_register_through_entry_points() -> None:
    plugins = Plugins.load()
    assert {"modbus", "meter_acrel"} <= set(plugins.infos)
    assert plugins.infos["meter_acrel"].distribution == "openprepay"
    assert plugins.models["acrel.DDSY1352"].plugin == "meter_acrel"


def test_broken_plugin_is_reported_by_name_and_skipped(third_party: Path) -> None:
    plugins = Plugins.load()
    failures = {f.name: f for f in plugins.failures}
    assert "vendor_broken" in failures
    assert failures["vendor_broken"].distribution == "vendor-plugins"
    assert "ImportError: vendor SDK libfoo.so not found" in failures["vendor_broken"].error
    # The rest still loads: built-ins and the working third-party plugin.
    assert plugins.models["thirdparty.M1"].plugin == "vendor_ok"
    assert plugins.infos["vendor_ok"].version == "1.2"
    assert "acrel.DDSY1352" in plugins.models


def test_a_model_name_clash_keeps_the_first_provider(third_party: Path) -> None:
    plugins = Plugins.load()
    assert plugins.models["acrel.DDSY1352"].plugin == "meter_acrel"
    clash = [f for f in plugins.failures if f.name == "vendor_clash"]
    assert clash and "already provided by plugin meter_acrel" in clash[0].error


def test_plugins_can_be_disabled_by_name(
    third_party: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENPREPAY_DISABLE_PLUGINS", "vendor_broken, vendor_clash")
    plugins = Plugins.load()
    assert not [f for f in plugins.failures if f.name.startswith("vendor_")]
    assert "vendor_broken" not in plugins.infos


def test_cli_lists_plugins_and_the_broken_one(third_party: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(third_party)}
    result = subprocess.run(
        [sys.executable, "-m", "openprepay.core.cli", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "acrel.DDSY1352" in result.stdout
    assert "thirdparty.M1" in result.stdout
    assert "vendor_broken  FAILED: import of vendor_broken_mod failed" in result.stderr
