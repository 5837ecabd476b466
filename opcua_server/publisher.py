"""Samples from the event bus into OPC UA variables.

The bus listener only records the sample in a dict keyed by (source, model): the poll path
never waits on OPC UA, and when the server falls behind, newer samples of a source replace
older ones instead of piling up (a client sees the latest value; history has the rest).
A task on the server's loop takes the whole dict at once and writes what changed:

- only variables whose value or StatusCode changed are written: the binding keeps what
  the variable shows and `DirectWriter` makes it the variable's value (no coroutine and
  no DataValue per write unless a client monitors the variable: then the subscription is
  told);
- values carry the sample's time (the device clock where the device has one) as
  SourceTimestamp and a StatusCode from the sample's quality; a Bad sample writes a null
  value with a Bad StatusCode, never the last value with a fresh time;
- a meter's steady Good value is written again with the new sample's time once the time
  it shows is `refresh` old (`[opcua] timestamp_refresh_s`, default the meter's poll
  interval), so a client can tell a frozen value from a steady one; subscribers with the
  default trigger (StatusValue) are not notified of it, StatusValueTimestamp ones are;
- it yields to the loop every few hundred writes so polling keeps its share of the CPU.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from openprepay.core.field.diagnostics import HEALTH_MODEL, LINK_MODEL
from openprepay.core.model import MeterKind, Quality, Sample
from openprepay.core.tasks import stop_task

from .bindings import STATUS_OF_QUALITY, PointBinding, SourceBinding
from .direct_write import DirectWriter
from .space import Space

log = logging.getLogger("openprepay.opcua")

VALUE = ua.AttributeIds.Value
_YIELD_EVERY = 400
_CODE = {q: STATUS_OF_QUALITY[q].value for q in Quality}
_GOODISH = (Quality.GOOD, Quality.UNCERTAIN)
_GOOD = ua.StatusCode(ua.StatusCodes.Good)


class Publisher:
    def __init__(self, space: Space) -> None:
        self.space = space
        self._pending: dict[tuple[str, str], Sample] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._ignored: set[tuple[str, str]] = set()
        #: Called with each sample after it was written (account alarms, room state).
        self.after: list[Callable[[Sample, SourceBinding], None]] = []
        self._room_online: dict[str, bool] = {}
        self.samples = 0
        self.writes = 0
        #: Writes of an unchanged value with a newer time (part of `writes`).
        self.refreshes = 0
        self.coalesced = 0
        self._writer: DirectWriter | None = None

    # -- the bus listener: record only --------------------------------------------------------
    def on_sample(self, sample: Sample) -> None:
        if self._loop is None:
            return
        if threading.get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self.on_sample, sample)
            return
        pending = self._pending
        key = (sample.source, sample.model.name)
        if key in pending:
            self.coalesced += 1
        pending[key] = sample
        if len(pending) == 1:
            self._wake.set()  # type: ignore[union-attr]
            self._idle.clear()  # type: ignore[union-attr]

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._run(), name="opcua-publisher")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        self._loop = None

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            try:
                await self.publish(batch.values())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("publishing %d samples to OPC UA failed", len(batch))
            if not self._pending:
                self._idle.set()

    async def drained(self) -> None:
        """Until every sample received so far is in the address space (tests, benchmark)."""
        if self._idle is not None:
            await self._idle.wait()

    # -- writing ------------------------------------------------------------------------------
    async def publish(self, samples: Any) -> int:
        """Write what changed in `samples` (and the time of steady values due for it);
        returns the number of variables written."""
        if self._writer is None:
            self._writer = DirectWriter(self.space.server.iserver.aspace)
        store = self._writer.store
        bindings = self.space.bindings
        now = datetime.now(UTC)
        written = 0
        refreshed = 0
        since_yield = 0
        rooms: set[str] = set()
        for sample in samples:
            self.samples += 1
            binding = bindings.get((sample.source, sample.model.name))
            if binding is None:
                binding = self._late(sample)
                if binding is None:
                    continue
            at = sample.time
            quality = sample.quality
            per_point = sample.point_quality
            values = sample.values
            # A steady Good value shown with a time at or before this gets the sample's.
            stale = at - binding.refresh if binding.refresh is not None else None
            changed = 0
            steady = 0
            for name, pb in binding.points:
                if pb.guard and pb.at is not None and at < pb.at:
                    continue  # older than what the variable shows (two feeds, one variable)
                q = quality if not per_point else sample.quality_of(name)
                code = _CODE[q]
                if q in _GOODISH:
                    raw = values.get(name)
                    if raw is None:
                        continue  # not in this sample (optional block missing): keep as is
                    value = pb.convert(raw)
                    if value != pb.value or code != pb.status:
                        changed += 1
                    elif code or stale is None or pb.at is None or pb.at > stale:
                        continue
                    else:
                        steady += 1  # the same Good value: only its time moves on
                else:
                    value = None
                    if code == pb.status:
                        continue
                    changed += 1
                pb.value, pb.status, pb.at, pb.stored_at = value, code, at, now
                told = store(pb)
                if told is not None:
                    await told  # a client monitors it
            online = binding.online
            if online is not None:
                went, kept = await _write_online(store, online, quality in _GOODISH, at, now, stale)
                changed += went
                steady += kept
                room = self.space.meter_room.get(sample.source) if went else None
                if room is not None:
                    rooms.add(room)
            if changed:
                for hook in self.after:
                    hook(sample, binding)
            written += changed + steady
            refreshed += steady
            # A sample costs a little even when nothing in it changed: the whole site's
            # account snapshots, re-read every `account_refresh_s`, rarely change at all.
            since_yield += 1 + changed + steady
            if since_yield >= _YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)
        if rooms:
            await self._rooms_online(rooms)
        self.writes += written
        self.refreshes += refreshed
        return written

    def _late(self, sample: Sample) -> SourceBinding | None:
        """A (source, model) the tree does not have yet: the historian's statistics get a
        Diagnostics object; accounts are added by the account view; others are ignored."""
        key = (sample.source, sample.model.name)
        model = sample.model
        if key in self._ignored or model.kind is MeterKind.ACCOUNT:
            return None
        if model.kind in (MeterKind.HEALTH, MeterKind.LINK) and model.name not in (
            HEALTH_MODEL.name,
            LINK_MODEL.name,
        ):
            return self.space.add_pseudo_source(sample.source, model)
        self._ignored.add(key)
        return None

    async def _rooms_online(self, rooms: set[str]) -> None:
        """Room/Online: true while every meter of the room answers its polls."""
        space = self.space
        for room in rooms:
            states = []
            for meter in space.meters_of_room(room):
                binding = space.meter_bindings.get(meter)
                online = binding.online if binding is not None else None
                states.append(online.value if online is not None and online.status == 0 else None)
            if not states or any(s is None for s in states):
                continue
            value = all(states)
            if self._room_online.get(room) is value:
                continue
            self._room_online[room] = value
            dv = ua.DataValue(ua.Variant(value, ua.VariantType.Boolean), _GOOD, datetime.now(UTC))
            await space.server.iserver.aspace.write_attribute_value(
                space.room_online[room], VALUE, dv
            )


async def _write_online(
    store: Any,
    online: PointBinding,
    up: bool,
    at: datetime,
    now: datetime,
    stale: datetime | None,
) -> tuple[int, int]:
    """A meter's Online after a poll; (1, 0) when it changed, (0, 1) when only its time
    moved on (as for a steady Good value), (0, 0) when not written."""
    same = online.value is up and online.status == 0
    due = up and stale is not None and online.at is not None and online.at <= stale
    if same and not due:
        return 0, 0
    online.value, online.status, online.at, online.stored_at = up, 0, at, now
    told = store(online)
    if told is not None:
        await told
    return (0, 1) if same else (1, 0)
