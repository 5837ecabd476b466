"""REMOTE prepayment on DL/T 645 meters: the fee control's trip travels as a 1C remote
control frame to the simulated meter, is confirmed by status word 3, and a top-up closes
the relay again — exactly as on the Modbus meters."""

from __future__ import annotations

import copy
from typing import Any

from openprepay.core.events import SupplyChanged
from openprepay.core.prepay import commands as cmds
from openprepay.core.prepay.feecontrol import FeeState
from openprepay.plugins.dlt645.codec import RemoteAction
from tests.conftest import until

from .conftest import BASE


def dlt645_site() -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["links"] = {
        "bus645": {
            "type": "serial",
            "device": "socket://127.0.0.1:1",
            "protocol": "dlt645",
            "timeout_ms": 300,
        }
    }
    data["devices"] = {
        "D-101": {
            "model": "dlt645.single_phase",
            "link": "bus645",
            "address": "000000000101",
            "room": "A-101",
            "control_mode": "REMOTE",
            "options": {"sim_load_kw": 1.0, "password": "02000000"},
        },
        "D-102": {
            "model": "dlt645.single_phase",
            "link": "bus645",
            "address": "000000000102",
            "room": "A-102",
            "control_mode": "REMOTE",
            "options": {"sim_load_kw": 0.5},
        },
    }
    return data


def commands_of(run: Any, meter: str) -> list[cmds.MeterCommand]:
    with run.db.read() as conn:
        return list(reversed(cmds.list_commands(conn, meter_id=meter)))


async def test_fee_control_trips_a_dlt645_meter_and_a_topup_closes_it(running) -> None:
    run = await running(speedup=3600, data=dlt645_site())
    seen: list[SupplyChanged] = []
    run.runtime.bus.subscribe(SupplyChanged, seen.append)
    run.open_account("A-101", ("D-101",), balance_fen=150)
    run.open_account("A-102", ("D-102",), balance_fen=500_000)
    meter = run.sim("D-101")

    await until(lambda: any(s.meter_id == "D-101" and s.on is False for s in seen))
    trip = next(c for c in commands_of(run, "D-101") if c.kind == "TRIP")
    assert trip.requested_by == "fee-control"
    await until(lambda: run.ops.command(trip.id).state == "CONFIRMED")
    # The 1C frame reached the meter: its relay is open and the load is cut.
    assert RemoteAction.TRIP in meter.actions
    assert not meter.relay_closed and meter.snapshot()["power_active"] == 0
    assert run.ops.account_snapshot("A-101").fee_state is FeeState.OVERDRAFT

    run.ops.topup("A-101", 5000, "pay-645", actor="cashier:1")
    await until(lambda: any(s.meter_id == "D-101" and s.on is True for s in seen))
    close = next(c for c in commands_of(run, "D-101") if c.kind == "CLOSE")
    await until(lambda: run.ops.command(close.id).state == "CONFIRMED")
    assert meter.relay_closed and meter.actions[-1] is RemoteAction.CLOSE
    # The neighbour with money was never touched.
    assert run.sim("D-102").actions == []
    assert run.ops.account_snapshot("A-102").fee_state is FeeState.NORMAL
