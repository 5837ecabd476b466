"""Helpers for the historian tests: a small meter model, deterministic samples, a service
started on a real server, and readers for what arrived (InfluxQL on InfluxDB 1.x, the export
API on VictoriaMetrics)."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import tomli_w
from click.testing import CliRunner, Result

from openprepay.core.cli import CliContext, OpenPrepayGroup
from openprepay.core.config.site import Site, load_site
from openprepay.core.events import Event, EventBus
from openprepay.core.model import (
    DeviceModel,
    MeterKind,
    PointRole,
    PointSpec,
    Sample,
    ValueType,
)
from openprepay.historian.cli import historian_group
from openprepay.historian.config import read_config
from openprepay.historian.service import Historian, make_historian

MODEL = DeviceModel(
    name="test.meter",
    vendor="Test",
    product="Meter",
    kind=MeterKind.ELECTRIC,
    description="A small meter for historian tests",
    points=(
        PointSpec("energy_total", "kWh", "Energy", PointRole.CUMULATIVE, resolution=0.01),
        PointSpec("power_active", "kW", "Power", resolution=0.001),
        PointSpec("voltage", "V", "Voltage"),
        PointSpec("buy_count", "", "Purchases", PointRole.SETTING, ValueType.INT),
        PointSpec("supply_on", "", "Relay closed", PointRole.STATE, ValueType.BOOL),
    ),
)
MODELS = {MODEL.name: MODEL}
#: A whole number of milliseconds, a little in the past (VictoriaMetrics keeps
#: milliseconds and hides the future).
BASE = (datetime.now(UTC) - timedelta(hours=2)).replace(microsecond=0)


def values_of(meter: int, i: int) -> dict[str, Any]:
    return {
        "energy_total": round(1000 + meter * 10 + i * 0.25, 2),
        "power_active": round(((i * 37 + meter) % 5000) / 1000, 3),
        "voltage": 220.0 + (i % 7) / 10,
        "buy_count": i // 10,
        "supply_on": i % 3 != 0,
    }


def sample(meter: int, i: int, base: datetime = BASE, step_ms: int = 10) -> Sample:
    """Sample `i` of meter `meter`: time base + i*step ms (+ meter µs to separate meters)."""
    t = base + timedelta(milliseconds=i * step_ms)
    return Sample(f"M{meter:03d}", MODEL, t, values_of(meter, i))


def site_with(historian: dict[str, Any], folder: Path, site_id: str | None = None) -> Site:
    """A site file in `folder` with this [historian] section, loaded."""
    data = {
        "site": {"id": site_id or f"t{uuid.uuid4().hex[:10]}"},
        "links": {"gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 1}},
        "historian": historian,
    }
    path = folder / "site.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return load_site(path)


def run_cli(*args: str) -> Result:
    """`openprepay historian ...` under the product's command group."""
    group = OpenPrepayGroup("openprepay")
    group.add_command(historian_group)
    return CliRunner().invoke(group, ["historian", *args], obj=CliContext(), catch_exceptions=False)


def fast(**extra: Any) -> dict[str, Any]:
    """Settings that make a test quick: short waits, small batches."""
    return {
        "flush_interval_ms": 50,
        "commit_interval_ms": 20,
        "retry_initial_ms": 50,
        "retry_max_ms": 300,
        "batch_size": 500,
        "stats_interval_s": 3600,
        "stop_timeout_s": 5,
        **extra,
    }


@asynccontextmanager
async def running(site: Site, bus: EventBus | None = None) -> AsyncIterator[Historian]:
    historian = make_historian(read_config(site), site, bus or EventBus(), MODELS)
    assert historian is not None
    await historian.start()
    try:
        yield historian
    finally:
        await historian.stop()


def collect(bus: EventBus, kind: type) -> list[Any]:
    seen: list[Any] = []
    bus.subscribe(kind, seen.append)
    return seen


async def publish_paced(
    bus: EventBus, items: Iterable[Sample | Event], per_tick: int = 200, tick_s: float = 0.005
) -> None:
    """Publish like a poller: a burst, then a pause."""
    for n, item in enumerate(items, 1):
        bus.publish(item)
        if n % per_tick == 0:
            await asyncio.sleep(tick_s)


# -- reading back what arrived --------------------------------------------------------------


def influxql(url: str, db: str, q: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode({"db": db, "q": q, "epoch": "ns"})
    with urllib.request.urlopen(f"{url}/query?{query}", timeout=30) as response:
        result = json.loads(response.read())["results"][0]
    assert "error" not in result, result
    return result.get("series") or []


def influx_rows(url: str, db: str, q: str) -> list[dict[str, Any]]:
    rows = []
    for series in influxql(url, db, q):
        for values in series["values"]:
            rows.append(dict(zip(series["columns"], values, strict=True)))
    return rows


def vm_export(url: str, match: str) -> list[dict[str, Any]]:
    """Raw samples from VictoriaMetrics (duplicates included)."""
    with urllib.request.urlopen(f"{url}/internal/force_flush", timeout=30):
        pass
    query = urllib.parse.urlencode({"match[]": match, "start": "0"})
    with urllib.request.urlopen(f"{url}/api/v1/export?{query}", timeout=30) as response:
        return [json.loads(line) for line in response.read().splitlines() if line.strip()]


def ms(t: datetime) -> int:
    return int((t - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(milliseconds=1))
