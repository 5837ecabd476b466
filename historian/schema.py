"""The InfluxDB schema: which measurement, tags and fields a sample or an event becomes.

One line per sample, its fields named after the model's points (units in the model and in
docs/historian.md), time = the device clock where the device has one, else the read time.

    measurement     source tag   other tags                      from
    electric        meter        site, model, building, room     electric meter samples
    water           meter        site, model, building, room     water meter samples
    device_health   meter        site, building, room            openprepay.device_health
    link            link         site                            openprepay.link
    account         account      site                            openprepay.account
    historian       instance     site                            openprepay.historian
    supply_event    meter        site, type, command             CommandExecuted
    event           meter/link   site, type                      every other core Event

Every sample line carries `quality` (integer, core.model.Quality: 0 good ... 4 out of
service). A Bad sample has no point fields, only `quality` and `error`, so a gap is visible
and never filled with a stale value. A per-point quality worse than the sample's adds
`quality_<point>`. With a device clock, `read_lag_ms` is read time minus device time.

Tags are only ids with a small, stable set of values (site, model, building, room, meter,
link, account), so the series count is about one per device and measurement. Because a
line's tags and timestamp are fixed when it is spooled, a re-sent batch overwrites itself
on InfluxDB (same measurement, tag set and time): a replay cannot duplicate data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from openprepay.core.app.vitals import SERVICE_MODEL, SERVICE_SOURCE
from openprepay.core.config.site import Site
from openprepay.core.events import CommandExecuted, Event
from openprepay.core.field.diagnostics import HEALTH_MODEL, LINK_MODEL, diagnostic
from openprepay.core.model import DeviceModel, MeterKind, PointSpec, ValueType
from openprepay.core.prepay.account_points import ACCOUNT_MODEL

#: Source id of the historian's own statistics.
HISTORIAN_SOURCE = "historian"


#: The historian's statistics, published every `stats_interval_s` as samples of this
#: pseudo-model (source "historian"), like the core does for links (core/field/diagnostics.py).
HISTORIAN_MODEL = DeviceModel(
    name="openprepay.historian",
    vendor="OpenPrepay",
    product="Historian statistics",
    kind=MeterKind.HEALTH,
    description="Spool and write statistics of the historian",
    points=(
        diagnostic("queue_depth", "", "Lines (InfluxDB points) waiting in the spool"),
        diagnostic("queue_batches", "", "Spooled batches waiting"),
        diagnostic("queue_bytes", "B", "Bytes of spooled data waiting (compressed)"),
        diagnostic("oldest_age_s", "s", "Age of the oldest waiting batch", ValueType.FLOAT),
        diagnostic("pending_samples", "", "Samples in memory, not yet committed"),
        diagnostic("accepted_lines", "", "Lines committed durably, since the spool was created"),
        diagnostic("sent_lines", "", "Lines the server acknowledged, since the spool was created"),
        diagnostic("dropped_lines", "", "Lines thrown away by the drop policy, in total"),
        diagnostic("dropped_points", "", "Point values thrown away by the drop policy, in total"),
        diagnostic(
            "spilled_samples", "", "Samples that waited on disk (memory queue full), since start"
        ),
        diagnostic("quarantined_lines", "", "Lines the server rejected as malformed, in total"),
        diagnostic("quarantine_batches", "", "Rejected batches kept in the quarantine"),
        diagnostic("retries", "", "Write attempts that failed and were retried, since start"),
        diagnostic("connected", "", "1 while the last write attempt succeeded", ValueType.BOOL),
        diagnostic("write_ms", "ms", "Duration of the last successful write", ValueType.FLOAT),
    ),
    plugin="historian",
)

#: Pseudo-models by name, with their measurement and source tag.
PSEUDO_MEASUREMENTS: Mapping[str, tuple[str, str]] = {
    LINK_MODEL.name: ("link", "link"),
    HEALTH_MODEL.name: ("device_health", "meter"),
    ACCOUNT_MODEL.name: ("account", "account"),
    HISTORIAN_MODEL.name: ("historian", "instance"),
    SERVICE_MODEL.name: ("service", "instance"),
}
KIND_MEASUREMENTS: Mapping[MeterKind, tuple[str, str]] = {
    MeterKind.ELECTRIC: ("electric", "meter"),
    MeterKind.WATER: ("water", "meter"),
    MeterKind.LINK: ("link", "link"),
    MeterKind.HEALTH: ("device_health", "meter"),
    MeterKind.ACCOUNT: ("account", "account"),
}
#: Field names that are not points; a point with one of these names (or a tag's name) is
#: written as `point_<name>`.
RESERVED_FIELDS = frozenset({"quality", "error", "read_lag_ms"})
TAG_KEYS = frozenset({"site", "model", "building", "room", "meter", "link", "account"})
TAG_KEYS = TAG_KEYS | {"instance", "type", "command"}

SUPPLY_EVENTS = frozenset({CommandExecuted.__name__})
#: Event attributes written as tags (renamed): low-cardinality ids.
EVENT_TAGS: Mapping[str, str] = {
    "meter_id": "meter",
    "link_id": "link",
    "account_id": "account",
    "command": "command",
}


@dataclass(frozen=True, slots=True)
class SeriesKind:
    """Where a model's samples go."""

    measurement: str
    source_tag: str
    #: Whether meter tags (model, building, room) are added.
    meter_tags: bool


def series_kind(model: DeviceModel) -> SeriesKind:
    pseudo = PSEUDO_MEASUREMENTS.get(model.name)
    if pseudo is not None:
        return SeriesKind(pseudo[0], pseudo[1], model.name == HEALTH_MODEL.name)
    measurement, tag = KIND_MEASUREMENTS.get(model.kind, (str(model.kind), "meter"))
    return SeriesKind(measurement, tag, tag == "meter")


def field_name(point: str) -> str:
    if point in RESERVED_FIELDS or point in TAG_KEYS or point.startswith("quality_"):
        return f"point_{point}"
    return point


def sample_tags(site: Site | None, model: DeviceModel, source: str) -> dict[str, str]:
    """The tag set of a sample's line, in key order."""
    kind = series_kind(model)
    tags = {kind.source_tag: source}
    if site is not None:
        tags["site"] = site.id
    if kind.meter_tags:
        if model.name != HEALTH_MODEL.name:
            tags["model"] = model.name
        device = site.devices.get(source) if site is not None else None
        if device is not None and site is not None:
            building = site.building_of(device)
            if building:
                tags["building"] = building
            if device.room:
                tags["room"] = device.room
    return dict(sorted(tags.items()))


def event_measurement(event: Event) -> str:
    name = type(event).__name__
    return "supply_event" if name in SUPPLY_EVENTS or name.startswith("Supply") else "event"


def event_parts(
    event: Event, site: Site | None
) -> tuple[dict[str, str], dict[str, object], datetime]:
    """(tags, fields, time) of an event's line."""
    tags: dict[str, str] = {"type": type(event).__name__}
    if site is not None:
        tags["site"] = site.id
    fields: dict[str, object] = {}
    for f in dataclasses.fields(event):
        if f.name == "at":
            continue
        value = getattr(event, f.name)
        if value is None:
            continue
        tag = EVENT_TAGS.get(f.name)
        if tag is not None and isinstance(value, str):
            if value:
                tags[tag] = value
            continue
        if isinstance(value, datetime):
            value = value.isoformat()
        elif not isinstance(value, bool | int | float | str):
            value = str(value)
        fields[f"field_{f.name}" if f.name in TAG_KEYS else f.name] = value
    if not fields:
        fields["occurred"] = True
    return dict(sorted(tags.items())), fields, event.at


class Catalogue:
    """Which measurement and tag hold a (source, point), for readers and replay.

    Built from the site and the installed models; anything seen in a sample is learned, so
    accounts and other sources outside the site file resolve too.
    """

    def __init__(self, site: Site | None, models: Mapping[str, DeviceModel]) -> None:
        self.site = site
        self.models = dict(models)
        self._learned: dict[tuple[str, str], tuple[DeviceModel, PointSpec]] = {}

    def learn(self, source: str, model: DeviceModel) -> None:
        for spec in model.points:
            self._learned.setdefault((source, spec.name), (model, spec))

    def resolve(self, source: str, point: str) -> tuple[DeviceModel, PointSpec] | None:
        found = self._learned.get((source, point))
        if found is not None:
            return found
        candidates: list[DeviceModel] = []
        if self.site is not None:
            device = self.site.devices.get(source)
            if device is not None:
                model = self.models.get(device.model)
                if model is not None:
                    candidates.append(model)
                candidates.append(HEALTH_MODEL)
            if source in self.site.links:
                candidates.append(LINK_MODEL)
        if source == HISTORIAN_SOURCE:
            candidates.append(HISTORIAN_MODEL)
        if source == SERVICE_SOURCE:
            candidates.append(SERVICE_MODEL)
        candidates.append(ACCOUNT_MODEL)
        for model in candidates:
            for spec in model.points:
                if spec.name == point:
                    return model, spec
        return None
