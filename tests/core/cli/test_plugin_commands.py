"""The command group is one per process: a first caller with some plugins switched off
(as several test packages do) must not hide those plugins' commands from later callers."""

from __future__ import annotations

from openprepay.core.app.plugins import Plugins
from openprepay.core.cli import build_cli


def test_commands_of_plugins_seen_later_are_added():
    everything = Plugins.load()
    assert "opcua" in everything.infos and "historian" in everything.infos
    without = Plugins.load()
    for name in ("opcua", "historian"):
        without.manager.unregister(name=name)
        del without.infos[name]
    build_cli(without)
    group = build_cli(everything)
    assert {"opcua", "historian"} <= set(group.commands)
    assert group.commands["topup"] is build_cli(everything).commands["topup"]  # added once
