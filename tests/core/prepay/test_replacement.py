"""Meter replacement through the public interfaces (issue 9 §6), end to end on SQLite and
PostgreSQL, with the service running against simulated meters over Modbus:

the old device is billed up to its final reading (including what it measured after its
last poll), the new one from its initial reading — to the fen, nothing lost, nothing
invented; a LOCAL meter's purchase count restarts with the new device and the next top-up
is delivered to it; the swap is audited.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner

from openprepay.core import ledger
from openprepay.core.db import schema as t
from openprepay.core.ledger import RequestError
from tests.conftest import until

POINTS = ("energy_total", "energy_sharp", "energy_peak", "energy_flat", "energy_valley")


def use(sim: Any, kwh: float) -> None:
    """The meter measures `kwh` more at the flat rate (simulated time stands still)."""
    sim.energy[3] += kwh
    sim._refresh_measurements()


def registers(sim: Any) -> str:
    """The meter's registers as its display shows them: total=…,T1=…,…,T4=…"""
    values = [sim.values[p] for p in POINTS]
    names = ("total", "T1", "T2", "T3", "T4")
    return ",".join(f"{n}={v:.2f}" for n, v in zip(names, values, strict=True))


def balance(run: Any, account: str) -> int:
    return run.ops.account_snapshot(account).balance_fen


def cli_run(cli: Any, run: Any, *args: str, ok: bool = True) -> str:
    group, obj = cli
    argv = [str(run.site_file) if a == "SITE" else a for a in args]
    result = CliRunner().invoke(group, argv, obj=obj, catch_exceptions=False)
    assert (result.exit_code == 0) is ok, result.output
    return result.output


async def test_usage_before_and_after_a_swap_is_billed_exactly(db_url, running, cli) -> None:
    # flat tariff 0.50 CNY/kWh on the total register. The test adds kWh by hand within
    # seconds: meter time runs an hour a second, so the plausibility bound lets them pass.
    run = await running(speedup=0, database={"url": db_url}, poll={"time_scale": 3600})
    old = run.sim("E-101")
    run.open_account("A-101", ("E-101",), balance_fen=10000)
    await until(lambda: run.ops.account_snapshot("A-101").meters[0].supply_on is not None)
    use(old, 2.0)
    await until(lambda: balance(run, "A-101") == 9900)  # 2 kWh = 1.00

    # The swap: the old device measured 1 kWh more after its last poll; the new one comes
    # with its registers at zero and measures 0.5 kWh before the swap is recorded.
    old.silent = True
    use(old, 1.0)
    final = registers(old)
    for rate in old.energy:
        old.energy[rate] = 0.0
    use(old, 0.5)  # the same simulator now plays the new device
    old.silent = False
    out = cli_run(
        cli,
        run,
        "meter",
        "replace",
        "SITE",
        "E-101",
        "--final-reading",
        final,
        "--new-serial",
        "DDSY-2025-0042",
        "--initial-reading",
        "0",
        "--reason",
        "display broken",
    )
    assert "replacement 1: meter E-101 replaced" in out and "DDSY-2025-0042 initial" in out
    # 1 kWh of the old device's tail + 0.5 kWh of the new one = 0.75
    await until(lambda: balance(run, "A-101") == 9825)
    use(old, 3.0)
    await until(lambda: balance(run, "A-101") == 9675)  # 3 kWh = 1.50
    snap = run.ops.account_snapshot("A-101")
    assert snap.meters[0].today == 6.5  # kWh: 2 + 1 + 0.5 + 3, none lost or invented
    with run.db.read() as conn:
        (audit,) = conn.execute(
            sa.select(t.audit_log).where(t.audit_log.c.action == "replace")
        ).all()
        assert ledger.verify(conn).ok
    assert audit.target == "E-101" and audit.ok and "display broken" in audit.detail
    assert "final energy_total=" in audit.detail and "DDSY-2025-0042 initial" in audit.detail


async def test_a_replaced_local_meter_restarts_its_purchase_count(db_url, running) -> None:
    run = await running(speedup=0, database={"url": db_url})
    meter = run.sim("E-102")
    run.open_account("A-102", ("E-102",))
    first = run.ops.topup("A-102", 3000, "pay-1", actor="cashier:1")
    second = run.ops.topup("A-102", 2000, "pay-2", actor="cashier:1")
    await until(lambda: run.ops.command(second.command_id).state == "CONFIRMED", 30)
    assert run.ops.command(first.command_id).params["meter_count"] == 1
    assert meter.buy_count == 2

    # The new device: no purchases, nothing in it; the platform's counter goes on (its
    # purchase counts stay unique), the meter's numbering restarts.
    meter.buy_count, meter.remaining = 0, 0.0
    meter._refresh_prepaid()
    with_values = {p: str(meter.values[p]) for p in POINTS}
    done = run.ops.replace_meter(
        "E-102",
        final_reading=with_values,
        new_serial="DDSY-NEW-1",
        initial_reading=with_values,
        reason="meter replaced",
        actor="op:1",
    )
    assert done.account_id == "A-102"
    third = run.ops.topup("A-102", 1000, "pay-3", actor="cashier:1")
    await until(lambda: run.ops.command(third.command_id).state == "CONFIRMED", 30)
    assert third.buy_count == 3  # the platform's count, unique per meter
    assert run.ops.command(third.command_id).params["meter_count"] == 1
    assert meter.buy_count == 1 and abs(meter.remaining - 10.0) < 1e-9
    assert run.ops.account_snapshot("A-102").meters[0].meter_buy_count == 1
    with run.db.read() as conn:
        assert ledger.verify(conn).ok


async def test_bad_replacements_are_refused_with_the_field(running) -> None:
    run = await running(speedup=0)
    cases = [
        ({"final_reading": "12.5"}, "final_reading", "rated on 5 registers"),
        ({"final_reading": "total=1,T1=1"}, "final_reading", "missing register(s) T2, T3, T4"),
        ({"initial_reading": "total=1,T9=2"}, "initial_reading", "unknown register 'T9'"),
        ({"initial_reading": "-1"}, "initial_reading", "expected a register value >= 0"),
        ({"new_serial": "bad serial!"}, "new_serial", "serial number"),
        ({"reason": " "}, "reason", "required"),
    ]
    for change, field, message in cases:
        args = dict(
            final_reading="0", new_serial="S-1", initial_reading="0", reason="swap", actor="op"
        )
        args.update(change)
        try:
            run.ops.replace_meter("E-101", **args)
        except RequestError as exc:
            assert exc.field == field and message in exc.message, (change, exc)
        else:
            raise AssertionError(f"{change} was accepted")
    with run.db.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM meter_replacement").scalar() == 0
