"""The event outbox: how a change made in one process reaches every running service.

Every change goes through the door (`core.operations.Operations`). In the change's own
transaction `write` stores what running services must learn of: its events (the audit
record, an alarm-level change, a supply command's outcome...), the accounts whose figures
changed, the device commands it queued and whether it queued notices. The process that
made the change publishes them on its own bus at once; every running service also tails the
table (`OutboxTail`) and publishes what *other* writers committed — a top-up typed at the
CLI, or made by another instance on the same PostgreSQL, reaches OPC UA subscribers and the
historian within one poll (`poll_s`, 0.2 s by default), and wakes the command executor.

Ids are handed out when a row is inserted, not when its transaction commits: on
PostgreSQL a row with a lower id can become visible after a higher one. The reader
remembers the ids it skipped and keeps looking for them for `gap_wait_s` (a rolled-back
transaction leaves a gap for ever).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import Database, FastStatement, db_time
from ..db import schema as t
from ..events import Event, event_from_record, event_record, utcnow
from ..ledger import RequestError
from ..prepay import commands as cmds
from ..prepay.effects import Effects
from ..tasks import wait_event

log = logging.getLogger("openprepay.outbox")

#: At most this many skipped ids are waited for (a sequence that jumped after a crash
#: leaves thousands of ids no row will ever have).
MAX_GAPS = 1000


def new_origin() -> str:
    """A writer's name in the outbox: unique per `Operations` object."""
    return uuid.uuid4().hex


#: Every door call that changed something writes one: compiled once (core/db FastStatement).
_fast_insert = FastStatement(t.event_outbox.insert(), ("origin", "created_at", "payload"))


def write(conn: Connection, origin: str, effects: Effects, now: datetime) -> None:
    """Store `effects` for the other processes, in the caller's transaction."""
    events = [event_record(e) for e in effects.events if isinstance(e, Event)]
    if not (events or effects.accounts or effects.commands or effects.notices):
        return
    payload: dict[str, Any] = {
        "events": events,
        "accounts": sorted(effects.accounts),
        "commands": [c.id for c in effects.commands],
        "notices": effects.notices,
    }
    row = {"origin": origin, "created_at": db_time(conn, now), "payload": json.dumps(payload)}
    _fast_insert.execute(conn, row).close()


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    origin: str
    created_at: datetime
    payload: dict[str, Any]


class OutboxReader:
    """Reads outbox entries in id order, each once, from where `start_at_end` put it."""

    def __init__(
        self,
        db: Database,
        *,
        gap_wait_s: float = 5.0,
        batch: int = 500,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.db = db
        self.gap_wait_s = gap_wait_s
        self.batch = batch
        self.monotonic = monotonic
        #: The highest id seen.
        self.last = 0
        #: Ids below `last` not seen yet → when they were first missed.
        self.gaps: dict[int, float] = {}

    def start_at_end(self) -> None:
        """Skip what is there already: a service starting publishes only what comes next."""
        with self.db.read() as conn:
            self.last = conn.execute(sa.select(sa.func.max(t.event_outbox.c.id))).scalar() or 0
        self.gaps.clear()

    def read(self) -> list[OutboxEntry]:
        now = self.monotonic()
        low = min(self.gaps) - 1 if self.gaps else self.last
        q = (
            sa.select(t.event_outbox)
            .where(t.event_outbox.c.id > low)
            .order_by(t.event_outbox.c.id)
            .limit(self.batch)
        )
        with self.db.read() as conn:
            rows = conn.execute(q).all()
        out = []
        for row in rows:
            if row.id <= self.last and row.id not in self.gaps:
                continue  # seen on an earlier read
            self.gaps.pop(row.id, None)
            if row.id > self.last:
                missed = range(self.last + 1, row.id)
                if len(self.gaps) + len(missed) <= MAX_GAPS:
                    self.gaps.update((i, now) for i in missed)
                self.last = row.id
            out.append(OutboxEntry(row.id, row.origin, row.created_at, row.payload))
        for gap, since in list(self.gaps.items()):
            if now - since > self.gap_wait_s:
                del self.gaps[gap]  # rolled back: no row will ever have this id
        return out


def effects_of(conn: Connection, entry: OutboxEntry) -> Effects:
    """The effects an entry recorded; events of a type this process does not know (a newer
    instance's) and commands gone since are left out, with a log line."""
    effects = Effects()
    for record in entry.payload.get("events", []):
        try:
            effects.events.append(event_from_record(record))
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("outbox entry %d: event skipped: %r (%s)", entry.id, record, exc)
    effects.accounts.update(entry.payload.get("accounts", []))
    for command_id in entry.payload.get("commands", []):
        try:
            effects.commands.append(cmds.get_command(conn, int(command_id)))
        except RequestError:
            log.warning("outbox entry %d: command #%s no longer exists", entry.id, command_id)
    effects.notices = int(entry.payload.get("notices", 0))
    return effects


class OutboxTail:
    """The running service's reader of the outbox: publishes what other writers committed
    through `publish_committed` (the door's own after-commit path), and deletes entries
    older than `keep_s` (with [cluster] on the jobs leader only: `leader`)."""

    name = "event-outbox"

    def __init__(
        self,
        db: Database,
        origin: str,
        publish_committed: Callable[[Effects, datetime], None],
        *,
        poll_s: float = 0.2,
        keep_s: float = 86400.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.origin = origin
        self.publish_committed = publish_committed
        self.poll_s = poll_s
        self.keep_s = keep_s
        self.clock = clock
        self.reader = OutboxReader(db)
        #: Entries from other writers published, for statistics and tests.
        self.published = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pruned_at: float | None = None
        #: With [cluster]: the jobs leader's fence while this instance holds it, else None;
        #: every instance reads the outbox, only the leader prunes it.
        self.leader: Callable[[], object | None] | None = None

    async def start(self) -> None:
        self._stop.clear()
        await asyncio.to_thread(self.reader.start_at_end)
        self._task = asyncio.create_task(self._run(), name="event-outbox")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.to_thread(self.poll)
            except Exception:
                log.exception("reading the event outbox failed")
            await wait_event(self._stop, self.poll_s)

    def poll(self) -> int:
        """Publish the new entries of other writers; return how many."""
        published = 0
        for entry in self.reader.read():
            if entry.origin == self.origin:
                continue
            with self.db.read() as conn:
                effects = effects_of(conn, entry)
            self.publish_committed(effects, self.clock())
            published += 1
        self.published += published
        if self._pruned_at is None or time.monotonic() - self._pruned_at > min(self.keep_s, 3600):
            self.prune()
        return published

    def prune(self) -> int | None:
        """Delete the entries older than `keep_s`; how many, or None when this instance is
        not the jobs leader ([cluster]: one instance prunes, after the others had `keep_s`
        to read them)."""
        if self.leader is not None and self.leader() is None:
            return None
        self._pruned_at = time.monotonic()
        cutoff = self.clock() - timedelta(seconds=self.keep_s)
        with self.db.begin() as conn:
            return conn.execute(
                t.event_outbox.delete().where(t.event_outbox.c.created_at < cutoff)
            ).rowcount
