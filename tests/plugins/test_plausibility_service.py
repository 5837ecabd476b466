"""A garbled reading never moves money, trips supply or shows as Good (issue 9 §2).

The whole service (link arbiter, metering, prepayment engine, command executor) runs on a
real database — SQLite and PostgreSQL — against a simulated DDSY1352 reached through the
fault-injecting proxy, which rewrites the meter's answers with a valid CRC: an energy jump,
all-zero registers, random registers, a register going backwards, a value that flips once
and returns. Before: one +2,000 kWh answer charged 2,000 kWh, tripped the meter and moved
the baseline so that the next 2,000 kWh of real use went unbilled.

Meter time runs an hour per second here (`[poll] time_scale = 3600`), so a kWh of real use
between two polls is plausible for a 13.2 kW meter while the faults below are not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.app.demo import anytime_policy
from openprepay.core.config.site import LinkType
from openprepay.core.db import schema as t
from openprepay.core.events import ImplausibleReading
from openprepay.core.model import Quality
from openprepay.core.prepay import accounts as acc
from tests.conftest import until
from tests.faultproxy import Fault, add_u32, random_words, zeros

from .conftest import Proxied, StartProxied

#: Register offsets in the DDSY1352's first block (0x0000): total, then T1..T4 (u32 each).
TOTAL, FLAT, VALLEY = 0, 6, 8
#: What each fault does to the first block's answers, and for how many answers.
FAULTS: dict[str, Callable[[], Fault]] = {
    # +2,000 kWh on the total and the flat register, for five polls, then the real values.
    "energy_jump": lambda: Fault(1, 0x0000, add_u32(TOTAL, 200_000, FLAT), times=5),
    "all_zero": lambda: Fault(1, 0x0000, zeros, times=1),
    "random": lambda: Fault(1, 0x0000, random_words(seed=9), times=2),
    "backwards": lambda: Fault(1, 0x0000, add_u32(TOTAL, -50_000, FLAT), times=3),
    "flips_once": lambda: Fault(1, 0x0000, add_u32(TOTAL, 30_000, VALLEY), times=1),
}


@pytest.fixture
def link_type() -> LinkType:
    """Money needs one framing: the proxy's rewriting of both is tested elsewhere."""
    return LinkType.RTU_OVER_TCP


def site_data(db_url: str) -> dict[str, Any]:
    return {
        "site": {"id": "plausible", "timezone": "Asia/Shanghai"},
        "poll": {
            "interval_s": 0.2,
            "stats_interval_s": 60,
            "backoff_initial_s": 0.2,
            "backoff_max_s": 0.4,
            "time_scale": 3600,
        },
        "links": {"gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 1}},
        "buildings": {"A": {"floors": ["1"]}},
        "rooms": {"A-101": {"building": "A", "floor": "1"}},
        "devices": {
            "E-101": {
                "model": "acrel.DDSY1352",
                "link": "gw",
                "unit_id": 1,
                "room": "A-101",
                "options": {"sim_energy_kwh": 1000.0, "sim_load_kw": 0.0},
            }
        },
        "tariffs": {"flat": {"price": "0.5000"}},
        "prepay": {
            "policy": anytime_policy(),
            "engine": {
                "default_tariffs": {"electric": "flat"},
                "post_interval_s": 0.2,
                "persist_s": 0,
                "queue_poll_s": 0.1,
                "deferral_poll_s": 0.2,
                "instance": "plausibility-test",
            },
        },
        "database": {"url": db_url},
    }


def use(run: Proxied, kwh: float) -> None:
    """Real consumption: the simulated meter's flat register (and total) advance."""
    sim = run.sim("E-101")
    sim.consume(3, kwh)
    sim.advance(sim.clock.now(), 0.0)  # frozen clock: refresh the registers now


def balance_fen(run: Proxied) -> int:
    assert run.runtime.db is not None
    with run.runtime.db.read() as conn:
        return ledger.balances(conn, "A-101").energy_fen


def trips(run: Proxied) -> int:
    assert run.runtime.db is not None
    with run.runtime.db.read() as conn:
        return conn.execute(
            sa.select(sa.func.count()).where(t.meter_command.c.kind == "TRIP")
        ).scalar_one()


def baseline_saved(run: Proxied) -> bool:
    assert run.runtime.db is not None
    with run.runtime.db.read() as conn:
        state = conn.execute(
            sa.select(t.prepay_meter.c.rating_state).where(t.prepay_meter.c.meter_id == "E-101")
        ).scalar()
    return bool(state and state.get("last_counts"))


@pytest.mark.parametrize("fault_kind", list(FAULTS))
async def test_a_garbled_reading_moves_no_money_and_trips_nothing(
    proxied: StartProxied, db_url: str, check: Callable[[], Any], fault_kind: str
) -> None:
    run = await proxied(site_data(db_url))
    runtime = run.runtime
    assert runtime.db is not None and runtime.prepay is not None
    with runtime.db.begin() as conn:
        meter = acc.resolve_meter(runtime.site, runtime.plugins.models, "E-101")
        acc.create_account(conn, acc.AccountSpec("A-101", "tenant", (meter,)))
    runtime.operations.topup("A-101", 2000, "pay-1", actor="test")
    await until(lambda: baseline_saved(run) and len(run.of("E-101")) >= 3)

    use(run, 1.00)  # 1 kWh at 0.50: 50 fen
    await until(lambda: balance_fen(run) == 1950)

    fault = run.proxy.inject(FAULTS[fault_kind]())
    await until(lambda: fault.spent)
    seen = len(run.of("E-101"))
    flushes = runtime.prepay.flushes
    # Polls after the fault, and billing has looked at them twice.
    await until(lambda: len(run.of("E-101")) >= seen + 3 and runtime.prepay.flushes >= flushes + 2)

    assert balance_fen(run) == 1950, "a garbled reading moved money"
    assert trips(run) == 0, "a garbled reading caused a trip"
    flagged = [s for s in run.of("E-101") if s.quality is not Quality.GOOD]
    assert len(flagged) == fault.applied, [s.error for s in flagged]
    assert all(s.quality is Quality.UNCERTAIN for s in flagged)
    assert all(s.quality_of("supply_on") is not Quality.GOOD for s in flagged)
    assert all("not billed" in (s.error or "") for s in flagged)
    # Billing says its own refusals (source "billing": with the simulator's frozen clock a
    # reading can come at the same meter time as the last billed one); the arbiter's are
    # the ones per episode of readings.
    events = [e for e in run.events if isinstance(e, ImplausibleReading) and e.source == "sample"]
    assert events and all(e.meter_id == "E-101" and e.link_id == "gw" for e in events)
    # One event per episode and point: an episode is a run of assessed readings (a failed
    # read is not assessed) in which the point stays implausible; under load a reading
    # without the point can split the fault's readings into two episodes.
    samples = run.of("E-101")

    def episodes_of(point: str) -> int:
        count, inside = 0, False
        for sample in samples:
            if not sample.values:
                continue
            flagged = (sample.point_errors or {}).get(point, "").startswith("implausible")
            count += flagged and not inside
            inside = flagged
        return count

    for point in {e.point for e in events}:
        said = sum(e.point == point for e in events)
        assert said == episodes_of(point), f"{point}: {said} events, one per episode expected"
    health = runtime.arbiter.health("E-101")
    assert health.implausible_readings == fault.applied

    # The real registers again: billed from the last good baseline, exactly.
    use(run, 1.00)
    await until(lambda: balance_fen(run) == 1900)
    await until(lambda: runtime.prepay.flushes >= flushes + 4)
    assert balance_fen(run) == 1900 and trips(run) == 0
    check()
