"""The supply watch: supply follows the account, also after the meter forgets.

A meter can lose the state the platform put it in — a power cycle, a manual reset, a
replaced meter, a bypass — while the command that decided it stays CONFIRMED in the
database. The watch compares, per meter with a relay or valve, what the platform decided
(`prepay_meter.desired_on`, set with every supply command: fee control, manual cuts and
reconnections, protection) with what every Good reading of the meter's state point shows
(per-point quality: `sample.quality_of(point)`):

- the bus listener only keeps each meter's latest observation and since when it has read
  that state (cheap, on the poll path);
- `check()` (every `[prepay.engine] deferral_poll_s`, off the event loop) stores observed
  changes (`prepay_meter.supply_on`) and looks at every meter whose deciding command has
  finished (CONFIRMED, or FAILED: the decision stands): a reading taken after it that
  disagrees, and keeps disagreeing for `supply_grace_s` of the meter's own readings, is a
  mismatch. `core.prepay.reassertion.reassert_supply` then sends the decision again (through the
  policy gate for a cut), counts it on the meter, audits it and raises `SupplyMismatch`;
- a meter that keeps disobeying is re-asserted ever more rarely: the n-th re-assertion in a
  row is followed by at least `supply_grace_s × 2^n` (at most `supply_backoff_max_s`),
  and each re-asserted command is itself retried by the executor only up to
  `command_attempts` — never a command storm. The alarm stays active until the meter
  reads the decided state again (`SupplyMismatch(active=False)`).

A meter the platform never switched has no desired state and is only observed; a command
still on its way is left to its read-back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import Database
from ..db import schema as t
from ..db.bounded import SUPPLY_WATCH_METERS, write_in_chunks
from ..events import utcnow
from ..model import Sample, SupplyControl
from . import commands as cmds
from .control import PrepayControl
from .effects import Effects
from .reassertion import reassert_supply, supply_obeyed
from .supply_state import upsert_states

R = TypeVar("R")

log = logging.getLogger("openprepay.supply")

_FINISHED = (cmds.CommandState.CONFIRMED.value, cmds.CommandState.FAILED.value)


@dataclass(slots=True)
class Observation:
    """A meter's supply as its Good readings show it: `on` since `since`, last at `at`."""

    on: bool
    since: datetime
    at: datetime


class SupplyWatch:
    """Desired against observed supply for the meters of one instance (module docstring)."""

    def __init__(
        self,
        db: Database,
        control: PrepayControl,
        meters: Mapping[str, SupplyControl],
        *,
        grace_s: float,
        backoff_max_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.control = control
        #: The meters watched, with their relay or valve mapping.
        self.meters = dict(meters)
        self.grace = timedelta(seconds=grace_s)
        self.backoff_max = timedelta(seconds=backoff_max_s)
        self.clock = clock
        self._seen: dict[str, Observation] = {}
        #: The listener runs on the poll path and the check in a worker thread: the check's
        #: snapshot must not meet a dict that grows under it (new meters) or a half update.
        self._seen_lock = threading.Lock()
        #: The observed state last written to `prepay_meter.supply_on`, per meter.
        self._stored: dict[str, bool] = {}
        self.reasserted = 0

    # -- the listener (on the poll path: cheap) ---------------------------------------------
    def on_sample(self, sample: Sample) -> None:
        supply = self.meters.get(sample.source)
        if supply is None:
            return
        point = supply.state_point
        value = sample.values.get(point)
        if value is None or not sample.quality_of(point).is_good:
            return
        on = bool(value)
        with self._seen_lock:
            seen = self._seen.get(sample.source)
            if seen is None or seen.on != on:
                self._seen[sample.source] = Observation(on, sample.read_at, sample.read_at)
            elif sample.read_at > seen.at:
                seen.at = sample.read_at

    def backoff(self, consecutive: int) -> timedelta:
        """How long after the `consecutive`-th re-assertion in a row the next may follow."""
        return min(self.grace * (2**consecutive), self.backoff_max)

    # -- the check (in a worker thread) ---------------------------------------------------------
    def check(self) -> Effects:
        """Store observed changes, end mismatches the meters resolved, re-assert the
        decisions meters disobey past the grace. Returns what to publish."""
        effects = Effects()
        with self._seen_lock:
            seen = {m: Observation(o.on, o.since, o.at) for m, o in self._seen.items()}
        if not seen:
            return effects
        now = self.clock()
        with self.db.read() as conn:
            rows = rows_to_check(conn, [m for m, o in seen.items() if not o.on])
        changed = {m: o for m, o in seen.items() if self._stored.get(m) is not o.on}
        obeyed, due = [], []
        for meter_id, obs in seen.items():
            row = rows.get(meter_id)
            if row is None or row.desired_on is None or row.state not in _FINISHED:
                continue
            if obs.on == bool(row.desired_on):
                if row.mismatch_since is not None or row.reasserts:
                    obeyed.append((meter_id, obs))
                continue
            started = max(obs.since, row.finished_at) if row.finished_at else obs.since
            if obs.at <= started or obs.at - started < self.grace:
                continue  # not read back since the decision, or still within the grace
            if row.reassert_due_at is not None and now < row.reassert_due_at:
                continue  # backing off
            due.append((meter_id, obs, started, int(row.desired_command_id)))
        if changed:

            def store(conn: Connection, part: Sequence[tuple[str, Observation]]) -> None:
                rows = [{"meter_id": m, "supply_on": o.on, "supply_at": o.since} for m, o in part]
                upsert_states(conn, t.prepay_meter, "meter_id", rows, now)
                self._stored.update({m: o.on for m, o in part})

            # Bounded transactions (core/db/bounded.py), each waiting out a busy database.
            write_in_chunks(
                self.db,
                list(changed.items()),
                SUPPLY_WATCH_METERS,
                store,
                what="saving observed supply states",
            )
        for meter_id, obs in obeyed:
            self._write(
                lambda conn, mine, m=meter_id, on=obs.on: supply_obeyed(
                    self.control, conn, m, on, effects=mine, now=now
                ),
                effects,
                what=f"supply of {meter_id} obeyed",
            )
        for meter_id, obs, started, decided_by in due:
            event = self._write(
                lambda conn, mine, m=meter_id, on=obs.on, s=started, d=decided_by: reassert_supply(
                    self.control,
                    conn,
                    m,
                    on,
                    s,
                    decided_by=d,
                    backoff=self.backoff,
                    effects=mine,
                    now=now,
                ),
                effects,
                what=f"reasserting supply of {meter_id}",
            )
            if event is not None and event.command_id:
                self.reasserted += 1
        return effects

    def _write(self, work: Callable[[Connection, Effects], R], effects: Effects, *, what: str) -> R:
        """`work` in a transaction that waits out a busy database; the effects of the
        attempt that committed (only) join `effects`."""

        def attempt(conn: Connection) -> tuple[R, Effects]:
            mine = Effects()
            return work(conn, mine), mine

        result, mine = self.db.write(attempt, what=what)
        effects.extend(mine)
        return result


def rows_to_check(conn: Any, seen_off: list[str]) -> dict[str, Any]:
    """The rows a check can act on: a meter seen with its supply off, any meter whose
    supply was decided off (a reading of "on" disobeys it), any meter with a mismatch
    or re-assertions to end. Not every seen meter's row: a meter on as decided (nearly
    all of them) needs none, and reading 10,000 rows every few seconds was as much
    work as the polls."""
    pm, c = t.prepay_meter, t.meter_command
    columns = (
        pm.c.meter_id,
        pm.c.desired_on,
        pm.c.desired_command_id,
        pm.c.mismatch_since,
        pm.c.reasserts,
        pm.c.reassert_due_at,
        c.c.state,
        c.c.finished_at,
    )
    of_note = sa.or_(
        pm.c.desired_on.is_(False), pm.c.mismatch_since.is_not(None), pm.c.reasserts > 0
    )
    out = {}
    for i in range(0, max(len(seen_off), 1), 500):
        where = of_note if i == 0 else sa.false()
        if seen_off:
            where = sa.or_(where, pm.c.meter_id.in_(seen_off[i : i + 500]))
        for row in conn.execute(
            sa.select(*columns).outerjoin(c, c.c.id == pm.c.desired_command_id).where(where)
        ):
            out[row.meter_id] = row
    return out
