"""`openprepay historian status|flush|replay SITE`.

- status: where history goes; for InfluxDB the server's reachability, the spool's queue
  (lines, bytes, oldest age), its counters (accepted, sent, dropped, quarantined) and the
  quarantined batches with the server's reason; for the embedded store its size and series.
- flush: send the whole spool now and wait (when the service is not running; a running
  service holds the spool and drains it itself).
- replay: put quarantined batches whose data overlaps [--from, --to) back at the end of the
  queue, after the cause was fixed (a field type, a retention policy); with --embedded,
  queue the points of an embedded store in the range instead (moving a site's history to a
  newly configured InfluxDB). Lines rejected again return to the quarantine.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from openprepay.core.cli.common import (
    load_checked_site,
    progress_bar,
    run_async,
    site_argument,
)
from openprepay.core.cli.params import PlainNumber
from openprepay.core.config.site import Site
from openprepay.core.errors import OpenPrepayError
from openprepay.core.model import DeviceModel, MeterKind, PointSpec, Quality, Sample, ValueType
from openprepay.core.tasks import stop_task

from .config import Backend, HistorianConfig, read_config
from .embedded import EmbeddedStore, StoredSeries
from .forward import Forwarder
from .lineprotocol import Chunk, LineEncoder, from_ns, to_ns
from .schema import HISTORIAN_MODEL
from .spool import QUARANTINE, REPLAY, SEGMENTS, Spool, SpoolLocked
from .writer import InfluxWriter


def _ago(ns: int) -> str:
    seconds = max(0.0, (time.time_ns() - ns) / 1e9)
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _time(ns: int) -> str:
    return from_ns(ns).isoformat(timespec="seconds") if ns else "-"


def _spool(config: HistorianConfig) -> Spool:
    assert config.spool_dir is not None
    return Spool(
        config.spool_dir,
        config.spool_max_bytes,
        config.drop_policy,
        config.quarantine_max_bytes,
        compress=config.influx.gzip if config.influx else True,
    )


def _influx_only(config: HistorianConfig, what: str) -> None:
    if config.backend is not Backend.INFLUXDB:
        raise OpenPrepayError(
            f"{what} needs backend = influxdb; this site's history goes to the"
            f" {config.backend.value} backend"
        )


@click.group("historian")
def historian_group() -> None:
    """Time-series history: spool status, flush and replay."""


@historian_group.command("status")
@site_argument
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def status_command(site_file: str, as_json: bool) -> None:
    """Where history goes, the spool's backlog and counters, and the quarantine."""
    site = load_checked_site(site_file)
    config = read_config(site)
    report: dict[str, Any] = {"backend": config.backend.value}
    if config.backend is Backend.EMBEDDED:
        report.update(_embedded_status(config))
    elif config.backend is Backend.INFLUXDB:
        report.update(_influx_status(config))
    if as_json:
        click.echo(json.dumps(report, default=str))
        return
    _print_status(report)


def _embedded_status(config: HistorianConfig) -> dict[str, Any]:
    if config.path is None or not config.path.exists():
        return {"path": str(config.path), "exists": False}
    store = EmbeddedStore(config.path, config.retention_days)
    try:
        stats = store.stats()
    finally:
        store.close()
    return {"path": str(config.path), "exists": True, **stats}


def _influx_status(config: HistorianConfig) -> dict[str, Any]:
    assert config.influx is not None and config.spool_dir is not None
    t = config.influx
    writer = InfluxWriter(t)
    try:
        server = writer.ping()
    finally:
        writer.close()
    report: dict[str, Any] = {
        "url": t.url,
        "api": t.api.value,
        "target": f"bucket {t.bucket}" if t.bucket else f"db {t.db}",
        "server": server,
        "spool_dir": str(config.spool_dir),
        "spool_max_bytes": config.spool_max_bytes,
        "drop_policy": config.drop_policy.value,
    }
    if not (config.spool_dir / SEGMENTS).exists():
        report["spool"] = None
        return report
    spool = _spool(config)
    try:
        spool.lock()
    except SpoolLocked:
        report["service_running"] = True
    else:
        report["service_running"] = False
        spool.unlock()
    spool.open(lock=False)
    try:
        q = spool.queue()
        report["spool"] = {
            "batches": q.batches,
            "lines": q.lines,
            "bytes": q.bytes,
            "segments": q.segments,
            "oldest_age_s": round((time.time_ns() - q.oldest_created_ns) / 1e9, 3)
            if q.oldest_created_ns
            else 0.0,
            "counters": spool.counters(),
            "replay_waiting": len(list((config.spool_dir / REPLAY).glob("*.lp"))),
            "quarantine": [
                {
                    "id": e.id,
                    "at": _time(e.at_ns),
                    "status": e.status,
                    "error": e.error,
                    "lines": e.lines,
                    "from": _time(e.first_ns),
                    "to": _time(e.last_ns),
                    "file": str(config.spool_dir / QUARANTINE / f"{e.id}.lp"),
                }
                for e in spool.quarantine.entries()
            ],
        }
    finally:
        spool.close()
    return report


def _print_status(r: dict[str, Any]) -> None:
    echo = click.echo
    if r["backend"] == Backend.NONE.value:
        echo("history is off (historian.backend = none)")
        return
    if r["backend"] == Backend.EMBEDDED.value:
        echo(f"backend   embedded store {r['path']}")
        if not r.get("exists"):
            echo("          (not created yet: the service creates it at start)")
            return
        echo(f"size      {r['bytes'] / 1048576:.1f} MB, {r['series']} series, {r['events']} events")
        return
    echo(f"backend   InfluxDB {r['url']} (api {r['api']}, {r['target']})")
    echo(f"server    {r['server']}")
    limit = f"max {r['spool_max_bytes'] / 1048576:g} MB, {r['drop_policy']}"
    echo(f"spool     {r['spool_dir']} ({limit})")
    s = r.get("spool")
    if s is None:
        echo("          (no spool yet: the service creates it at start)")
        return
    echo(f"service   {'running (it drains the spool)' if r['service_running'] else 'not running'}")
    age = f", oldest {s['oldest_age_s']:.1f} s old" if s["batches"] else ""
    echo(
        f"queue     {s['lines']} lines in {s['batches']} batches, {s['bytes']} bytes"
        f" in {s['segments']} segments{age}"
    )
    if s["replay_waiting"]:
        echo(f"replay    {s['replay_waiting']} files wait to be queued again")
    c = s["counters"]
    echo(
        f"counters  accepted {c['accepted_lines']}, sent {c['sent_lines']}, dropped "
        f"{c['dropped_lines']} lines ({c['dropped_points']} points), quarantined "
        f"{c['quarantined_lines']}, replayed {c['requeued_lines']}"
    )
    quarantine = s["quarantine"]
    echo(f"quarantine {len(quarantine)} batches" + (":" if quarantine else ""))
    for e in quarantine:
        echo(
            f"  #{e['id']} {e['at']}  {e['lines']} lines, data {e['from']} .. {e['to']}"
            f"  HTTP {e['status']}: {e['error']}"
        )
        echo(f"      {e['file']}")


@historian_group.command("flush")
@site_argument
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=PlainNumber(Decimal("0.1"), 86_400, places=3, as_float=True, example="60"),
    help="Seconds to keep trying.",
)
def flush_command(site_file: str, timeout: float) -> None:
    """Send the whole spool to the server now (the service must not be running)."""
    site = load_checked_site(site_file)
    config = read_config(site)
    _influx_only(config, "flush")
    assert config.influx is not None

    spool = _spool(config)
    try:
        spool.open()
    except SpoolLocked as exc:
        raise OpenPrepayError(f"{exc}; `openprepay historian status` shows its progress") from None

    async def main(stop: asyncio.Event) -> tuple[bool, int, str]:
        writer = InfluxWriter(config.influx)
        forwarder = Forwarder(spool, writer, config)
        try:
            await asyncio.to_thread(spool.ingest_replay, config.batch_size)
            before, _ = await asyncio.to_thread(spool.head)
            with progress_bar("flush: lines sent", before) as update:

                async def follow() -> None:  # the backlog can take minutes to drain
                    while True:
                        await asyncio.sleep(0.2)
                        update(before - (await asyncio.to_thread(spool.head))[0])

                shown = asyncio.create_task(follow())
                try:
                    drained = await forwarder.drain_standalone(timeout)
                finally:
                    await stop_task(shown)
            after, _ = await asyncio.to_thread(spool.head)
        finally:
            forwarder.close()
            writer.close()
        return drained, before - after, forwarder.stats.last_error

    try:
        drained, sent, error = run_async(main)
    finally:
        spool.close()
    if drained:
        click.echo(f"flushed: {sent} lines sent, the spool is empty")
        return
    raise OpenPrepayError(f"{sent} lines sent, the rest is still spooled: {error or 'timeout'}")


class _When(click.ParamType):
    name = "TIME"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"expected an ISO 8601 time such as 2026-03-01T08:00, got {value!r}")


def _aware(t: datetime | None, site: Site) -> int | None:
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=ZoneInfo(site.info.timezone))
    return to_ns(t)


@historian_group.command("replay")
@site_argument
@click.option("--from", "start", type=_When(), help="Data time, inclusive (site time zone).")
@click.option("--to", "end", type=_When(), help="Data time, exclusive (site time zone).")
@click.option(
    "--embedded",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Queue the points of this embedded store instead of the quarantine.",
)
@click.pass_obj
def replay_command(
    obj: Any, site_file: str, start: datetime | None, end: datetime | None, embedded: Path | None
) -> None:
    """Send quarantined batches (or an embedded store's points) to the server again."""
    site = load_checked_site(site_file)
    config = read_config(site)
    _influx_only(config, "replay")
    lo, hi = _aware(start, site), _aware(end, site)
    spool = _spool(config)
    if embedded is None:
        batches, lines = spool.quarantine.requeue(lo, hi)
        click.echo(f"replay: {batches} quarantined batches ({lines} lines) queued again")
    else:
        models = dict(obj.plugins.models) if obj is not None else {}
        chunks = _embedded_chunks(embedded, site, models, config.batch_size, lo, hi)
        lines = spool.quarantine.add_replay(chunks)
        click.echo(f"replay: {lines} lines from {embedded} queued")
    try:
        spool.open()
    except SpoolLocked:
        click.echo("the running service takes them in and sends them")
        return
    try:
        spool.ingest_replay(config.batch_size)
    finally:
        spool.close()
    click.echo(
        f"the service is not running: send them with `openprepay historian flush {site_file}`"
    )


_KINDS = {
    "electric": MeterKind.ELECTRIC,
    "water": MeterKind.WATER,
    "link": MeterKind.LINK,
    "device_health": MeterKind.HEALTH,
    "account": MeterKind.ACCOUNT,
}


def _stored_model(name: str, series: list[StoredSeries]) -> DeviceModel:
    """A model rebuilt from what the store recorded (plugin no longer installed)."""
    kind = _KINDS.get(series[0].measurement, MeterKind.HEALTH)
    points = tuple(
        PointSpec(s.point, s.unit, "", value_type=s.value_type or ValueType.FLOAT) for s in series
    )
    return DeviceModel(name, "", "", kind, "as stored", points)


def _embedded_chunks(
    path: Path,
    site: Site,
    models: dict[str, DeviceModel],
    batch_size: int,
    lo: int | None,
    hi: int | None,
) -> list[Chunk]:
    """The stored values in [lo, hi) as line protocol: one line per source, model and time."""
    from openprepay.core.field.diagnostics import HEALTH_MODEL, LINK_MODEL
    from openprepay.core.prepay.account_points import ACCOUNT_MODEL

    for model in (LINK_MODEL, HEALTH_MODEL, ACCOUNT_MODEL, HISTORIAN_MODEL):
        models.setdefault(model.name, model)
    store = EmbeddedStore(path).open()  # converts a store of the old layout
    encoder = LineEncoder(site)
    try:
        stored: dict[str, list[StoredSeries]] = defaultdict(list)
        for series in store.series():
            stored[series.model].append(series)
        for name, series in stored.items():
            if name not in models:
                models[name] = _stored_model(name, series)
        samples = []
        for row in store.samples_between(
            lo if lo is not None else -(2**63), hi if hi is not None else 2**63 - 1
        ):
            q = Quality(row.quality)
            values = {p: v for p, v in row.values.items() if v is not None}
            samples.append(
                Sample(
                    row.source,
                    models[row.model],
                    from_ns(row.t),
                    values if q <= Quality.UNCERTAIN else {},
                    q,
                    point_quality={p: Quality(v) for p, v in row.point_quality.items()} or None,
                )
            )
        samples.sort(key=lambda s: s.read_at)
        return encoder.encode(samples, batch_size)
    finally:
        store.close()
