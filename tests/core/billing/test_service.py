"""The billing service: meter registers captured from the sample stream at each capture
instant (the last Good reading at or before it, kept across a restart, never overwriting a
newer reading or an operator's), and the month-end run once per period after the freeze
instant, by one of several instances, with an alert for a faulty pool."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt

import sqlalchemy as sa

from openprepay.core.billing.readings import PROVISIONAL_SAVE_S, readings_at, record_reading
from openprepay.core.billing.service import BillingService
from openprepay.core.config.site import parse_site
from openprepay.core.db import schema as t
from openprepay.core.events import ApportionmentAlert, EventBus
from openprepay.core.field.diagnostics import HEALTH_MODEL, DeviceHealth
from openprepay.core.model import Quality, Sample
from openprepay.core.operations import Operations

from .conftest import ELECTRIC, FEB, JAN, MAIN, MODELS, TZ, open_accounts, read, site_data


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def _service(db, clock, name="svc", **billing):
    data = site_data()
    data["billing"] = {**data["billing"], "month_end_poll_s": 0.05, "batch_poll_s": 0.05, **billing}
    site = parse_site(data)
    bus = EventBus()
    ops = Operations(site, db, bus, models=MODELS, clock=clock)
    return BillingService(site, MODELS, db, bus, ops, instance=name, clock=clock), bus


def _sample(meter, at, kwh, quality=Quality.GOOD):
    model = MAIN if meter.startswith(("M-", "P-")) else ELECTRIC
    values = {"energy_total": kwh}
    if model is ELECTRIC:
        values.update(energy_sharp=0.0, energy_peak=kwh, energy_flat=0.0, energy_valley=0.0)
    return Sample(meter, model, at, values if quality is Quality.GOOD else {}, quality)


def test_capture_keeps_the_last_good_reading_at_or_before_each_instant(sqlite_db):
    db = sqlite_db
    service, bus = _service(db, Clock(FEB))
    bus.subscribe(Sample, service.capture.on_sample)  # what start() does
    local = FEB.astimezone(TZ)
    assert (
        local.hour == 0
        and "M-A" in service.capture.layouts
        and "E-A-101" in service.capture.layouts
    )
    before = FEB - dt.timedelta(seconds=30)
    for at, kwh, q in (
        (FEB - dt.timedelta(minutes=2), 1000.00, Quality.GOOD),
        (before, 1000.05, Quality.GOOD),
        (FEB - dt.timedelta(seconds=10), 0, Quality.BAD_COMM_FAILURE),  # a failed read
        (FEB + dt.timedelta(seconds=30), 1000.20, Quality.GOOD),
    ):
        bus.publish(_sample("M-A", at, kwh, q))
    assert service.flush_readings() == 2
    with db.read() as conn:
        at_feb = readings_at(conn, ["M-A"], FEB)["M-A"]
        next_day = FEB + dt.timedelta(days=1)
        provisional = readings_at(conn, ["M-A"], next_day)["M-A"]
    assert (at_feb.energy, at_feb.read_at) == (1_000_050, before)
    assert provisional.energy == 1_000_200  # the latest so far, for the next instant
    # After a restart, another instance that saw an older sample never overwrites it.
    other, other_bus = _service(db, Clock(FEB), name="other")
    other_bus.subscribe(Sample, other.capture.on_sample)
    other_bus.publish(_sample("M-A", FEB - dt.timedelta(minutes=5), 999.0))
    other.flush_readings()
    # An operator's reading wins over whatever is captured later.
    with db.begin() as conn:
        record_reading(conn, "M-A", next_day, "1010", recorded_by="cli:alice")
    bus.publish(_sample("M-A", FEB + dt.timedelta(hours=2), 1003.0))
    service.flush_readings()
    with db.read() as conn:
        assert readings_at(conn, ["M-A"], FEB)["M-A"].energy == 1_000_050
        manual = readings_at(conn, ["M-A"], next_day)["M-A"]
    assert (manual.energy, manual.source) == (1_010_000, "manual")


def test_the_periodic_flush_saves_a_provisional_reading_at_most_every_ten_minutes(sqlite_db):
    """A reading for an instant still ahead is saved at the first periodic flush, then
    again once `PROVISIONAL_SAVE_S` (spread by meter) has passed; one whose instant passed
    is saved at the next flush whatever its meter's turn; a full flush saves everything."""
    clock = Clock(FEB + dt.timedelta(hours=1))
    service, bus = _service(sqlite_db, clock)
    bus.subscribe(Sample, service.capture.on_sample)
    next_day = FEB + dt.timedelta(days=1)
    t0 = clock()

    def saved(at: dt.datetime = next_day) -> int:
        with sqlite_db.read() as conn:
            return readings_at(conn, ["M-A"], at)["M-A"].energy

    bus.publish(_sample("M-A", t0, 1000.0))
    assert service.flush_readings(periodic=True) == 1  # never saved: saved now
    bus.publish(_sample("M-A", t0 + dt.timedelta(seconds=10), 1000.1))
    assert service.flush_readings(periodic=True) == 0  # not its turn: kept
    assert saved() == 1_000_000
    later = t0 + dt.timedelta(seconds=PROVISIONAL_SAVE_S)  # past any spread
    bus.publish(_sample("M-A", later, 1000.2))
    assert service.flush_readings(periodic=True) == 1
    assert saved() == 1_000_200
    bus.publish(_sample("M-A", later + dt.timedelta(seconds=10), 1000.3))
    assert service.flush_readings(periodic=True) == 0
    assert service.flush_readings() == 1  # stop and month-end save everything
    assert saved() == 1_000_300
    # Across the instant: the last reading before it is final, saved at the next flush
    # even when its meter's provisional turn has not come.
    bus.publish(_sample("M-A", next_day - dt.timedelta(seconds=5), 1000.4))
    assert service.flush_readings(periodic=True) == 1  # hours later: its turn
    bus.publish(_sample("M-A", next_day - dt.timedelta(seconds=1), 1000.5))
    bus.publish(_sample("M-A", next_day + dt.timedelta(seconds=5), 1000.6))
    clock.now = next_day + dt.timedelta(seconds=6)
    assert service.flush_readings(periodic=True) == 1  # the final one only
    assert saved() == 1_000_500
    assert service.flush_readings() == 1
    assert saved(next_day + dt.timedelta(days=1)) == 1_000_600


def test_health_figures_under_a_meters_id_never_displace_its_reading(sqlite_db):
    """The link publishes each meter's health figures under the meter's id; one that comes
    after the last reading before a save (or the instant) must not drop the reading."""
    service, bus = _service(sqlite_db, Clock(FEB))
    bus.subscribe(Sample, service.capture.on_sample)
    last = FEB - dt.timedelta(seconds=5)
    bus.publish(_sample("M-A", last, 1000.05))
    health = DeviceHealth("M-A", "L-A", 5.0)
    health.online = True
    bus.publish(Sample("M-A", HEALTH_MODEL, FEB - dt.timedelta(seconds=1), health.values()))
    bus.publish(Sample("M-A", MAIN, FEB - dt.timedelta(seconds=1), {}, Quality.GOOD))
    garbled = _sample("M-A", FEB, 1999.0)  # a value the plausibility check marked Bad
    garbled = dataclasses.replace(
        garbled, point_quality={"energy_total": Quality.BAD_DEVICE_FAILURE}
    )
    bus.publish(garbled)
    assert service.flush_readings() == 1
    with sqlite_db.read() as conn:
        reading = readings_at(conn, ["M-A"], FEB)["M-A"]
    assert (reading.energy, reading.read_at) == (1_000_050, last)


async def test_month_end_runs_once_after_the_freeze_instant(sqlite_db, site):
    db = sqlite_db
    open_accounts(db, site)
    read(db, JAN, {"M-A": 10000, "P-A": 0, "E-A-101": 1000, "E-A-102": 2000, "E-A-201": 3000})
    read(db, FEB, {"M-A": 10900, "P-A": 0, "E-A-101": 1300, "E-A-102": 2500, "E-A-201": 3150})
    clock = Clock(dt.datetime(2025, 1, 20, tzinfo=TZ).astimezone(dt.UTC))
    one, bus_one = _service(db, clock, "one")
    two, bus_two = _service(db, clock, "two")
    alerts: list[ApportionmentAlert] = []
    for bus in (bus_one, bus_two):
        bus.subscribe(ApportionmentAlert, alerts.append)
    await one.start()
    await two.start()
    await asyncio.sleep(0.2)  # both saw January
    clock.now = FEB + dt.timedelta(hours=12)  # before D+1: not yet
    await asyncio.sleep(0.2)
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.billing_run)).scalar() == 0
    clock.now = FEB + dt.timedelta(hours=25)
    for _ in range(100):
        with db.read() as conn:
            state = conn.execute(
                sa.select(t.billing_cycle.c.state).where(t.billing_cycle.c.period == "2025-01")
            ).scalar()
        if state == "DONE":
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    await one.stop()
    await two.stop()
    assert len(one.month_ends) + len(two.month_ends) == 1
    with db.read() as conn:
        runs = conn.execute(sa.select(t.billing_run.c.source, t.billing_run.c.state)).all()
        journals = conn.execute(sa.select(t.journal.c.idempotency_key)).scalars().all()
    assert sorted(runs) == [("charge:property", "POSTED"), ("pool:A", "FAULT")]
    assert journals == ["charge:property:2025-01"]
    assert [(a.pool_id, a.period, a.state) for a in alerts] == [("A", "2025-01", "FAULT")]


def test_bulk_and_per_meter_readings_agree(db):
    """Most of a site's meters are read in one pass over the instant; a few, by id."""
    from .conftest import read

    read(db, FEB, {"M-A": "1000.5", "E-A-101": 10}, **{"E-A-101": {"energy_peak": 10}})
    many = ["M-A", "E-A-101"] + [f"X-{i}" for i in range(2500)]
    with db.read() as conn:
        bulk = readings_at(conn, many, FEB)
        one = readings_at(conn, ["M-A", "E-A-101"], FEB)
    assert bulk == one
    assert bulk["E-A-101"].registers == {"energy_peak": 10_000}
    assert bulk["M-A"].energy == 1_000_500 and bulk["M-A"].read_at == FEB - dt.timedelta(minutes=1)


async def test_a_postpaid_meter_attached_while_the_service_runs_is_captured(sqlite_db):
    db = sqlite_db
    clock = Clock(FEB - dt.timedelta(hours=1))
    service, bus = _service(db, clock, reading_flush_s=0.05)
    await service.start()
    try:
        assert "E-B-101" not in service.capture.layouts
        # The CLI opens a post-paid account in another process: only the database says so.
        open_accounts(db, service.site, {"B-101": ("E-B-101",)}, modes={"E-B-101": "POSTPAID"})
        for _ in range(200):
            if "E-B-101" in service.capture.layouts:
                break
            await asyncio.sleep(0.02)
        bus.publish(_sample("E-B-101", FEB - dt.timedelta(minutes=1), 321.5))
    finally:
        await service.stop()  # saves what is left
    with db.read() as conn:
        reading = readings_at(conn, ["E-B-101"], FEB)["E-B-101"]
    assert reading.energy == 321_500


def test_a_periodic_take_while_samples_arrive_loses_none(sqlite_db):
    """`take` runs in a worker thread while the bus adds samples on the event loop: it
    never fails ("dictionary changed size"), and every meter's newest sample is either
    taken or kept for the next flush."""
    import sys
    import threading

    from openprepay.core.billing.readings import ReadingCapture

    clock = Clock(FEB + dt.timedelta(hours=1))
    service, _bus = _service(sqlite_db, clock)
    layout = service.capture.layouts["M-A"]
    capture = ReadingCapture(service.capture.calendar, {f"M-{i}": layout for i in range(3000)})
    t0 = clock()
    for start in (t0, t0 + dt.timedelta(seconds=PROVISIONAL_SAVE_S)):
        for i in range(3000):  # saved twice: every meter's next turn is 10 minutes ahead
            capture.on_sample(_sample(f"M-{i}", start, 1000.0))
        capture.saved(capture.take(clock()))
    t1 = t0 + dt.timedelta(seconds=PROVISIONAL_SAVE_S)
    done = threading.Event()

    def arrive() -> None:
        for n in range(1, 6):
            for i in range(3000):
                capture.on_sample(_sample(f"M-{i}", t1 + dt.timedelta(seconds=n), 1000.0 + n))
        done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        thread = threading.Thread(target=arrive)
        thread.start()
        while not done.is_set():
            assert capture.take(clock()) == {}  # nobody's turn yet: all kept
        thread.join()
    finally:
        sys.setswitchinterval(interval)
    newest = capture.take()
    assert len(newest) == 3000
    assert {s.read_at for s in newest.values()} == {t1 + dt.timedelta(seconds=5)}
