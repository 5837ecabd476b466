"""Fee control driving real commands on simulated meters: a REMOTE room runs out and is
tripped (read back on the simulator), a top-up closes it again; protected supply, quiet
hours and property-fee debt never trip."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.db import schema as t
from openprepay.core.events import AlarmLevelChanged, AuditRecord, SupplyChanged
from openprepay.core.prepay import commands as cmds
from openprepay.core.prepay.feecontrol import FeeState
from tests.conftest import until

from .conftest import ANYTIME_POLICY, site_data


class Recorder:
    def __init__(self, bus: Any) -> None:
        self.items: list[object] = []
        bus.subscribe(object, self.items.append)

    def of(self, kind: type) -> list:
        return [i for i in self.items if isinstance(i, kind)]


def commands_of(run: Any, meter: str) -> list[cmds.MeterCommand]:
    with run.db.read() as conn:
        return list(reversed(cmds.list_commands(conn, meter_id=meter)))


async def test_remote_room_runs_out_is_tripped_and_a_topup_closes_it(running) -> None:
    # 1 kW at 3600× speed: 0.50 CNY of electricity per real second.
    run = await running(speedup=3600)
    seen = Recorder(run.runtime.bus)
    run.open_account("A-101", ("E-101",), balance_fen=150)
    meter = run.sim("E-101")

    await until(lambda: any(s.on is False for s in seen.of(SupplyChanged)))
    trip = next(c for c in commands_of(run, "E-101") if c.kind == "TRIP")
    assert trip.requested_by == "fee-control"
    assert "trip level" in trip.reason
    # Read back on the simulator: the relay is open and the load is cut.
    await until(lambda: meter.snapshot()["supply_on"] == 0)
    assert meter.snapshot()["power_active"] == 0
    snap = run.ops.account_snapshot("A-101")
    assert snap.fee_state is FeeState.OVERDRAFT
    assert snap.balance_fen <= 0
    assert snap.meters[0].supply_on is False
    assert not snap.supply_on
    levels = [e.level for e in seen.of(AlarmLevelChanged) if e.account_id == "A-101"]
    assert levels[-1] == "OVERDRAFT"

    result = run.ops.topup("A-101", 5000, "pay-1", actor="cashier:1")
    assert result.balance_fen > 0
    await until(lambda: any(s.on is True for s in seen.of(SupplyChanged)))
    close = next(c for c in commands_of(run, "E-101") if c.kind == "CLOSE")
    await until(lambda: run.ops.command(close.id).state == "CONFIRMED")
    assert meter.snapshot()["supply_on"] == 1
    changed = [s for s in seen.of(SupplyChanged) if s.on]
    assert changed[0].actor == "fee-control" and "allows closing" in changed[0].reason
    assert run.ops.account_snapshot("A-101").fee_state is FeeState.NORMAL
    audits = [a for a in seen.of(AuditRecord) if a.action == "topup"]
    assert audits and audits[-1].actor == "cashier:1" and audits[-1].ok
    with run.db.read() as conn:
        assert ledger.verify(conn).ok


async def test_water_valve_closes_when_the_account_runs_out(running) -> None:
    run = await running(speedup=3600)
    seen = Recorder(run.runtime.bus)
    # 0.02 m³/h base demand ≈ 20 l/h at 3600×: a few fen per second at 3.00 CNY/m³.
    run.open_account("A-101", ("W-101",), balance_fen=1)
    await until(lambda: any(s.meter_id == "W-101" and not s.on for s in seen.of(SupplyChanged)))
    assert next(c.kind for c in commands_of(run, "W-101")) == "VALVE_CLOSE"
    await until(lambda: run.sim("W-101").snapshot()["valve_closed"])


async def test_protected_account_is_never_tripped(running) -> None:
    run = await running(speedup=3600)
    run.open_account("A-101", ("E-101",), balance_fen=50, protected=True)
    await until(lambda: run.ops.account_snapshot("A-101").fee_state is FeeState.OVERDRAFT)
    # Deductions keep arriving in OVERDRAFT; each is evaluated and denied.
    balance = run.ops.account_snapshot("A-101").balance_fen
    await until(lambda: run.ops.account_snapshot("A-101").balance_fen < balance - 100)
    assert commands_of(run, "E-101") == []
    assert run.sim("E-101").snapshot()["supply_on"] == 1
    with run.db.read() as conn:
        reason = conn.execute(
            sa.select(t.prepay_meter.c.gate_reason).where(t.prepay_meter.c.meter_id == "E-101")
        ).scalar()
    assert "protected supply" in reason


async def test_quiet_hours_defer_the_trip(running) -> None:
    # The whole day is quiet: a trip is deferred to the next allowed instant, never sent.
    policy = dict(ANYTIME_POLICY, quiet_start="00:01", quiet_end="00:00")
    run = await running(speedup=3600, prepay=dict(site_data()["prepay"], policy=policy))
    run.open_account("A-101", ("E-101",), balance_fen=50)
    await until(lambda: run.ops.account_snapshot("A-101").meters[0].trip_due_at is not None)
    snap = run.ops.account_snapshot("A-101")
    assert snap.fee_state is FeeState.OVERDRAFT
    assert snap.meters[0].trip_due_at > snap.at
    assert commands_of(run, "E-101") == []
    with run.db.read() as conn:
        reason = conn.execute(
            sa.select(t.prepay_meter.c.gate_reason).where(t.prepay_meter.c.meter_id == "E-101")
        ).scalar()
    assert "quiet hours" in reason
    # A top-up drops the deferred trip.
    run.ops.topup("A-101", 5000, "pay-q", actor="cashier:1")
    assert run.ops.account_snapshot("A-101").meters[0].trip_due_at is None


async def test_property_fee_debt_never_trips(running) -> None:
    run = await running(speedup=0)
    run.open_account("A-101", ("E-101",), balance_fen=10000)
    # Rent / property fee charged to the general wallet, which goes deep into debt.
    with run.db.begin() as conn:
        ledger.post_journal(
            conn,
            ledger.JournalKind.CHARGE,
            [
                ledger.Posting(ledger.wallet_code("A-101", "general"), 500000),
                ledger.Posting("rev:property", -500000),
            ],
            idempotency_key="property:A-101:2025-01",
            account_id="A-101",
            memo="property fee",
            requested_by="billing",
            request={"account": "A-101"},
        )
    # Anything that re-evaluates fee control: a threshold change, a refund of energy money.
    run.ops.set_thresholds("A-101", alarm1_fen=3000, alarm2_fen=1000, actor="op")
    run.ops.refund("A-101", 100, "rf-1", actor="op")
    snap = run.ops.account_snapshot("A-101")
    assert snap.general_fen == -500000
    assert snap.fee_state is FeeState.NORMAL
    assert commands_of(run, "E-101") == []
