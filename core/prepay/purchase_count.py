"""The purchase count (购电次数) of LOCAL meters: allocated per delivery, aligned with the
meter's own count, and fixed on a command before it is first sent.

RECHARGE and REFUND carry the platform's purchase count (`buy_count`, unique per meter,
never going back); the meter's own count is the platform's minus the meter's offset
(`align_buy_count`: read from the meter when a LOCAL meter is attached, replaced, or on
request — until then they wait) and is fixed in `params["meter_count"]` when first sent
(`pin_meter_counts`), so every retry carries the same count (domain.md §1.5).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t
from ..events import utcnow
from ..ledger import RequestError
from .commands import (
    COUNTED_KINDS,
    SELECT_COMMANDS,
    UNFINISHED,
    CommandKind,
    MeterCommand,
    command_from_row,
)

#: The purchase count in the meter's own numbering, fixed when first sent (params key).
METER_COUNT = "meter_count"


def allocate_buy_count(conn: Connection, meter_id: str, *, now: datetime | None = None) -> int:
    """Allocate the meter's next purchase count (购电次数) in the caller's transaction.

    The count is retried unchanged until the meter confirms it, so at-least-once delivery
    is safe: the meter refuses a count it has seen (domain.md §1.5).
    """
    now = now or utcnow()
    count = conn.execute(
        t.meter.update()
        .where(t.meter.c.id == meter_id)
        .values(buy_count=t.meter.c.buy_count + 1, updated_at=now)
        .returning(t.meter.c.buy_count)
    ).scalar()
    if count is None:
        raise RequestError(
            "meter", f"meter {meter_id!r} is not registered (attach it to an account)"
        )
    return int(count)


def set_meter_buy_count(
    conn: Connection, meter_id: str, buy_count: int, *, now: datetime | None = None
) -> None:
    """Align the platform's purchase counter with the meter's (commissioning a LOCAL meter
    that already has purchases, or reconciliation after a meter swap). Refused while a
    RECHARGE for the meter is unfinished."""
    if isinstance(buy_count, bool) or not isinstance(buy_count, int) or buy_count < 0:
        raise RequestError("buy_count", f"expected an integer >= 0, got {buy_count!r}")
    pending = conn.execute(
        sa.select(sa.func.count())
        .select_from(t.meter_command)
        .where(
            t.meter_command.c.meter_id == meter_id,
            t.meter_command.c.kind == CommandKind.RECHARGE.value,
            t.meter_command.c.state.in_([s.value for s in UNFINISHED]),
        )
    ).scalar()
    if pending:
        raise RequestError("buy_count", f"meter {meter_id!r} has {pending} unfinished RECHARGE(s)")
    now = now or utcnow()
    done = conn.execute(
        t.meter.update()
        .where(t.meter.c.id == meter_id)
        .values(
            buy_count=buy_count,
            confirmed_buy_count=buy_count,
            count_offset=0,
            align_requested_at=None,
            aligned_at=now,
            updated_at=now,
        )
    ).rowcount
    if not done:
        raise RequestError("meter", f"meter {meter_id!r} is not registered")


def request_alignment(conn: Connection, meter_id: str, *, now: datetime | None = None) -> bool:
    """Ask the running service to read the meter's own purchase count and align with it
    before any RECHARGE or REFUND is sent (`align_buy_count`). False: not registered."""
    now = now or utcnow()
    return bool(
        conn.execute(
            t.meter.update()
            .where(t.meter.c.id == meter_id)
            .values(align_requested_at=now, updated_at=now)
        ).rowcount
    )


@dataclass(frozen=True, slots=True)
class Alignment:
    """What `align_buy_count` did. The platform numbers purchases on its own monotonic
    counter; the meter's numbering is the platform's minus `offset`."""

    meter_id: str
    meter_count: int
    offset_before: int
    offset: int

    def describe(self) -> str:
        return (
            f"purchase count aligned with the meter's {self.meter_count}: the next delivery "
            f"carries meter count {self.meter_count + 1} (platform count = meter count "
            f"{self.offset:+d}; was {self.offset_before:+d})"
        )


def align_buy_count(
    conn: Connection, meter_id: str, meter_count: int, *, now: datetime | None = None
) -> Alignment:
    """Align the platform's purchase numbering with the count just read from the meter.

    The platform's counter never goes back (top-ups keep their unique (meter, count)); what
    moves is the meter's offset, so the first RECHARGE not yet sent carries meter count + 1
    (a REFUND the meter's count). Refused while a RECHARGE or REFUND was sent and is
    unfinished, or a retry is queued: their counts are fixed. Clears the request; the
    caller audits.
    """
    if isinstance(meter_count, bool) or not isinstance(meter_count, int) or meter_count < 0:
        raise RequestError("buy_count", f"expected an integer >= 0, got {meter_count!r}")
    now = now or utcnow()
    row = conn.execute(
        sa.select(t.meter.c.buy_count, t.meter.c.count_offset)
        .where(t.meter.c.id == meter_id)
        .with_for_update()
    ).first()
    if row is None:
        raise RequestError("meter", f"meter {meter_id!r} is not registered")
    c = t.meter_command.c
    queued = [
        command_from_row(r)
        for r in conn.execute(
            SELECT_COMMANDS.where(
                c.meter_id == meter_id,
                c.kind.in_(COUNTED_KINDS),
                c.state.in_([s.value for s in UNFINISHED]),
            ).order_by(c.id)
        )
    ]
    fixed = [q.id for q in queued if METER_COUNT in q.params or q.state != "PENDING"]
    if fixed:
        raise RequestError(
            "meter",
            f"meter {meter_id!r} has a delivery whose count is fixed (command {fixed[0]}): "
            "aligning waits until it is finished",
        )
    recharges = [int(q.params["buy_count"]) for q in queued if q.kind == CommandKind.RECHARGE]
    last_done = (min(recharges) - 1) if recharges else int(row.buy_count)
    offset = last_done - meter_count
    conn.execute(
        t.meter.update()
        .where(t.meter.c.id == meter_id)
        .values(
            count_offset=offset,
            confirmed_buy_count=last_done,
            align_requested_at=None,
            aligned_at=now,
            updated_at=now,
        )
    )
    return Alignment(meter_id, meter_count, int(row.count_offset), offset)


def pin_meter_counts(conn: Connection, commands: Iterable[MeterCommand]) -> list[MeterCommand]:
    """Fix the meter's own purchase count (`params["meter_count"]`) of RECHARGE and REFUND
    commands about to be sent for the first time, from the meter's offset. Retries — by the
    executor or an operator — keep it, so a delivery whose reply was lost is confirmed by
    the meter, never applied twice."""
    out = []
    offsets: dict[str, int] = {}
    for command in commands:
        params = command.params
        if command.kind not in COUNTED_KINDS or METER_COUNT in params or "buy_count" not in params:
            out.append(command)
            continue
        if command.meter_id not in offsets:
            offsets[command.meter_id] = int(
                conn.execute(
                    sa.select(t.meter.c.count_offset).where(t.meter.c.id == command.meter_id)
                ).scalar()
                or 0
            )
        pinned = {**params, METER_COUNT: int(params["buy_count"]) - offsets[command.meter_id]}
        conn.execute(
            t.meter_command.update().where(t.meter_command.c.id == command.id).values(params=pinned)
        )
        out.append(replace(command, params=pinned))
    return out
