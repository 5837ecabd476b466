"""Prepayment treats a CJ/T 188 water meter like a Modbus one: REMOTE control closes its
valve when the account runs out and opens it after a top-up, each confirmed by reading ST
back from the simulated meter on a simulated 2400-baud bus."""

from __future__ import annotations

from typing import Any

from openprepay.core.events import SupplyChanged
from openprepay.core.prepay import commands as cmds
from tests.conftest import until

from .conftest import site_data


def cjt188_site() -> dict[str, Any]:
    data = site_data()
    data["links"] = {
        "water": {
            "type": "rtu_over_tcp",
            "host": "127.0.0.1",
            "port": 1,
            "protocol": "cjt188",
            "timeout_ms": 500,
        }
    }
    data["devices"] = {
        "W-101": {
            "model": "cjt188.cold_water_dn15",
            "link": "water",
            "address": "00000000000101",
            "room": "A-101",
            "control_mode": "REMOTE",
            "options": {"sim_flow_m3h": 0.02, "sim_valve_travel_s": 0.1},
        }
    }
    return data


def commands_of(run: Any, meter: str) -> list[cmds.MeterCommand]:
    with run.db.read() as conn:
        return list(reversed(cmds.list_commands(conn, meter_id=meter)))


def state_of(run: Any, kind: str) -> str | None:
    found = [c for c in commands_of(run, "W-101") if c.kind == kind]
    return run.ops.command(found[-1].id).state if found else None


async def test_a_prepay_disconnect_closes_the_valve_and_a_topup_opens_it(running) -> None:
    run = await running(speedup=3600, data=cjt188_site())
    changes: list[SupplyChanged] = []
    run.runtime.bus.subscribe(SupplyChanged, changes.append)
    meter = run.sim("W-101")
    # 0.02 m³/h base demand at 3600×: a few fen per second at 3.00 CNY/m³.
    run.open_account("A-101", ("W-101",), balance_fen=1)

    await until(lambda: state_of(run, "VALVE_CLOSE") == "CONFIRMED", 60)
    assert meter.snapshot()["valve_closed"] == 1
    assert meter.valve_commands[0] == "close"
    assert any(c.meter_id == "W-101" and not c.on for c in changes)

    run.ops.topup("A-101", 5000, "pay-1", actor="cashier:1")
    await until(lambda: state_of(run, "VALVE_OPEN") == "CONFIRMED", 60)
    assert meter.snapshot()["valve_open"] == 1
    assert meter.valve_commands[-1] == "open"
    assert any(c.meter_id == "W-101" and c.on for c in changes)
