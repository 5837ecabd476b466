"""The site benchmarks/topup_latency.py and benchmarks/payments.py share: one simulated
RS-485 gateway (RTU over TCP, 9600-baud serial timing) hosting METERS polled prepaid meters
on a flat tariff, and the service's runtime on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomli_w

from openprepay.core.app.demo import anytime_policy
from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import load_site
from openprepay.core.contracts import SimulatorOptions

METERS = 41
# The rounds trip one meter again and again: no rate limit in the way.
POLICY = {**anytime_policy(), "max_trips_per_minute": 1000}
#: The gateway answers with serial timing, at once otherwise; on a port of its own; with
#: the lean Modbus server `openprepay simulate` runs (little of the box goes to the meters).
GATEWAY = SimulatorOptions(speedup=0, serial_timing=True, ephemeral_ports=True, lean_server=True)


def gateway_site_data() -> dict[str, Any]:
    """The site file's data: gateway `gw` (its port set by `gateway_runtime`), METERS
    meters E1... in room A-1, drawing 0.5 kW each."""
    return {
        "site": {"id": "bench", "timezone": "Asia/Shanghai"},
        "poll": {"interval_s": 1.0, "stats_interval_s": 5},
        "links": {
            "gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 1, "timeout_ms": 500}
        },
        "buildings": {"A": {"floors": ["1"]}},
        "rooms": {"A-1": {"building": "A", "floor": "1"}},
        "devices": {
            f"E{i}": {
                "model": "acrel.DDSY1352",
                "link": "gw",
                "unit_id": i,
                "room": "A-1",
                "options": {"sim_load_kw": 0.5},
            }
            for i in range(1, METERS + 1)
        },
        "tariffs": {"flat": {"price": "0.5000"}},
        "prepay": {
            "policy": POLICY,
            "engine": {"default_tariffs": {"electric": "flat"}, "instance": "bench"},
        },
    }


def gateway_runtime(
    data: dict[str, Any], sims: SimulatedSite, folder: Path, plugins: Plugins
) -> Runtime:
    """The service's runtime on `data` with link `gw` pointed at the simulated gateway,
    loaded from `folder`/site.toml as `openprepay run` would."""
    host, port = sims.addresses["gw"]
    data["links"]["gw"]["host"], data["links"]["gw"]["port"] = host, port
    site_file = folder / "site.toml"
    site_file.write_text(tomli_w.dumps(data))
    return Runtime(load_site(site_file), plugins)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
