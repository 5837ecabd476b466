"""`pip install .` (not only an editable install) ships every module and data file."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
TOP = {
    "core": "openprepay.core",
    "plugins": "openprepay.plugins",
    "historian": "openprepay.historian",
    "opcua_server": "openprepay.opcua_server",
}


def repo_files() -> set[str]:
    """Files a wheel must contain, as installed paths (openprepay/core/model.py ...)."""
    wanted = set()
    for folder in TOP:
        for path in (ROOT / folder).rglob("*"):
            if "__pycache__" in path.parts or not path.is_file():
                continue
            if path.suffix in (".py", ".toml", ".mako") or path.name == "README.md":
                wanted.add("openprepay/" + path.relative_to(ROOT).as_posix())
    return wanted


def test_every_package_directory_is_declared() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    declared = {p.strip() for p in config["options"]["packages"].split() if p.strip()}
    found = set()
    for folder, name in TOP.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *relative)))
    assert found <= declared, f"add to setup.cfg packages: {sorted(found - declared)}"


@pytest.mark.slow
def test_wheel_contains_every_module_and_data_file(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)]
    built = subprocess.run(argv, check=False, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = zipfile.ZipFile(next(tmp_path.glob("openprepay-*.whl")))
    names = set(wheel.namelist())
    missing = sorted(repo_files() - names)
    assert not missing, f"missing from the wheel: {missing[:20]}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = wheel.read(entry_points).decode()
    assert "[openprepay.plugins]" in text and "meter_acrel" in text
