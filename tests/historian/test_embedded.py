"""The embedded default: without a server, history goes to one SQLite file next to the site
file and is read back (OPC UA HistoryRead, reports) through `runtime.history`."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import tomli_w

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.config.site import load_site, parse_site
from openprepay.core.events import CommunicationLost, EventBus
from openprepay.core.model import Quality, Sample
from openprepay.core.prepay.account_points import account_sample
from openprepay.core.prepay.feecontrol import FeeState
from openprepay.historian.embedded import EmbeddedHistoryReader
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
