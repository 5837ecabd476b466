"""Fixtures for the prepayment engine: a real site file, a real database, simulated meters
behind a real gateway socket, and the whole runtime (arbiter, engine, executor) on it.

`engine_site(tmp_path, ...)` writes a site file whose links point at a running
`SimulatedSite`; `running(...)` starts the `Runtime` on it. The [prepay] policy allows
trips at any hour with no notice (unless a test asks otherwise), so a room that runs out
is cut at once.
"""

from __future__ import annotations

import copy
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from openprepay.core.app.demo import anytime_policy
from openprepay.core.app.plugins import DISABLE_ENV, Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import ControlMode, load_site
from openprepay.core.model import MeterKind
from openprepay.core.prepay import accounts as acc
from tests.conftest import simulate

#: Trips at any hour, any day, without notice or friendly credit: the engine's behaviour
#: is then decided by the balance alone (tests that need the policy set their own).
ANYTIME_POLICY: dict[str, Any] = anytime_policy()

BASE: dict[str, Any] = {
    "site": {"id": "t", "timezone": "Asia/Shanghai"},
    "poll": {"interval_s": 0.2, "stats_interval_s": 60},
    "links": {"gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 1, "timeout_ms": 300}},
    "buildings": {"A": {"floors": ["1"]}},
    "rooms": {
        "A-101": {"building": "A", "floor": "1"},
        "A-102": {"building": "A", "floor": "1"},
    },
    "devices": {
        "E-101": {
            "model": "acrel.DDSY1352",
            "link": "gw",
            "unit_id": 1,
            "room": "A-101",
            "control_mode": "REMOTE",
            "options": {"sim_load_kw": 1.0},
        },
        "W-101": {
            "model": "xintai.valve_meter",
            "link": "gw",
            "unit_id": 2,
            "room": "A-101",
            "control_mode": "REMOTE",
            "options": {"sim_flow_m3h": 0.02, "sim_valve_travel_s": 0.1},
        },
        "E-102": {
            "model": "acrel.DDSY1352",
            "link": "gw",
            "unit_id": 3,
            "room": "A-102",
            "control_mode": "LOCAL",
            "options": {"sim_load_kw": 0.5, "sim_buy_count": 0, "sim_remaining": 0.0},
        },
    },
    "tariffs": {
        "flat": {"price": "0.5000"},
        "water": {"commodity": "water", "price": "3.00"},
    },
    "prepay": {
        "policy": ANYTIME_POLICY,
        "engine": {
            "default_tariffs": {"electric": "flat", "water": "water"},
            "post_interval_s": 0.2,
            "queue_poll_s": 0.1,
            "retry_initial_s": 0.2,
            "retry_max_s": 1.0,
            "command_lease_s": 5,
            "deferral_poll_s": 0.2,
            "instance": "test-engine",
        },
    },
}


def site_data(**changes: Any) -> dict[str, Any]:
    """The base site with top-level sections replaced or merged (dicts merge one level)."""
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            merged = dict(data[key])
            merged.update(value)
            data[key] = merged
        else:
            data[key] = value
    return data


#: The engine's tests run the core with the device and notify plugins only: the OPC UA
#: server and the historian are tested on their own (and would only slow these down).
OTHER_SERVICES = "opcua,historian"


@pytest.fixture(scope="package", autouse=True)
def _without_other_services() -> Iterator[None]:
    """Subprocesses started by these tests (the service, the CLI) skip them too. Package
    scope: the variable is restored before other test folders run."""
    before = os.environ.get(DISABLE_ENV)
    os.environ[DISABLE_ENV] = OTHER_SERVICES
    yield
    if before is None:
        os.environ.pop(DISABLE_ENV, None)
    else:
        os.environ[DISABLE_ENV] = before


@pytest.fixture(scope="package")
def plugins(_without_other_services: None) -> Plugins:
    loaded = Plugins.load()
    assert not loaded.failures, loaded.failures
    return loaded


@dataclass
class Running:
    runtime: Runtime
    sims: SimulatedSite
    site_file: Path

    @property
    def ops(self) -> Any:
        assert self.runtime.operations is not None
        return self.runtime.operations

    @property
    def db(self) -> Any:
        assert self.runtime.db is not None
        return self.runtime.db

    def sim(self, meter: str) -> Any:
        return self.sims.devices[meter]

    def open_account(
        self,
        account_id: str,
        meters: tuple[str, ...],
        *,
        balance_fen: int = 0,
        **spec: Any,
    ) -> acc.Account:
        site = self.runtime.site
        models = self.runtime.plugins.models
        assigned = tuple(acc.resolve_meter(site, models, m) for m in meters)
        with self.db.begin() as conn:
            account = acc.create_account(
                conn, acc.AccountSpec(account_id, f"tenant {account_id}", assigned, **spec)
            )
            for m in assigned:
                if m.control_mode is ControlMode.LOCAL:
                    from openprepay.core.prepay.purchase_count import set_meter_buy_count

                    set_meter_buy_count(conn, m.meter_id, int(self.sim(m.meter_id).buy_count))
        if balance_fen:
            self.ops.topup(account_id, balance_fen, f"open-{account_id}", actor="test")
        return account


StartRunning = Callable[..., Awaitable[Running]]


@pytest.fixture
async def running(plugins: Plugins, tmp_path: Path) -> AsyncIterator[StartRunning]:
    """`await running(speedup=..., **site_changes)` → the runtime on simulated meters."""
    started: list[Running] = []

    async def start(
        *, speedup: float = 0.0, data: dict[str, Any] | None = None, **changes: Any
    ) -> Running:
        site_dict = data or site_data(**changes)
        sims = await simulate(site_dict, plugins, speedup=speedup)
        site_file = tmp_path / f"site{len(started)}.toml"
        site_file.write_text(tomli_w.dumps(site_dict))
        runtime = Runtime(load_site(site_file), plugins)
        one = Running(runtime, sims, site_file)
        started.append(one)
        await runtime.start()
        return one

    yield start
    for one in reversed(started):
        await one.runtime.stop()
        await one.sims.stop()


def kinds() -> dict[str, MeterKind]:
    return {"E-101": MeterKind.ELECTRIC, "W-101": MeterKind.WATER, "E-102": MeterKind.ELECTRIC}
