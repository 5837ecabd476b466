"""What a batch item's device commands came to.

An item that queued device commands (a TRIP, a CLOSE, a SET_PARAMS, a LOCAL meter's
RECHARGE) is WAITING until they finish: its outcome is theirs — confirmed by read-back,
failed, cancelled or superseded. A failed command an operator sent again (`openprepay
command retry`, `retry_of` in the command table) is followed to its retry. The command
rows are the truth; `Batches.follow` records final outcomes on the items, and views of
items resolve the still WAITING ones from the same rows (`resolve`), so `batch show` is
right even before the service has looked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta, tzinfo
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...db import schema as t
from ...prepay.commands import CommandState

_mc = t.meter_command
_COLUMNS = (
    _mc.c.id,
    _mc.c.kind,
    _mc.c.state,
    _mc.c.last_error,
    _mc.c.superseded_by,
    _mc.c.retry_of,
    _mc.c.attempts,
    _mc.c.created_at,
    _mc.c.next_attempt_at,
    _mc.c.finished_at,
)


@dataclass(frozen=True, slots=True)
class Outcome:
    #: Every command finished (confirmed, failed, cancelled or superseded).
    final: bool
    #: Every command confirmed (meaningful when final).
    ok: bool
    text: str


def load_commands(conn: Connection, ids: Iterable[int]) -> dict[int, Any]:
    """The command rows of `ids` and of their retries (and the retries' retries), by id."""
    found: dict[int, Any] = {}
    wanted = {int(i) for i in ids}
    while wanted:
        rows = conn.execute(sa.select(*_COLUMNS).where(_mc.c.id.in_(sorted(wanted)))).all()
        found.update((int(r.id), r) for r in rows)
        failed = [r.id for r in rows if r.state == CommandState.FAILED.value]
        retries = (
            conn.execute(sa.select(_mc.c.id).where(_mc.c.retry_of.in_(failed))).scalars().all()
            if failed
            else []
        )
        wanted = {int(i) for i in retries} - set(found)
    return found


def resolve(commands: Mapping[int, Any], ids: Sequence[int], tz: tzinfo) -> Outcome:
    """The outcome of an item that queued the commands `ids` (rows from `load_commands`)."""
    retry_of = {int(r.retry_of): r for r in commands.values() if r.retry_of is not None}
    texts, final, ok = [], True, True
    for command_id in ids:
        row = commands.get(int(command_id))
        if row is None:  # deleted by hand: nothing to wait for
            texts.append(f"command #{command_id} not found")
            ok = False
            continue
        text = ""
        while row.state == CommandState.FAILED.value and int(row.id) in retry_of:
            text += f"{_describe(row, tz)}; retried as #{retry_of[int(row.id)].id}: "
            row = retry_of[int(row.id)]
        texts.append(text + _describe(row, tz))
        final = final and row.state not in _UNFINISHED
        ok = ok and row.state == CommandState.CONFIRMED.value
    return Outcome(final, final and ok, ", ".join(texts))


_UNFINISHED = {CommandState.PENDING.value, CommandState.CLAIMED.value, CommandState.SENT.value}


def _describe(row: Any, tz: tzinfo) -> str:
    """`TRIP #13 confirmed 2025-02-02 09:03:04` and the like, in the site's time zone."""
    head = f"{row.kind} #{row.id}"
    state = row.state
    if state == CommandState.CONFIRMED.value:
        return f"{head} confirmed {_local(row.finished_at, tz)}"
    if state == CommandState.FAILED.value:
        return f"{head} failed: {row.last_error or 'no reason recorded'}"
    if state == CommandState.SUPERSEDED.value:
        if row.last_error and row.last_error.startswith("cancelled"):
            return f"{head} {row.last_error}"
        return f"{head} superseded by #{row.superseded_by} (a newer command for the meter)"
    if state == CommandState.SENT.value:
        return f"{head} sent, waiting for the meter's read-back"
    if state == CommandState.CLAIMED.value:
        return f"{head} being sent"
    if row.attempts:
        return f"{head} queued, retry {_local(row.next_attempt_at, tz)} ({row.last_error})"
    if row.next_attempt_at > row.created_at + timedelta(seconds=1):
        return f"{head} queued for {_local(row.next_attempt_at, tz)}"
    return f"{head} queued"


def _local(at: Any, tz: tzinfo) -> str:
    return at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if at is not None else "-"
