"""Against a real InfluxDB 1.x (Debian `influxd`): the 1.x /write path, InfluxQL HistoryRead
with paging, malformed data set aside without blocking the queue, and an outage under load."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from openprepay.core.events import EventBus, HistorianBatchQuarantined
from openprepay.core.model import DeviceModel, MeterKind, PointSpec, Quality, Sample, ValueType
from openprepay.historian.lineprotocol import Chunk

from .conftest import (
    BASE,
    MODEL,
    collect,
    fast,
    influx_rows,
    influxql,
    ms,
    publish_paced,
    run_cli,
    running,
    sample,
    site_with,
    values_of,
)


def v1(influxdb, db: str, **extra) -> dict:
    return fast(url=influxdb.url, api="v1", db=db, create_database=True, **extra)


def fresh_db() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


async def test_writes_through_v1_and_reads_history_back_in_pages(influxdb, tmp_path: Path):
    db = fresh_db()
    site = site_with(v1(influxdb, db), tmp_path)
    async with running(site) as historian:
        for i in range(45):
            historian.bus.publish(sample(0, i))
            historian.bus.publish(sample(1, i))
        gap = BASE + timedelta(milliseconds=10 * 45)
        historian.bus.publish(
            Sample("M000", MODEL, gap, {}, Quality.BAD_COMM_FAILURE, error="timeout")
        )
        assert await historian.flush(30)

        end = BASE + timedelta(hours=1)
        pages, start, seen = 0, BASE, []
        while True:
            page = await historian.reader.read_raw("M000", "energy_total", start, end, 20)
            pages += 1
            seen += page.values
            if page.continuation is None:
                break
            assert page.continuation > page.values[-1].time
            start = page.continuation
        assert pages == 3
        assert [v.value for v in seen[:45]] == [values_of(0, i)["energy_total"] for i in range(45)]
        assert [v.time for v in seen[:45]] == [sample(0, i).read_at for i in range(45)]
        assert seen[45].value is None and seen[45].quality is Quality.BAD_COMM_FAILURE
        assert len(seen) == 46

        page = await historian.reader.read_raw("M001", "supply_on", BASE, end, 1000)
        assert [v.value for v in page.values] == [values_of(1, i)["supply_on"] for i in range(45)]
        page = await historian.reader.read_raw("M001", "buy_count", BASE, end, 1000)
        assert all(type(v.value) is int for v in page.values)

    rows = influx_rows(influxdb.url, db, "SELECT * FROM electric WHERE meter = 'M000'")
    assert rows[-1]["quality"] == 2 and rows[-1]["error"] == "timeout"
    assert rows[-1]["energy_total"] is None


async def test_malformed_data_is_quarantined_and_the_queue_moves_on(influxdb, tmp_path: Path):
    """A field type conflict (a profile that changed a point's type) is rejected with 400;
    the good lines around it arrive, the bad one is set aside, reported, and replayed
    once the cause is fixed."""
    db = fresh_db()
    site = site_with(v1(influxdb, db), tmp_path)
    changed = DeviceModel(
        "test.meter_v2",
        "Test",
        "Meter v2",
        MeterKind.ELECTRIC,
        "energy_total became a flag",
        points=(PointSpec("energy_total", "", "oops", value_type=ValueType.BOOL),),
    )
    bus = EventBus()
    quarantined = collect(bus, HistorianBatchQuarantined)
    async with running(site, bus) as historian:
        await publish_paced(bus, [sample(0, i) for i in range(100)])
        bus.publish(Sample("M009", changed, BASE, {"energy_total": True}))
        await publish_paced(bus, [sample(0, i) for i in range(100, 200)])
        assert await historian.commit()
        # Garbage straight into the spool, as if a line were corrupt before it was sent.
        await asyncio.to_thread(
            historian.spool.append, [Chunk(b"this is not line protocol\n", 1, 1, 0, 0)]
        )
        historian.forwarder.notify()
        await publish_paced(bus, [sample(0, i) for i in range(200, 300)])
        assert await historian.flush(30)
        stats = await historian.stats()

    assert stats["quarantined_lines"] == 2
    # Everything else was sent (the quarantine event's own line may still be on its way).
    assert stats["sent_lines"] >= 300
    assert stats["accepted_lines"] - stats["sent_lines"] - 2 in (0, 1)
    assert {e.status for e in quarantined} == {400}
    assert any("conflict" in e.error for e in quarantined)
    rows = influx_rows(influxdb.url, db, "SELECT energy_total FROM electric WHERE meter = 'M000'")
    assert len(rows) == 300  # nothing after the bad lines waited or was lost

    status = run_cli("status", str(site.path))
    assert "quarantine 2 batches" in status.output and "field type conflict" in status.output

    # Fix the cause (here: drop the measurement so the field may take the new type), replay.
    influx_rows(influxdb.url, db, "DROP MEASUREMENT electric")
    replay = run_cli("replay", str(site.path))
    assert "2 quarantined batches (2 lines) queued again" in replay.output
    async with running(site) as historian:
        assert await historian.flush(30)
        stats = await historian.stats()
    assert stats["quarantined_lines"] == 3  # the garbage line is rejected again
    rows = influx_rows(influxdb.url, db, "SELECT energy_total FROM electric WHERE meter = 'M009'")
    assert rows and rows[0]["energy_total"] is True


@pytest.mark.slow
async def test_outage_under_load_every_point_arrives_once(influxdb, tmp_path: Path):
    db = fresh_db()
    site = site_with(v1(influxdb, db), tmp_path)
    meters, step_ms = 10, 5
    published: list[Sample] = []

    async def load(stop: asyncio.Event) -> None:
        i = 0
        while not stop.is_set():
            for m in range(meters):
                s = sample(m, i, step_ms=step_ms)
                published.append(s)
                bus.publish(s)
            i += 1
            await asyncio.sleep(0.002)

    bus = EventBus()
    async with running(site, bus) as historian:
        stop = asyncio.Event()
        loader = asyncio.create_task(load(stop))
        await asyncio.sleep(0.5)
        await asyncio.to_thread(influxdb.stop)
        try:
            await asyncio.sleep(1.5)
            during = await historian.stats()
            assert during["queue_depth"] > 0 and not during["connected"]
        finally:
            await asyncio.to_thread(influxdb.start)
        await asyncio.sleep(0.8)
        stop.set()
        await loader
        assert await historian.flush(60)
        stats = await historian.stats()
    assert stats["dropped_lines"] == 0 and stats["retries"] > 0

    expected = {(s.source, ms(s.read_at)): s.values for s in published}
    arrived = {}
    q = "SELECT energy_total, voltage, buy_count FROM electric GROUP BY meter"
    for series in influxql(influxdb.url, db, q):
        for t, energy, voltage, buys in series["values"]:
            arrived[(series["tags"]["meter"], t // 1_000_000)] = (energy, voltage, buys)
    assert arrived.keys() == expected.keys()
    for key, values in expected.items():
        assert arrived[key] == (values["energy_total"], values["voltage"], values["buy_count"])


def test_an_embedded_store_is_replayed_into_influxdb(influxdb, tmp_path: Path):
    """`replay --embedded`: a small site's local history, in a time range, moved to a newly
    configured InfluxDB (even without the plugin that provided the model)."""
    (tmp_path / "small").mkdir()
    (tmp_path / "big").mkdir()
    small = site_with(fast(), tmp_path / "small")

    async def fill() -> None:
        async with running(small) as historian:
            for i in range(50):
                for m in range(2):
                    historian.bus.publish(sample(m, i))
            await historian.commit()

    asyncio.run(fill())
    db = fresh_db()
    big = site_with(v1(influxdb, db), tmp_path / "big")
    start, end = sample(0, 10).read_at.isoformat(), sample(0, 40).read_at.isoformat()
    store = str(tmp_path / "small" / "history.sqlite")
    result = run_cli("replay", str(big.path), "--embedded", store, "--from", start, "--to", end)
    assert "replay: 60 lines" in result.output, result.output
    result = run_cli("flush", str(big.path))
    assert result.exit_code == 0 and "60 lines sent" in result.output, result.output
    rows = influx_rows(influxdb.url, db, "SELECT energy_total, supply_on, meter FROM electric")
    assert len(rows) == 60
    expected = {
        (f"M{m:03d}", ms(sample(m, i).read_at)): values_of(m, i)
        for m in range(2)
        for i in range(10, 40)
    }
    for row in rows:
        values = expected[(row["meter"], row["time"] // 1_000_000)]
        assert (row["energy_total"], row["supply_on"]) == (
            values["energy_total"],
            values["supply_on"],
        )


async def test_unknown_series_read_as_empty(influxdb, tmp_path: Path):
    site = site_with(v1(influxdb, fresh_db()), tmp_path)
    async with running(site) as historian:
        page = await historian.reader.read_raw("nobody", "nothing", BASE, BASE, 10)
    assert page.values == [] and page.continuation is None
