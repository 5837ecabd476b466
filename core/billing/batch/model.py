"""The words of batch jobs: actions, job states, the rows a caller sees, and the progress
samples (pseudo-model `openprepay.batch`, source `batch-<job>`) the OPC UA server exposes
under Diagnostics and the historian stores."""

from __future__ import annotations

import calendar
import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...model import DeviceModel, MeterKind, PointRole, PointSpec, Sample, ValueType


class Action(enum.StrEnum):
    SET_TARIFF = "set_tariff"
    SET_THRESHOLDS = "set_thresholds"
    TOPUP = "topup"
    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"
    SET_PRICE = "set_price"
    SET_PARAMS = "set_params"


ACCOUNT_ACTIONS = frozenset({Action.SET_TARIFF, Action.SET_THRESHOLDS, Action.TOPUP})
CONTROL_ACTIONS = frozenset({Action.DISCONNECT, Action.RECONNECT})


class JobState(enum.StrEnum):
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    CANCELLED = "CANCELLED"


#: The `state` point of the progress samples.
STATE_CODES = {
    JobState.SCHEDULED: 0,
    JobState.RUNNING: 1,
    JobState.DONE: 2,
    JobState.CANCELLED: 3,
}
EVERY = ("day", "week", "month")


def _diag(name: str, description: str) -> PointSpec:
    return PointSpec(name, "", description, PointRole.DIAGNOSTIC, ValueType.INT)


#: Progress of a batch job, published as samples with source `batch-<job id>`.
BATCH_MODEL = DeviceModel(
    name="openprepay.batch",
    vendor="OpenPrepay",
    product="Batch job progress",
    kind=MeterKind.HEALTH,
    description="Progress of one batch job (its current occurrence)",
    points=(
        _diag("total", "Items of the current occurrence"),
        _diag("done", "Items that succeeded (their device commands confirmed)"),
        _diag("failed", "Items refused, or whose device command failed (see their results)"),
        _diag("pending", "Items not carried out yet, or waiting for their device command"),
        _diag("state", "0 scheduled, 1 running, 2 done, 3 cancelled"),
        _diag("run_no", "Occurrence number (recurring jobs)"),
    ),
    plugin="core",
)


def progress_sample(job: Any, at: dt.datetime) -> Sample:
    return Sample(
        f"batch-{job.id}",
        BATCH_MODEL,
        at,
        {
            "total": int(job.total),
            "done": int(job.done),
            "failed": int(job.failed),
            "pending": int(job.total) - int(job.done) - int(job.failed),
            "state": STATE_CODES[JobState(job.state)],
            "run_no": int(job.run_no),
        },
    )


@dataclass(frozen=True, slots=True)
class Item:
    target: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlanLine:
    target: str
    ok: bool
    text: str


@dataclass(frozen=True, slots=True)
class JobView:
    id: int
    action: str
    params: Mapping[str, Any]
    selection: Mapping[str, Any]
    state: str
    reason: str
    created_by: str
    every: str | None
    first_run_at: dt.datetime
    next_run_at: dt.datetime | None
    run_no: int
    total: int
    done: int
    failed: int
    last_error: str | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    created_at: dt.datetime | None = None


def job_view(row: Any) -> JobView:
    """A `batch_job` table row as a `JobView`."""
    return JobView(
        row.id,
        row.action,
        dict(row.params),
        dict(row.selection),
        row.state,
        row.reason,
        row.created_by,
        row.every,
        row.first_run_at,
        row.next_run_at,
        int(row.run_no),
        int(row.total),
        int(row.done),
        int(row.failed),
        row.last_error,
        row.started_at,
        row.finished_at,
        row.created_at,
    )


def next_occurrence(first: dt.datetime, every: str, after: dt.datetime, tz: Any) -> dt.datetime:
    """The first occurrence of a recurring job strictly after `after` (site-local time of
    day of `first`; monthly on its day, or the month's last day when shorter)."""
    local = first.astimezone(tz)
    k = 1
    while True:
        if every == "day":
            day = local.date() + dt.timedelta(days=k)
        elif every == "week":
            day = local.date() + dt.timedelta(weeks=k)
        else:
            month0 = local.month - 1 + k
            year, month = local.year + month0 // 12, month0 % 12 + 1
            day = dt.date(year, month, min(local.day, calendar.monthrange(year, month)[1]))
        at = dt.datetime.combine(day, local.time().replace(tzinfo=None), tzinfo=tz).astimezone(
            dt.UTC
        )
        if at > after:
            return at
        k += 1
