"""LOCAL fee control: a top-up is delivered to the meter as RECHARGE with the purchase count
allocated in the top-up's transaction; when the meter's reply is lost the executor retries
with the same count, and the meter applies the money exactly once. Reconciliation raises
an alert when the meter and the platform disagree."""

from __future__ import annotations

import asyncio
from typing import Any

from openprepay.core.events import ReconciliationBreak
from openprepay.core.prepay import commands as cmds
from tests.conftest import until

from .conftest import site_data


def lose_replies_after_recharge(sim: Any, silent_s: float) -> list[int]:
    """Make the simulated meter apply a RECHARGE but drop its reply (and stay silent for a
    while), as when the RS-485 answer is lost: the platform cannot know it was applied."""
    original = sim.on_write
    applied: list[int] = []

    def on_write(function: int, address: int, words: list[int]) -> Any:
        before = sim.buy_count
        result = original(function, address, words)
        if address == 0x004E and sim.buy_count != before:
            applied.append(sim.buy_count)
            if len(applied) == 1:  # only the first delivery loses its reply
                sim.silent = True
                asyncio.get_running_loop().call_later(silent_s, setattr, sim, "silent", False)
        return result

    sim.on_write = on_write
    return applied


async def test_local_topup_whose_reply_is_lost_is_applied_once(running) -> None:
    run = await running(speedup=0)
    meter = run.sim("E-102")
    applied = lose_replies_after_recharge(meter, silent_s=1.0)
    run.open_account("A-102", ("E-102",))
    result = run.ops.topup("A-102", 5000, "pay-local-1", actor="cashier:1")
    assert result.buy_count == 1 and result.command_id is not None

    await until(lambda: run.ops.command(result.command_id).state == "CONFIRMED", 30)
    command = run.ops.command(result.command_id)
    assert command.attempts >= 2  # the first attempt's reply was lost
    assert command.params["buy_count"] == 1  # retried with the same purchase count
    assert applied == [1]  # the meter took the money once
    assert meter.buy_count == 1
    assert abs(meter.remaining - 50.0) < 1e-9
    with run.db.read() as conn:
        (m,) = [x for x in cmds.list_commands(conn, meter_id="E-102")]
        snapshot = run.ops.account_snapshot("A-102")
    assert m.readback == {"buy_count": 1}
    assert snapshot.meters[0].confirmed_buy_count == 1

    # A second top-up carries the next count and is applied normally.
    second = run.ops.topup("A-102", 1000, "pay-local-2", actor="cashier:1")
    await until(lambda: run.ops.command(second.command_id).state == "CONFIRMED", 30)
    assert meter.buy_count == 2
    assert abs(meter.remaining - 60.0) < 1e-9


async def test_reconciliation_flags_a_meter_that_disagrees(running) -> None:
    engine = dict(site_data()["prepay"]["engine"], reconcile_every_s=0)
    run = await running(speedup=0, prepay=dict(site_data()["prepay"], engine=engine))
    seen: list[ReconciliationBreak] = []
    run.runtime.bus.subscribe(ReconciliationBreak, seen.append)
    meter = run.sim("E-102")
    run.open_account("A-102", ("E-102",))
    result = run.ops.topup("A-102", 5000, "pay-r1", actor="cashier:1")
    await until(lambda: run.ops.command(result.command_id).state == "CONFIRMED", 30)
    # Someone recharged the meter locally (a card) with money the platform never saw.
    meter.remaining += 30.0
    meter.buy_count += 1
    meter._refresh_prepaid()  # the registers show it (simulated time stands still here)
    await until(lambda: bool(seen), 30)
    event = seen[-1]
    assert event.meter_id == "E-102" and event.account_id == "A-102"
    assert event.meter_balance_fen == 8000 and event.platform_balance_fen == 5000
    assert event.meter_buy_count == 2 and event.platform_buy_count == 1
    assert "purchase count" in event.detail and "balance" in event.detail
