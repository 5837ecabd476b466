"""Supply follows the account, also after the meter forgets (issue 9 §3).

Real simulated meters over Modbus on loopback. A cut room whose meters come back with the
relay closed and the valve open (the service and the simulators restarted, as after a
power cycle or a reset) is cut again once the mismatch outlives the grace, with a
SupplyMismatch event, a count on the meter and the audit; a meter that refuses to trip is
re-asserted with a doubling back-off, never a command storm; a restore the meter forgot is
re-closed.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.db import schema as t
from openprepay.core.events import AuditRecord, SupplyChanged, SupplyMismatch
from openprepay.core.prepay import commands as cmds
from openprepay.core.prepay.feecontrol import FeeState
from tests.conftest import until

from .conftest import site_data

#: A short grace and back-off so that the tests see several re-assertions.
ENGINE = dict(site_data()["prepay"]["engine"], supply_grace_s=0.6, supply_backoff_max_s=30)
PREPAY = dict(site_data()["prepay"], engine=ENGINE)


class Recorder:
    def __init__(self, bus: Any) -> None:
        self.items: list[object] = []
        bus.subscribe(object, self.items.append)

    def of(self, kind: type) -> list:
        return [i for i in self.items if isinstance(i, kind)]


def commands_of(run: Any, meter: str) -> list[cmds.MeterCommand]:
    with run.db.read() as conn:
        return list(reversed(cmds.list_commands(conn, meter_id=meter)))


def meter_row(run: Any, meter: str) -> Any:
    with run.db.read() as conn:
        return conn.execute(
            sa.select(t.prepay_meter).where(t.prepay_meter.c.meter_id == meter)
        ).first()


async def stop(run: Any) -> None:
    await run.runtime.stop()
    await run.sims.stop()


async def test_a_cut_room_restarted_with_its_relay_closed_is_cut_again(running) -> None:
    run = await running(speedup=3600, prepay=PREPAY)
    run.open_account("A-101", ("E-101", "W-101"), balance_fen=150)
    await until(lambda: run.sim("E-101").snapshot()["supply_on"] == 0)
    await until(lambda: bool(run.sim("W-101").snapshot()["valve_closed"]))
    cuts = {c.meter_id: c for c in commands_of(run, "E-101") + commands_of(run, "W-101")}
    await until(lambda: all(run.ops.command(c.id).state == "CONFIRMED" for c in cuts.values()))
    await stop(run)

    # The meters forgot: a restarted simulator has its relay closed and its valve open,
    # while both cuts stay CONFIRMED in the database.
    again = await running(speedup=3600, prepay=PREPAY)
    seen = Recorder(again.runtime.bus)
    relay, valve = again.sim("E-101"), again.sim("W-101")
    assert relay.snapshot()["supply_on"] == 1 and valve.snapshot()["valve_open"] == 1
    await until(lambda: relay.snapshot()["supply_on"] == 0, 30)
    await until(lambda: bool(valve.snapshot()["valve_closed"]), 30)
    assert relay.snapshot()["power_active"] == 0

    mismatches = {e.meter_id: e for e in seen.of(SupplyMismatch) if e.active}
    assert set(mismatches) == {"E-101", "W-101"}
    event = mismatches["E-101"]
    assert event.account_id == "A-101"
    assert (event.desired_on, event.observed_on) == (False, True)
    assert event.count == 1 and event.consecutive == 1 and event.command_id > 0
    again_trip = again.ops.command(event.command_id)
    assert again_trip.kind == "TRIP" and again_trip.requested_by == "fee-control"
    assert f"re-asserted TRIP of #{cuts['E-101'].id}" in again_trip.reason
    assert again.ops.command(mismatches["W-101"].command_id).kind == "VALVE_CLOSE"
    audits = [a for a in seen.of(AuditRecord) if a.action == "reassert" and a.ok]
    assert {a.target for a in audits} >= {"E-101", "W-101"}
    assert all(a.actor == "supply-watch" for a in audits)

    # Obeyed again: the alarm clears; the count stays on the meter and shows.
    await until(
        lambda: any(not e.active and e.meter_id == "E-101" for e in seen.of(SupplyMismatch))
    )
    row = meter_row(again, "E-101")
    assert row.mismatch_count == 1 and row.reasserts == 0 and row.mismatch_since is None
    snap = again.ops.account_snapshot("A-101")
    meter = next(m for m in snap.meters if m.meter_id == "E-101")
    assert meter.desired_on is False and meter.supply_on is False and meter.mismatch_count == 1

    # Fee control still owns the cut: a top-up restores it.
    again.ops.topup("A-101", 5000, "pay-after-restart", actor="cashier:1")
    await until(lambda: relay.snapshot()["supply_on"] == 1, 30)
    assert again.ops.account_snapshot("A-101").fee_state is FeeState.NORMAL
    with again.db.read() as conn:
        assert ledger.verify(conn).ok


async def test_a_meter_that_refuses_to_trip_is_reasserted_with_back_off(running) -> None:
    prepay = dict(PREPAY, engine=dict(ENGINE, command_attempts=2))
    run = await running(speedup=3600, prepay=prepay)
    seen = Recorder(run.runtime.bus)
    relay = run.sim("E-101")
    relay.relay_stuck = True  # acknowledges every relay command, switches nothing
    run.open_account("A-101", ("E-101",), balance_fen=100)
    await until(lambda: len([e for e in seen.of(SupplyMismatch) if e.active]) >= 3, 60)
    events = [e for e in seen.of(SupplyMismatch) if e.active]
    # Each re-assertion in a row waits twice as long as the one before.
    gaps = [(e.next_at - e.at).total_seconds() for e in events[:3]]
    assert [e.consecutive for e in events[:3]] == [1, 2, 3]
    assert gaps == [1.2, 2.4, 4.8]
    assert [e.count for e in events[:3]] == [1, 2, 3]
    assert all(e.desired_on is False and e.observed_on is True for e in events)
    # One command per re-assertion, each tried at most command_attempts times.
    last = events[-1].command_id
    trips = [c for c in commands_of(run, "E-101") if c.kind == "TRIP" and c.id <= last]
    assert len(trips) == 1 + len(events)
    assert all(c.attempts <= 2 for c in trips)
    assert relay.snapshot()["supply_on"] == 1  # it never obeyed
    snap = run.ops.account_snapshot("A-101")
    assert snap.meters[0].mismatch_active and snap.meters[0].mismatch_count >= 3
    assert not [s for s in seen.of(SupplyChanged) if s.meter_id == "E-101" and not s.on]


async def test_a_forgotten_restore_is_closed_again(running) -> None:
    run = await running(speedup=0, prepay=PREPAY)
    seen = Recorder(run.runtime.bus)
    relay = run.sim("E-101")
    run.open_account("A-101", ("E-101",), balance_fen=10000)
    (close,) = run.ops.reconnect("E-101", "commissioning", actor="op:1")
    await until(lambda: run.ops.command(close.id).state == "CONFIRMED")
    # Someone opens the relay at the meter (its forced-control word reset to trip).
    relay.forced, relay.forced_trip = True, True
    relay._update_relay()
    relay._refresh_prepaid()
    await until(lambda: relay.snapshot()["supply_on"] == 1 and relay.forced_trip is False, 30)
    (event,) = [e for e in seen.of(SupplyMismatch) if e.active][:1]
    assert (event.desired_on, event.observed_on) == (True, False)
    assert run.ops.command(event.command_id).kind == "CLOSE"
