"""The live terminal view of rooms: online state, today's energy and water, power, relay and
valve state, plus any columns other layers add (balance and alarm level from prepayment).

It only reads: the latest samples (core/field/latest.py) and the functions columns were given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..config.site import Site
from ..events import EventBus
from ..field.latest import LatestReadings
from ..model import MeterKind, Quality, Sample, Value


@dataclass
class _DayStart:
    date: str
    value: float


class DailyTotals:
    """Consumption since local midnight per meter, from its cumulative total register."""

    def __init__(self, site: Site, bus: EventBus) -> None:
        self.site = site
        self.tz = site.info.tz
        self._start: dict[str, _DayStart] = {}
        self._last: dict[str, float] = {}
        bus.subscribe(Sample, self._on_sample)

    def _on_sample(self, sample: Sample) -> None:
        total_point = sample.model.total_point
        if not total_point or not sample.quality.is_good or total_point not in sample.values:
            return
        value = float(sample.values[total_point])
        day = sample.time.astimezone(self.tz).date().isoformat()
        start = self._start.get(sample.source)
        if start is None or start.date != day:
            self._start[sample.source] = _DayStart(day, value)
        self._last[sample.source] = value

    def today(self, meter_id: str) -> float | None:
        start = self._start.get(meter_id)
        if start is None:
            return None
        return max(self._last[meter_id] - start.value, 0.0)


Column = tuple[str, Callable[[str], RenderableType]]


class RoomView:
    def __init__(
        self, site: Site, readings: LatestReadings, totals: DailyTotals, models: dict
    ) -> None:
        self.site = site
        self.readings = readings
        self.totals = totals
        self.models = models
        self.extra_columns: list[Column] = []
        self._meters: dict[str, dict[MeterKind, str]] = {}
        for device in site.devices.values():
            if device.room is not None:
                kind = models[device.model].kind
                self._meters.setdefault(device.room, {})[kind] = device.id

    def add_column(self, title: str, cell: Callable[[str], RenderableType]) -> None:
        """Add a column; `cell(room_id)` renders the room's value."""
        self.extra_columns.append((title, cell))

    def _latest(self, meter_id: str | None) -> Sample | None:
        if meter_id is None:
            return None
        device = self.site.devices[meter_id]
        return self.readings.get(meter_id, device.model)

    def render(self) -> RenderableType:
        tables = []
        for building in self.site.buildings.values():
            table = Table(title=building.name, title_style="bold", expand=False, pad_edge=False)
            for title in ("Room", "Comms", "kWh today", "kW", "Relay", "m³ today", "Valve"):
                table.add_column(
                    title, justify="right" if title not in ("Room", "Comms") else "left"
                )
            for title, _ in self.extra_columns:
                table.add_column(title, justify="right")
            for room in self.site.rooms.values():
                if room.building == building.id:
                    table.add_row(*self._row(room.id))
            tables.append(table)
        return Group(Columns(tables), self._footer())

    def _row(self, room_id: str) -> list[RenderableType]:
        meters = self._meters.get(room_id, {})
        electric = self._latest(meters.get(MeterKind.ELECTRIC))
        water = self._latest(meters.get(MeterKind.WATER))
        online = [_answers(s) for s in (electric, water) if s is not None]
        comms = Text("online", "green") if online and all(online) else Text("OFFLINE", "bold red")
        if not online:
            comms = Text("…", "dim")
        cells: list[RenderableType] = [
            room_id,
            comms,
            _num(self.totals.today(meters.get(MeterKind.ELECTRIC, "")), 2),
            _num(_trusted(electric, "power_active"), 3),
            _switch(electric, "supply_on", "closed", "OPEN"),
            _num(self.totals.today(meters.get(MeterKind.WATER, "")), 3),
            _switch(water, "valve_open", "open", "SHUT"),
        ]
        cells.extend(cell(room_id) for _, cell in self.extra_columns)
        return cells

    def _footer(self) -> Text:
        good = sum(
            1
            for s in self.readings.latest.values()
            if s.model.kind in (MeterKind.ELECTRIC, MeterKind.WATER) and _answers(s)
        )
        return Text(
            f"{datetime.now():%H:%M:%S}  {good}/{len(self.site.devices)} meters online  "
            "— Ctrl-C to stop",
            style="dim",
        )


def _answers(sample: Sample) -> bool:
    """The meter answered (an implausible reading is Uncertain, not a lost meter)."""
    return sample.quality <= Quality.UNCERTAIN


def _trusted(sample: Sample | None, point: str) -> Value | None:
    """The point's value when it is Good, else None (shown as a dash)."""
    if sample is None or point not in sample.values or not sample.quality_of(point).is_good:
        return None
    return sample.values[point]


def _num(value: float | None, digits: int) -> Text:
    return Text("–", "dim") if value is None else Text(f"{value:.{digits}f}")


def _switch(sample: Sample | None, point: str, on: str, off: str) -> Text:
    value = _trusted(sample, point)
    if value is None:
        return Text("–", "dim")
    return Text(on, "green") if value else Text(off, "bold yellow")
