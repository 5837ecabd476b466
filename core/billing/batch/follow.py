"""Following WAITING batch items to the end of their device commands: once every command
of an item has finished, the item becomes DONE (all confirmed) or FAILED (one failed, was
cancelled or superseded), its result says so (`TRIP #13 confirmed 2025-02-02 09:03:04`,
`TRIP #13 failed: no read-back`), and its job counts it. Any instance may do it: the
update only applies to an item still WAITING, so two instances never count one twice."""

from __future__ import annotations

from datetime import datetime, tzinfo

import sqlalchemy as sa

from ...db import Database
from ...db import schema as t
from .outcomes import load_commands, resolve

#: Items looked at per call (the service calls again at its next poll).
FOLLOW_LIMIT = 500


def settle_waiting(db: Database, tz: tzinfo, now: datetime) -> list[int]:
    """Record the outcome of WAITING items whose commands all finished; returns the jobs
    whose counts changed."""
    i = t.batch_item
    with db.read() as conn:
        waiting = conn.execute(
            sa.select(i.c.id, i.c.job_id, i.c.command_ids)
            .where(i.c.state == "WAITING")
            .order_by(i.c.id)
            .limit(FOLLOW_LIMIT)
        ).all()
        if not waiting:
            return []
        commands = load_commands(conn, (c for w in waiting for c in (w.command_ids or ())))
    settled = []
    for row in waiting:
        outcome = resolve(commands, list(row.command_ids or ()), tz)
        if outcome.final:
            settled.append((row, outcome))
    if not settled:
        return []
    jobs: set[int] = set()
    with db.begin() as conn:
        for row, outcome in settled:
            state = "DONE" if outcome.ok else "FAILED"
            changed = conn.execute(
                i.update()
                .where(i.c.id == row.id, i.c.state == "WAITING")
                .values(state=state, result=outcome.text[:1000], updated_at=now)
            ).rowcount
            if not changed:
                continue
            conn.execute(
                t.batch_job.update()
                .where(t.batch_job.c.id == row.job_id)
                .values(
                    done=t.batch_job.c.done + int(state == "DONE"),
                    failed=t.batch_job.c.failed + int(state == "FAILED"),
                    updated_at=now,
                )
            )
            jobs.add(int(row.job_id))
    return sorted(jobs)
