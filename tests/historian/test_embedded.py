"""The embedded default: without a server, history goes to one SQLite file next to the site
file and is read back (OPC UA HistoryRead, reports) through `runtime.history`."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.config.site import load_site, parse_site
from openprepay.core.events import CommunicationLost, EventBus
from openprepay.core.field.diagnostics import HEALTH_MODEL
from openprepay.core.model import Quality, Sample
from openprepay.core.prepay.account_points import account_sample
from openprepay.core.prepay.feecontrol import FeeState
from openprepay.historian.embedded import EmbeddedHistoryReader, EmbeddedStore
from openprepay.historian.lineprotocol import to_ns
from openprepay.historian.schema import HISTORIAN_SOURCE

from .conftest import BASE, MODEL, fast, run_cli, running, sample, site_with, values_of

END = BASE + timedelta(days=1)


async def read_all(reader, source: str, point: str, page: int = 7) -> list:
    values, start = [], BASE - timedelta(days=1)
    while True:
        got = await reader.read_raw(source, point, start, END, page)
        values += got.values
        if got.continuation is None:
            return values
        start = got.continuation


async def test_the_runtime_gets_an_embedded_history_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """No [historian] section: the plugin (loaded from its entry point) starts the
    embedded store next to the site file and registers its reader on the runtime."""
    monkeypatch.setenv("OPENPREPAY_DISABLE_PLUGINS", "opcua,notify")  # only what this needs
    site_file = tmp_path / "site.toml"
    site_file.write_text(
        tomli_w.dumps(
            {
                "site": {"id": "small"},
                "links": {"gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 1}},
            }
        )
    )
    runtime = Runtime(load_site(site_file), Plugins.load())
    async with runtime:
        assert isinstance(runtime.history, EmbeddedHistoryReader)
        for i in range(20):
            runtime.bus.publish(sample(0, i))
        [historian] = [s for s in runtime.services if s.name == "historian"]
        await historian.commit()
        values = await read_all(runtime.history, "M000", "energy_total")
        assert [v.value for v in values] == [values_of(0, i)["energy_total"] for i in range(20)]
    assert (tmp_path / "history.sqlite").exists()


async def test_paging_gaps_types_and_restart(tmp_path: Path):
    site = site_with(fast(path="data/history.sqlite"), tmp_path)
    bus = EventBus()
    async with running(site, bus) as historian:
        for i in range(30):
            bus.publish(sample(0, i))
        gap = BASE + timedelta(milliseconds=300)
        bus.publish(Sample("M000", MODEL, gap, {}, Quality.BAD_COMM_FAILURE, error="timeout"))
        bus.publish(
            account_sample(
                "acc-1",
                BASE,
                energy_balance_fen=1234,
                general_balance_fen=0,
                alarm_level=FeeState.ALARM1,
                supply_on=True,
            )
        )
        bus.publish(CommunicationLost("M000", "gw", "timeout"))
        await historian.commit()
        await historian.publish_stats()
        await historian.commit()
        stats = historian.last_stats
        assert stats["accepted_lines"] >= 33 and stats["dropped_lines"] == 0

    async with running(site) as historian:  # a new process would see the same
        reader = historian.reader
        energy = await read_all(reader, "M000", "energy_total")
        assert len(energy) == 31
        assert [v.value for v in energy[:30]] == [
            values_of(0, i)["energy_total"] for i in range(30)
        ]
        assert energy[30].value is None and energy[30].quality is Quality.BAD_COMM_FAILURE
        relay = await read_all(reader, "M000", "supply_on")
        assert all(type(v.value) is bool for v in relay[:30])
        counts = await read_all(reader, "M000", "buy_count")
        assert all(type(v.value) is int for v in counts[:30])
        balance = await read_all(reader, "acc-1", "energy_balance_fen")
        assert [v.value for v in balance] == [1234]
        own = await reader.read_raw(
            HISTORIAN_SOURCE, "accepted_lines", BASE, END + timedelta(days=9), 10
        )
        assert own.values and own.values[0].value >= 33
        nothing = await reader.read_raw("nobody", "nothing", BASE, END, 10)
        assert nothing.values == [] and nothing.continuation is None
        info = historian.store.stats()
        assert info["events"] >= 1 and info["series"] >= 5
    assert (tmp_path / "data" / "history.sqlite").exists()

    status = run_cli("status", str(site.path))
    assert "embedded store" in status.output and "series" in status.output


async def test_a_site_without_a_file_keeps_history_in_memory():
    site = parse_site(
        {
            "site": {"id": "mem"},
            "links": {"gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 1}},
        }
    )
    async with running(site) as historian:
        assert historian.config.path is None
        historian.bus.publish(sample(0, 0))
        await historian.commit()
        page = await historian.reader.read_raw("M000", "voltage", BASE, END, 10)
        assert [v.value for v in page.values] == [values_of(0, 0)["voltage"]]


async def test_retention_prunes_old_values(tmp_path: Path):
    site = site_with(fast(retention_days=1), tmp_path)
    async with running(site) as historian:
        historian.bus.publish(sample(0, 0, base=BASE - timedelta(days=3)))
        historian.bus.publish(sample(0, 1))
        await historian.commit()
        await historian._in_store(historian.store.prune)
        values = await historian.reader.read_raw(
            "M000", "voltage", BASE - timedelta(days=5), END, 10
        )
        assert [v.time for v in values.values] == [sample(0, 1).read_at]


# -- one row per sample ----------------------------------------------------------------------
def _raw(store, source: str, point: str) -> list[tuple[Any, Quality]]:
    page = store.read_raw_sync(source, point, BASE - timedelta(days=1), END, 1000)
    return [(v.value, v.quality) for v in page.values]


def test_point_quality_nan_and_two_models_of_one_source(tmp_path: Path):
    """A point's own quality is kept, a NaN is stored as no value with a Bad quality (not the
    number), and a meter's health sample at the same instant as its reading is a row of its
    own stream, not a replacement of the reading."""
    store = EmbeddedStore(tmp_path / "h.sqlite").open()
    try:
        suspect = dict(values_of(0, 0), voltage=float("nan"))
        store.store(
            [
                Sample(
                    "M000",
                    MODEL,
                    BASE,
                    suspect,
                    point_quality={"power_active": Quality.UNCERTAIN},
                ),
                Sample("M000", HEALTH_MODEL, BASE, {"polls_ok": 7}),
            ]
        )
        assert _raw(store, "M000", "energy_total") == [(1000.0, Quality.GOOD)]
        assert _raw(store, "M000", "power_active") == [(0.0, Quality.UNCERTAIN)]
        assert _raw(store, "M000", "voltage") == [(None, Quality.BAD_DEVICE_FAILURE)]
        assert _raw(store, "M000", "polls_ok") == [(7, Quality.GOOD)]
        assert _raw(store, "M000", "supply_on") == [(False, Quality.GOOD)]
        assert {s.point for s in store.series("M000")} == {
            *(p.name for p in MODEL.points),
            "polls_ok",
        }
    finally:
        store.close()


def test_a_store_of_the_old_layout_is_converted_when_opened(tmp_path: Path):
    """One row per value (the layout before) → one row per sample: the same values, types
    and qualities read back, a Bad sample still a gap, and the old table gone."""
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE series (id INTEGER PRIMARY KEY, source TEXT NOT NULL, point TEXT NOT NULL,
            measurement TEXT NOT NULL, model TEXT NOT NULL, unit TEXT NOT NULL, value_type TEXT,
            UNIQUE (source, point));
        CREATE TABLE value (series INTEGER NOT NULL, t INTEGER NOT NULL, value,
            quality INTEGER NOT NULL, PRIMARY KEY (series, t)) WITHOUT ROWID;
        CREATE TABLE event (t INTEGER NOT NULL, measurement TEXT NOT NULL, type TEXT NOT NULL,
            tags TEXT NOT NULL, fields TEXT NOT NULL);
        """
    )
    kinds = {"energy_total": "float", "supply_on": "bool", "buy_count": "int"}
    for sid, (point, vt) in enumerate(kinds.items(), start=1):
        old.execute(
            "INSERT INTO series VALUES (?, 'M000', ?, 'electric', ?, '', ?)",
            (sid, point, MODEL.name, vt),
        )
    t0, t1 = to_ns(BASE), to_ns(BASE + timedelta(seconds=10))
    bad = int(Quality.BAD_COMM_FAILURE)
    old.executemany(
        "INSERT INTO value VALUES (?, ?, ?, ?)",
        [
            (1, t0, 1000.5, 0),
            (2, t0, 1, 0),
            (3, t0, 4, int(Quality.UNCERTAIN)),
            *((sid, t1, None, bad) for sid in (1, 2, 3)),
        ],
    )
    old.commit()
    old.close()

    store = EmbeddedStore(path).open()
    try:
        assert _raw(store, "M000", "energy_total") == [
            (1000.5, Quality.GOOD),
            (None, Quality.BAD_COMM_FAILURE),
        ]
        assert _raw(store, "M000", "supply_on") == [
            (True, Quality.GOOD),
            (None, Quality.BAD_COMM_FAILURE),
        ]
        assert _raw(store, "M000", "buy_count")[0] == (4, Quality.UNCERTAIN)
        [first, gap] = list(store.samples_between(t0, t1 + 1))
        assert (first.quality, first.values) == (
            0,
            {"energy_total": 1000.5, "supply_on": True, "buy_count": 4},
        )
        assert first.point_quality == {"buy_count": int(Quality.UNCERTAIN)}
        assert gap.quality == bad and set(gap.values.values()) == {None}
        tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master")}
        assert "value" not in tables
        # new samples go on after the converted ones
        store.store([sample(0, 2000)])
        assert len(_raw(store, "M000", "energy_total")) == 3
    finally:
        store.close()
