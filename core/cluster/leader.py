"""Jobs that must run once, under the jobs leader's lease.

A job is a list of steps, each one transaction. `run_resumable` runs the steps not yet
done, and in each step's transaction it first checks the leader's fence (the lease row is
key-share-locked, so no other instance can become leader before the step commits) and then
records the step as done in the lease row's `progress`, with the step's own writes. So:

- a leader that lost its lease (paused, partitioned) commits no further step: the database
  refuses it (`CommandFenced`);
- the next leader reads the persisted progress and resumes at the first step not done, so no
  step takes effect twice and none is skipped.

Progress is keyed by the job and its run (`month-end:2026-11`): a new run starts at step 0.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import Database
from ..errors import CommandFenced
from . import lease

log = logging.getLogger("openprepay.cluster")

Step = tuple[str, Callable[[Connection], Any]]


def progress_of(conn: Connection, name: str) -> dict[str, Any]:
    """The leader lease's persisted progress: {run key: steps done}."""
    value = conn.execute(
        sa.text("SELECT progress FROM link_lease WHERE name = :n"), {"n": name}
    ).scalar()
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value or {})


def _record(conn: Connection, fence: lease.Fence, run: str, done: int) -> None:
    progress = progress_of(conn, fence.link_id)
    progress[run] = done
    # Keep the last few runs only (a run key per period or batch).
    keep = dict(list(progress.items())[-20:])
    updated = conn.execute(
        sa.text(
            "UPDATE link_lease SET progress = CAST(:p AS json) WHERE name = :n AND owner = :o "
            "AND epoch = :e"
        ),
        {"p": json.dumps(keep), "n": fence.link_id, "o": fence.owner, "e": fence.epoch},
    ).rowcount
    if not updated:
        raise CommandFenced(f"{fence.link_id}: epoch {fence.epoch} is no longer the leader's")


def run_resumable(
    db: Database,
    fence: Callable[[], lease.Fence | None],
    run: str,
    steps: Sequence[Step],
) -> list[Any]:
    """Run the steps of `run` not done yet, each fenced and recorded in its transaction
    (module docstring). Returns the results of the steps run here (None for steps an earlier
    leader did). Raises `CommandFenced` when the leadership is gone."""
    current = fence()
    if current is None:
        raise CommandFenced(f"not the jobs leader: {run} is left to the leader")
    with db.read() as conn:
        done = int(progress_of(conn, current.link_id).get(run, 0))
    if done:
        log.info(
            "%s: resuming after %d of %d steps done by an earlier leader", run, done, len(steps)
        )
    results: list[Any] = [None] * done
    for index in range(done, len(steps)):
        name, step = steps[index]
        current = fence()
        if current is None:
            raise CommandFenced(f"leadership lost before step {name} of {run}")
        with db.begin() as conn:
            lease.check(conn, current)
            results.append(step(conn))
            _record(conn, current, run, index + 1)
    return results
