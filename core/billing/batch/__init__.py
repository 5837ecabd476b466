"""Batch and scheduled operations over many accounts or meters (AcrelCloud §4.6).

A **job** is an action — `set_tariff`, `set_thresholds`, `topup` (accounts); `disconnect`,
`reconnect`, `set_price`, `set_params` (meters) — over a **selection**: the whole site,
buildings, floors, rooms, listed accounts or meters, or the rows of a CSV file (each row
may carry its own parameter, e.g. an amount). It runs now, at a time, or every day, week
or month at that time. It is a database row (`batch_job`), so it survives restarts; each
occurrence resolves its targets into **one item per target** (`batch_item`) with its own
result.

Running: the service (or `openprepay batch run` on the command line) **claims** a due job
with a lease, like the durable command queue (`SELECT … FOR UPDATE SKIP LOCKED` on
PostgreSQL, the write lock on SQLite), so several instances never run one twice; an
instance that dies leaves a lease that expires, and the next one resumes with the items not
done yet. Items that may have been carried out just before the crash are never done twice:
top-ups carry the reference `batch-<job>-<run>-<seq>` (a replay changes nothing), meter
parameters the command key `batch:<job>:<run>:<seq>`, and a supply item found RUNNING is
looked up in the command table by its tag before anything is sent again.

Everything goes through `core.operations.Operations` — the policy gate (protected supply,
quiet hours, notice, **mass-disconnect rate limit**), fee control, the audit trail and the
durable command queue — exactly as an operator's single action would. Meter parameters
(`set_price`: the meter's 尖/峰/平/谷 prices, `set_params`: any command of the model such
as `SET_ALARMS`) are `SET_PARAMS` commands in the durable queue, checked against the
model's commands first.

`plan()` is the dry run: every item with what would happen, or `would fail: <reason>`
from the door's own read-only checks (the ones the real action runs first), nothing
written. An item whose action queued device commands is WAITING until they finish, then
DONE or FAILED with their outcome (`follow()`, called with every look for due jobs); the
job's `done` and `failed` count final outcomes. Progress is published on the event bus as
samples of the pseudo-model `openprepay.batch` (source `batch-<job>`, points
total/done/failed/pending/state), which the OPC UA server exposes under Diagnostics and
the historian stores.

The package, one job a module: `model` (actions, states, views, progress samples), `params`
(checking a job's parameters), `selection` (resolving a selection into items), `preview`
(the dry run of a job's items), `items` (carrying out an item through `Operations`),
`outcomes` and `follow` (what an item's device commands came to, recorded), `views` (items
as a clerk reads them). `Batches` below creates, plans, claims, runs and follows jobs.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...config.site import Site
from ...db import Database
from ...db import schema as t
from ...db.bounded import BATCH_ITEMS, chunks
from ...errors import CommandFenced
from ...events import utcnow
from ...ledger import RequestError
from ...model import DeviceModel
from .door import BatchDoor
from .follow import settle_waiting
from .items import Carried, carry_out, item_tag
from .model import (
    CONTROL_ACTIONS,
    EVERY,
    Action,
    JobState,
    JobView,
    PlanLine,
    job_view,
    next_occurrence,
    progress_sample,
)
from .params import check_params, parse_action
from .preview import Preview
from .selection import Selector
from .views import ItemView, item_views

log = logging.getLogger("openprepay.batch")


class Batches:
    """Creating, planning, claiming and running batch jobs of one site."""

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        db: Database,
        operations: BatchDoor,
        *,
        owner: str = "batch",
        lease_s: float = 60.0,
        clock: Callable[[], dt.datetime] = utcnow,
        publish: Callable[[object], None] | None = None,
    ) -> None:
        self.site = site
        self.models = models
        self.db = db
        self.ops = operations
        self.owner = owner
        self.lease_s = lease_s
        self.clock = clock
        self.publish = publish or (lambda item: None)
        self.selector = Selector(site, models, operations.binding)
        #: With [cluster]: called in the transaction that claims jobs and in each one that
        #: renews a job's claim; raises `CommandFenced` unless this instance is the jobs
        #: leader (the billing service's `leader_guard`), so only the leader starts items.
        self.guard: Callable[[Connection], None] | None = None

    # -- creating ------------------------------------------------------------------------
    def create(
        self,
        action: str,
        params: Mapping[str, Any],
        selection: Mapping[str, Any],
        *,
        reason: str,
        actor: str,
        at: dt.datetime | None = None,
        every: str | None = None,
    ) -> JobView:
        """Check everything, then store the job (due now, at `at`, or every day/week/month
        from `at`). A bad job raises `RequestError` naming the field and writes nothing."""
        act = parse_action(action)
        checked = check_params(self.ops.binding, act, params)
        if not reason or not reason.strip():
            raise RequestError("reason", "required: say why (every batch is audited)")
        if not actor or not actor.strip():
            raise RequestError("actor", "required (audit)")
        now = self.clock()
        if at is not None:
            if at.tzinfo is None:
                raise RequestError("at", "expected a time with its zone")
            if at < now - dt.timedelta(seconds=1):
                local = at.astimezone(self.site.info.tz)
                raise RequestError("at", f"{local:%Y-%m-%d %H:%M} is in the past")
        if every is not None and every not in EVERY:
            raise RequestError("every", f"expected one of {', '.join(EVERY)}; got {every!r}")
        with self.db.begin() as conn:
            self.selector.resolve(conn, act, checked, selection)
            job_id = conn.execute(
                t.batch_job.insert().returning(t.batch_job.c.id),
                {
                    "action": act.value,
                    "params": checked,
                    "selection": dict(selection),
                    "state": JobState.SCHEDULED.value,
                    "reason": reason.strip()[:500],
                    "created_by": actor[:100],
                    "every": every,
                    "first_run_at": at or now,
                    "next_run_at": at or now,
                    "run_no": 0,
                    "created_at": now,
                    "updated_at": now,
                },
            ).scalar_one()
            row = conn.execute(sa.select(t.batch_job).where(t.batch_job.c.id == job_id)).one()
        self.publish(progress_sample(row, now))
        return job_view(row)

    def plan(
        self,
        action: str,
        params: Mapping[str, Any],
        selection: Mapping[str, Any],
        *,
        reason: str = "dry run",
        actor: str = "dry run",
    ) -> list[PlanLine]:
        """The dry run: every item with what it would do, or `would fail: <reason>` where
        the real run would fail — the door's own checks (`preview.py`), nothing written."""
        act = parse_action(action)
        checked = check_params(self.ops.binding, act, params)
        dry = Preview(self.ops, act, checked, reason=reason, actor=actor, tz=self.site.info.tz)
        with self.db.read() as conn:
            items = self.selector.resolve(conn, act, checked, selection)
            return [dry.line(conn, n, item) for n, item in enumerate(items, start=1)]

    # -- reading -------------------------------------------------------------------------
    def get(self, job_id: int) -> JobView:
        with self.db.read() as conn:
            row = conn.execute(sa.select(t.batch_job).where(t.batch_job.c.id == job_id)).first()
        if row is None:
            raise RequestError("job", f"unknown batch job {job_id}")
        return job_view(row)

    def list(self, *, state: str | None = None, limit: int = 50) -> list[JobView]:
        q = sa.select(t.batch_job).order_by(t.batch_job.c.id.desc()).limit(limit)
        if state is not None:
            q = q.where(t.batch_job.c.state == state)
        with self.db.read() as conn:
            return [job_view(r) for r in conn.execute(q).all()]

    def items(self, job_id: int, run_no: int | None = None) -> list[ItemView]:
        """The items of an occurrence (default the last) as a clerk reads them: who each
        target is, and its outcome — a WAITING item's from its device commands now."""
        i = t.batch_item
        with self.db.read() as conn:
            job = conn.execute(
                sa.select(t.batch_job.c.run_no).where(t.batch_job.c.id == job_id)
            ).scalar()
            if job is None:
                raise RequestError("job", f"unknown batch job {job_id}")
            rows = conn.execute(
                sa.select(i)
                .where(i.c.job_id == job_id, i.c.run_no == (run_no or job))
                .order_by(i.c.seq)
            ).all()
            return item_views(conn, self.site, rows)

    def cancel(self, job_id: int, *, actor: str) -> JobView:
        """Stop a job: no further occurrence; a running one stops after its current item."""
        now = self.clock()
        with self.db.begin() as conn:
            row = conn.execute(
                sa.select(t.batch_job).where(t.batch_job.c.id == job_id).with_for_update()
            ).first()
            if row is None:
                raise RequestError("job", f"unknown batch job {job_id}")
            if row.state in (JobState.DONE.value, JobState.CANCELLED.value) and row.every is None:
                raise RequestError("job", f"batch job {job_id} is already {row.state}")
            conn.execute(
                t.batch_job.update()
                .where(t.batch_job.c.id == job_id)
                .values(
                    state=JobState.CANCELLED.value,
                    next_run_at=None,
                    last_error=f"cancelled by {actor}"[:1000],
                    updated_at=now,
                    finished_at=now,
                )
            )
            row = conn.execute(sa.select(t.batch_job).where(t.batch_job.c.id == job_id)).one()
        self.publish(progress_sample(row, now))
        return job_view(row)

    # -- claiming and running ------------------------------------------------------------
    def claim(self, *, job_id: int | None = None, limit: int = 1) -> list[int]:
        """Claim due jobs (or `job_id` when it is due) for this instance; a scheduled job
        starts its next occurrence, whose items are resolved and stored now."""
        now = self.clock()
        j = t.batch_job
        due = sa.or_(
            sa.and_(j.c.state == JobState.SCHEDULED.value, j.c.next_run_at <= now),
            sa.and_(j.c.state == JobState.RUNNING.value, j.c.lease_until < now),
        )
        q = sa.select(j).where(due).order_by(j.c.next_run_at, j.c.id).limit(limit)
        if job_id is not None:
            q = q.where(j.c.id == job_id)
        q = q.with_for_update(skip_locked=True)

        def work(conn: Connection) -> list[int]:
            if self.guard is not None:
                self.guard(conn)
            claimed = []
            for row in conn.execute(q).all():
                values: dict[str, Any] = {
                    "state": JobState.RUNNING.value,
                    "claimed_by": self.owner[:100],
                    "lease_until": now + dt.timedelta(seconds=self.lease_s),
                    "updated_at": now,
                }
                if row.state == JobState.SCHEDULED.value:
                    values.update(self._start_occurrence(conn, row, now))
                conn.execute(j.update().where(j.c.id == row.id).values(**values))
                claimed.append(int(row.id))
            return claimed

        try:
            return self.db.write(work, what="claiming batch jobs")
        except CommandFenced as exc:
            log.info("batch jobs not claimed: %s", exc)
            return []

    def _start_occurrence(self, conn: Connection, row: Any, now: dt.datetime) -> dict[str, Any]:
        """Resolve and store the items of the scheduled job's next occurrence; returns its
        job row values. A selection that fails now makes an empty occurrence with the
        error."""
        run_no = int(row.run_no) + 1
        try:
            items = self.selector.resolve(conn, Action(row.action), row.params, row.selection)
            error = None
        except RequestError as exc:
            items, error = [], str(exc)
        rows = [
            {
                "job_id": row.id,
                "run_no": run_no,
                "seq": n,
                "target": item.target,
                "params": dict(item.params),
                "state": "PENDING",
                "result": "",
                "updated_at": now,
            }
            for n, item in enumerate(items, start=1)
        ]
        # One occurrence starts whole (its items and run_no together), in statements of
        # at most BATCH_ITEMS rows.
        for part in chunks(rows, BATCH_ITEMS):
            conn.execute(t.batch_item.insert(), list(part))
        return {
            "run_no": run_no,
            "total": len(items),
            "done": 0,
            "failed": 0,
            "started_at": now,
            "finished_at": None,
            "last_error": error,
        }

    def run(self, job_id: int, *, stop: Callable[[], bool] | None = None) -> JobView:
        """Carry out the claimed job's pending items, one result each, then finish the
        occurrence (DONE, or SCHEDULED again for the next one of a recurring job)."""
        while True:
            with self.db.read() as conn:
                job = conn.execute(sa.select(t.batch_job).where(t.batch_job.c.id == job_id)).one()
                if job.state != JobState.RUNNING.value or job.claimed_by != self.owner[:100]:
                    return job_view(job)
                pending = conn.execute(
                    sa.select(t.batch_item)
                    .where(
                        t.batch_item.c.job_id == job_id,
                        t.batch_item.c.run_no == job.run_no,
                        t.batch_item.c.state.in_(["PENDING", "RUNNING"]),
                    )
                    .order_by(t.batch_item.c.seq)
                    .limit(50)
                ).all()
            if not pending:
                return self._finish(job_id)
            for item in pending:
                if stop is not None and stop():
                    return self.get(job_id)
                if not self._renew(job_id):
                    return self.get(job_id)
                self._carry_out(job, item)

    def _renew(self, job_id: int) -> bool:
        now = self.clock()

        def work(conn: Connection) -> int:
            if self.guard is not None:
                self.guard(conn)
            return conn.execute(
                t.batch_job.update()
                .where(
                    t.batch_job.c.id == job_id,
                    t.batch_job.c.state == JobState.RUNNING.value,
                    t.batch_job.c.claimed_by == self.owner[:100],
                )
                .values(lease_until=now + dt.timedelta(seconds=self.lease_s))
            ).rowcount

        try:
            done = self.db.write(work, what=f"renewing batch job {job_id}")
        except CommandFenced as exc:
            # [cluster]: no longer the jobs leader; the next leader resumes the job at its
            # first item not done once this claim has passed (`lease_s`).
            log.warning("batch job %s stopped: %s", job_id, exc)
            return False
        return bool(done)

    def _carry_out(self, job: Any, item: Any) -> None:
        action = Action(job.action)
        params = {**dict(job.params), **dict(item.params)}
        now = self.clock()
        if action in CONTROL_ACTIONS:
            if item.state == "RUNNING":
                found = self._queued_before(job, item)
                if found is not None:
                    self._record(job, item, found)
                    return
            self.db.write(
                lambda conn: conn.execute(
                    t.batch_item.update()
                    .where(t.batch_item.c.id == item.id)
                    .values(state="RUNNING", updated_at=now)
                ),
                what=f"starting batch item {item.id}",
            )
        try:
            carried = carry_out(self.ops, job, item, action, params, self.site.info.tz)
        except RequestError as exc:
            carried = Carried(str(exc), failed=True)
        except Exception as exc:  # one item's bug must not stop the job
            log.exception("batch job %s item %s (%s) failed", job.id, item.seq, item.target)
            carried = Carried(f"error: {exc}", failed=True)
        self._record(job, item, carried)

    def _queued_before(self, job: Any, item: Any) -> Carried | None:
        mc = t.meter_command
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(mc.c.id, mc.c.kind)
                .where(mc.c.meter_id == item.target, mc.c.reason.like(f"%{item_tag(job, item)}%"))
                .order_by(mc.c.id.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        return Carried(f"{row.kind} #{row.id} queued (before a restart)", (int(row.id),))

    def _record(self, job: Any, item: Any, carried: Carried) -> None:
        """Store an item's result: FAILED (refused), WAITING (its device commands are
        followed, `follow`) or DONE; the job counts only final outcomes."""
        now = self.clock()
        state = "FAILED" if carried.failed else "WAITING" if carried.command_ids else "DONE"
        text, ids = carried.text, list(carried.command_ids) or None

        def work(conn: Connection) -> Any:
            changed = conn.execute(
                t.batch_item.update()
                .where(
                    t.batch_item.c.id == item.id, t.batch_item.c.state.in_(["PENDING", "RUNNING"])
                )
                .values(state=state, result=text[:1000], command_ids=ids, updated_at=now)
            ).rowcount
            if changed:
                conn.execute(
                    t.batch_job.update()
                    .where(t.batch_job.c.id == job.id)
                    .values(
                        done=t.batch_job.c.done + int(state == "DONE"),
                        failed=t.batch_job.c.failed + int(state == "FAILED"),
                        updated_at=now,
                    )
                )
            return conn.execute(sa.select(t.batch_job).where(t.batch_job.c.id == job.id)).one()

        # A result is never lost to a busy database: the item's effect already happened.
        row = self.db.write(work, what=f"recording batch item {item.id}")
        self.publish(progress_sample(row, now))

    def follow(self) -> list[int]:
        """Record the outcome of WAITING items whose device commands have finished (the
        job's counts with it) and publish the progress of their jobs; returns the jobs.
        The service calls it with every look for due jobs."""
        now = self.clock()
        jobs = settle_waiting(self.db, self.site.info.tz, now)
        if jobs:
            with self.db.read() as conn:
                rows = conn.execute(sa.select(t.batch_job).where(t.batch_job.c.id.in_(jobs))).all()
            for row in rows:
                self.publish(progress_sample(row, now))
        return jobs

    def _finish(self, job_id: int) -> JobView:
        now = self.clock()

        def work(conn: Connection) -> Any:
            row = conn.execute(
                sa.select(t.batch_job).where(t.batch_job.c.id == job_id).with_for_update()
            ).one()
            if row.state == JobState.RUNNING.value and row.claimed_by == self.owner[:100]:
                if row.every:
                    nxt = next_occurrence(row.first_run_at, row.every, now, self.site.info.tz)
                    values = {"state": JobState.SCHEDULED.value, "next_run_at": nxt}
                else:
                    values = {"state": JobState.DONE.value, "next_run_at": None}
                conn.execute(
                    t.batch_job.update()
                    .where(t.batch_job.c.id == job_id)
                    .values(
                        **values, claimed_by=None, lease_until=None, finished_at=now, updated_at=now
                    )
                )
            return conn.execute(sa.select(t.batch_job).where(t.batch_job.c.id == job_id)).one()

        row = self.db.write(work, what=f"finishing batch job {job_id}")
        self.publish(progress_sample(row, now))
        log.info(
            "batch job %s (%s) occurrence %s: %s done, %s failed of %s",
            row.id,
            row.action,
            row.run_no,
            row.done,
            row.failed,
            row.total,
        )
        return job_view(row)

    def run_due(self, *, stop: Callable[[], bool] | None = None) -> list[JobView]:
        """Follow the device commands of WAITING items, then claim and run every due job,
        one after the other (the service's loop)."""
        out = []
        self.follow()
        while stop is None or not stop():
            claimed = self.claim()
            if not claimed:
                break
            for job_id in claimed:
                out.append(self.run(job_id, stop=stop))
        return out
